//! The SQLite backend run through the backend-neutral conformance suite
//! (`store/conformance/`): a fresh database file in a temporary directory
//! per case.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::SqliteStore;
use crate::crypto::Keyring;
use crate::store::conformance::{conformance_tests, Harness};
use crate::store::{Store, StoreError};

pub(crate) struct SqliteHarness {
    path: PathBuf,
    // Dropped last: removes the directory.
    _dir: tempfile::TempDir,
}

impl SqliteHarness {
    fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open the test database")
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn create() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        SqliteHarness {
            path: dir.path().join("data/pbx-tokend.db"),
            _dir: dir,
        }
    }

    async fn open(&self, keys: Arc<Keyring>) -> Result<Store, StoreError> {
        let path = self.path.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, keys))
            .await
            .expect("open task")?;
        Ok(Store::new(store))
    }

    async fn execute(&self, sql: &str) {
        self.raw().execute_batch(sql).expect(sql);
    }

    async fn query_i64(&self, sql: &str) -> i64 {
        self.raw().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    async fn query_bytes(&self, sql: &str) -> Option<Vec<u8>> {
        self.raw().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    async fn schema_version(&self) -> i64 {
        self.raw()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("read user_version")
    }

    async fn set_schema_version(&self, version: i64) {
        self.raw()
            .pragma_update(None, "user_version", version)
            .expect("set user_version");
    }
}

conformance_tests!(SqliteHarness);
