//! The PostgreSQL backend run through the backend-neutral conformance
//! suite (`store/conformance/`): a fresh database on the test process's
//! PostgreSQL server (`testdb.rs`) per case.

use std::sync::Arc;

use async_trait::async_trait;

use super::testdb::TestDb;
use super::PgStore;
use crate::crypto::Keyring;
use crate::store::conformance::{conformance_tests, Harness};
use crate::store::{Store, StoreError};

pub(crate) struct PgHarness {
    db: TestDb,
}

#[async_trait]
impl Harness for PgHarness {
    async fn create() -> Self {
        PgHarness {
            db: TestDb::create().await,
        }
    }

    async fn open(&self, keys: Arc<Keyring>) -> Result<Store, StoreError> {
        // The lease cases move time by hand, as on SQLite; leases on the
        // database's clock are tested in `postgres/tests.rs`.
        let store = PgStore::connect(&self.db.url, None, keys).await?;
        Ok(Store::new(store.with_caller_lease_clock()))
    }

    async fn execute(&self, sql: &str) {
        self.db.client().await.batch_execute(sql).await.expect(sql);
    }

    async fn query_i64(&self, sql: &str) -> i64 {
        let row = self.db.client().await.query_one(sql, &[]).await.expect(sql);
        // count(*) is BIGINT; a plain integer expression may be INTEGER.
        row.try_get::<_, i64>(0)
            .or_else(|_| row.try_get::<_, i32>(0).map(i64::from))
            .expect(sql)
    }

    async fn query_bytes(&self, sql: &str) -> Option<Vec<u8>> {
        let row = self.db.client().await.query_one(sql, &[]).await.expect(sql);
        row.try_get::<_, Option<Vec<u8>>>(0).expect(sql)
    }

    async fn schema_version(&self) -> i64 {
        self.query_i64("SELECT max(version) FROM schema_version")
            .await
    }

    async fn set_schema_version(&self, version: i64) {
        let client = self.db.client().await;
        // The store creates the table when it first opens; a database never
        // opened gets it here (as the runner would make it).
        client
            .batch_execute(super::migrate::CREATE_VERSION_TABLE)
            .await
            .expect("schema_version table");
        client
            .execute("DELETE FROM schema_version WHERE version > $1", &[&version])
            .await
            .expect("lower the schema version");
        client
            .execute(
                "INSERT INTO schema_version (version, name) VALUES ($1, 'set by a test') \
                 ON CONFLICT (version) DO NOTHING",
                &[&version],
            )
            .await
            .expect("set the schema version");
    }
}

conformance_tests!(PgHarness);
