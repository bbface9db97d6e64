//! Helpers for the store's unit tests: a store in a temporary directory,
//! sample tenants, tokens and credentials, a raw connection for peeking.
//! Test-only; nothing here is compiled into the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use super::{NewTenant, SqliteStore};
// The interface's traits, so tests call them on a `SqliteStore`.
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};
use crate::secret::Secret;
#[allow(unused_imports)]
pub(crate) use crate::store::{
    AuditLog, ClientRepo, CredentialRepo, FlowRepo, JobQueue, LeaseTable, Lifecycle, StoreStats,
    TenantRepo, TokenRepo,
};

pub(crate) const T0: UnixMs = UnixMs(1_700_000_000_000);
pub(crate) const HOUR: i64 = 3_600_000;

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

    /// Rows of `table` belonging to `id`.
    pub fn count(&self, table: &str, id: &str) -> i64 {
        self.raw()
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE tenant_id = ?1"),
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }
}

pub(crate) fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

pub(crate) fn base_url(host: &str) -> PbxBaseUrl {
    PbxBaseUrl::from_trusted(&format!("https://{host}")).unwrap()
}

pub(crate) fn app(id: &str, secret: &str) -> AppCredentials {
    AppCredentials {
        client_id: id.to_owned(),
        client_secret: Secret::new(secret.to_owned()),
    }
}

pub(crate) fn token(value: &str, issued_at: UnixMs) -> AccessToken {
    AccessToken {
        value: Secret::new(value.to_owned()),
        token_type: "Bearer".into(),
        issued_at,
        expires_at: issued_at.plus_ms(HOUR),
    }
}

/// A tenant on `pbx.example.com`. Renewing states come with a trusted app,
/// a token issued at T0 and a job due 48 minutes later; others bare.
pub(crate) fn new_tenant(id: &str, state: TenantState) -> NewTenant {
    let renewing = state.is_renewing();
    NewTenant {
        id: tid(id),
        display_name: format!("Tenant {id}"),
        base_url: base_url("pbx.example.com"),
        state,
        trusted_app: renewing.then(|| app(&format!("app-{id}"), &format!("secret-{id}"))),
        public_app: None,
        token: renewing.then(|| token(&format!("token-{id}"), T0)),
        renew_at: renewing.then(|| T0.plus_ms(HOUR * 8 / 10)),
        now: T0,
    }
}

/// `n` active tenants `t000000`, `t000001`, ... inserted in one transaction.
pub(super) async fn insert_many(store: &SqliteStore, n: usize) {
    let ts = (0..n)
        .map(|i| new_tenant(&format!("t{i:06}"), TenantState::Active))
        .collect();
    store.insert_tenants(ts).await.unwrap();
}
