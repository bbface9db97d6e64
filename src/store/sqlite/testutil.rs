//! Helpers for the SQLite backend's own unit tests: a store in a temporary
//! directory and a raw connection for peeking. The sample tenants, tokens,
//! apps and times are the conformance suite's (`conformance/fixtures.rs`),
//! re-exported here. Test-only; nothing here is compiled into the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use super::SqliteStore;
use crate::crypto::Keyring;
use crate::domain::TenantState;
#[allow(unused_imports)]
pub(crate) use crate::store::conformance::fixtures::{
    app, base_url, hash, new_tenant, tid, token, user, HOUR, T0,
};
// The interface's traits, so tests call them on a `SqliteStore`.
#[allow(unused_imports)]
pub(crate) use crate::store::{
    AuditLog, ClientRepo, CredentialRepo, FlowRepo, JobQueue, LeaseTable, Lifecycle, StoreStats,
    TenantRepo, TokenRepo,
};

pub(super) struct TestStore {
    pub store: SqliteStore,
    pub path: PathBuf,
    pub keys: Arc<Keyring>,
    // Dropped last: removes the directory.
    pub _dir: tempfile::TempDir,
}

pub(super) fn open_temp() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/pbx-tokend.db");
    let keys = Arc::new(Keyring::ephemeral());
    let store = SqliteStore::open(&path, Arc::clone(&keys)).unwrap();
    TestStore {
        store,
        path,
        keys,
        _dir: dir,
    }
}

impl TestStore {
    /// A second, independent connection to the same file (for peeking and
    /// for corrupting rows on purpose).
    pub fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).unwrap()
    }
}

/// `n` active tenants `t000000`, `t000001`, ... inserted in one transaction.
pub(super) async fn insert_many(store: &SqliteStore, n: usize) {
    let ts = (0..n)
        .map(|i| new_tenant(&format!("t{i:06}"), TenantState::Active))
        .collect();
    store.insert_tenants(ts).await.unwrap();
}
