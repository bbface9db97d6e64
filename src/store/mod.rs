//! SQLite storage: the only module that knows SQL. Opens the database (WAL,
//! `synchronous=FULL`, foreign keys, busy timeout, `secure_delete`), applies
//! the embedded migrations in one transaction, and offers repositories for
//! tenants, credentials, tokens and renewal jobs. Secrets and tokens are
//! sealed here with the tenant id and field name bound in as associated data,
//! so a copy of the database file alone reveals nothing.
//!
//! Writes go through one writer connection; reads use their own connection,
//! so a slow admin listing never blocks a renewal commit. Every public method
//! is async and runs its SQLite work on the blocking pool.
//!
//! Does not: decide states or schedules (the broker and renewal do), speak
//! HTTP, or know protobuf.

// STUB: the signatures below are the contract used by broker/renewal/api.
// Bodies are filled in by the store implementation.

use std::path::Path;
use std::sync::Arc;

use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{
    AccessToken, AppCredentials, PbxBaseUrl, PbxUser, Tenant, TenantId, TenantState,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tenant {0} already exists")]
    TenantExists(String),
    #[error("tenant {0} not found")]
    TenantNotFound(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database schema is version {found}, newer than this binary understands ({supported}); run a newer pbx-tokend or restore a backup")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot open a sealed value ({what}): {source}")]
    Unseal {
        what: String,
        source: crate::crypto::CryptoError,
    },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("cannot prepare the database location: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything needed to insert a tenant in one transaction.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub display_name: String,
    pub base_url: PbxBaseUrl,
    pub state: TenantState,
    pub trusted_app: Option<AppCredentials>,
    /// Public app credentials and redirect URI for the authorization flow.
    pub public_app: Option<(AppCredentials, String)>,
    /// The first token, when the tenant starts ACTIVE.
    pub token: Option<AccessToken>,
    /// When the renewal job is first due (with `token`).
    pub renew_at: Option<UnixMs>,
    pub now: UnixMs,
}

/// The in-memory view the broker keeps per tenant, loaded at start-up.
#[derive(Debug, Clone)]
pub struct CachedTenant {
    pub id: TenantId,
    pub base_url: PbxBaseUrl,
    pub state: TenantState,
    pub token: Option<AccessToken>,
}

/// A renewal job that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub tenant_id: TenantId,
    pub host: String,
    pub due_at: UnixMs,
}

/// Fields UpdateTenant may change; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct TenantChanges {
    pub display_name: Option<String>,
    pub base_url: Option<PbxBaseUrl>,
    pub state: Option<TenantState>,
    pub trusted_app: Option<AppCredentials>,
    /// Replaces the held token (after new credentials were verified).
    pub token: Option<AccessToken>,
    /// Sets the renewal job's due time; with `clear_job` the job is removed.
    pub renew_at: Option<UnixMs>,
    pub clear_job: bool,
    /// Resets consecutive_failures and last_error.
    pub clear_failures: bool,
}

/// Outcome of one refresh, recorded in one transaction.
#[derive(Debug, Clone)]
pub enum RefreshRecord {
    Success {
        token: AccessToken,
        renew_at: UnixMs,
    },
    Failure {
        state: TenantState,
        error: String,
        retry_at: UnixMs,
    },
}

/// Active tenants and their renewal demand, per PBX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLoad {
    pub host: String,
    pub renewing_tenants: u64,
    /// Sum over tenants of their token lifetimes in ms (for the average).
    pub lifetime_ms_sum: i64,
    pub tenants_with_token: u64,
}

#[derive(Clone)]
pub struct Store {
    _inner: Arc<()>,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies migrations.
    pub fn open(_path: &Path, _keyring: Arc<Keyring>) -> Result<Store, StoreError> {
        unimplemented!()
    }
    pub async fn insert_tenant(&self, _t: NewTenant) -> Result<(), StoreError> {
        unimplemented!()
    }
    pub async fn get_tenant(&self, _id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        unimplemented!()
    }
    /// Tenants ordered by id, strictly after `after`, optionally one state.
    pub async fn list_tenants(
        &self,
        _after: Option<TenantId>,
        _limit: u32,
        _state: Option<TenantState>,
    ) -> Result<Vec<Tenant>, StoreError> {
        unimplemented!()
    }
    /// Every tenant with its current token, for the broker's cache at start-up.
    pub async fn load_cache(&self) -> Result<Vec<CachedTenant>, StoreError> {
        unimplemented!()
    }
    pub async fn trusted_credentials(
        &self,
        _id: &TenantId,
    ) -> Result<Option<AppCredentials>, StoreError> {
        unimplemented!()
    }
    /// Success: token stored, state ACTIVE, failures reset, last_refresh_at =
    /// token.issued_at, job due at renew_at. Failure: state set,
    /// consecutive_failures + 1, last_error set, job due at retry_at.
    /// Returns consecutive_failures after the update.
    pub async fn record_refresh(
        &self,
        _id: &TenantId,
        _record: RefreshRecord,
        _now: UnixMs,
    ) -> Result<u32, StoreError> {
        unimplemented!()
    }
    pub async fn update_tenant(
        &self,
        _id: &TenantId,
        _changes: TenantChanges,
        _now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        unimplemented!()
    }
    /// Deletes the tenant, its credentials, token and jobs (bytes overwritten).
    pub async fn delete_tenant(&self, _id: &TenantId) -> Result<(), StoreError> {
        unimplemented!()
    }
    pub async fn set_pbx_user(&self, _id: &TenantId, _user: &PbxUser) -> Result<(), StoreError> {
        unimplemented!()
    }
    /// Jobs due at or before `now`, earliest first.
    pub async fn due_jobs(&self, _now: UnixMs, _limit: u32) -> Result<Vec<DueJob>, StoreError> {
        unimplemented!()
    }
    /// The earliest due time of any job, if there is one.
    pub async fn next_due_at(&self) -> Result<Option<UnixMs>, StoreError> {
        unimplemented!()
    }
    /// Moves one job (creating it if absent).
    pub async fn reschedule(&self, _id: &TenantId, _due_at: UnixMs) -> Result<(), StoreError> {
        unimplemented!()
    }
    /// Moves many jobs in one transaction (spreading overdue renewals).
    pub async fn reschedule_many(&self, _jobs: Vec<(TenantId, UnixMs)>) -> Result<(), StoreError> {
        unimplemented!()
    }
    pub async fn host_loads(&self) -> Result<Vec<HostLoad>, StoreError> {
        unimplemented!()
    }
    pub async fn count_by_state(&self) -> Result<Vec<(TenantState, u64)>, StoreError> {
        unimplemented!()
    }
    /// Maintenance: checkpoint the WAL (TRUNCATE).
    pub async fn wal_checkpoint(&self) -> Result<(), StoreError> {
        unimplemented!()
    }
    /// Maintenance: `PRAGMA optimize`.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        unimplemented!()
    }
    /// Flushes and closes; later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        unimplemented!()
    }
}
