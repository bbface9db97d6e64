//! SQLite storage: the only module that knows SQL. Opens the database (WAL,
//! `synchronous=FULL`, foreign keys, busy timeout, `secure_delete`), applies
//! the embedded migrations in one transaction, and offers repositories for
//! tenants, credentials, tokens and renewal jobs. Secrets and tokens are
//! sealed here with the tenant id and field name bound in as associated data,
//! so a copy of the database file alone reveals nothing; a client secret is
//! sealed together with the base URL, client id and redirect URI it may be
//! sent with, so an edited copy cannot redirect it (`credentials.rs`).
//!
//! Writes go through one writer connection; reads use a pool of two
//! read-only connections, so a slow admin listing never blocks a renewal
//! commit. Every public method is async and runs its SQLite work on the
//! blocking pool (except in a store opened with [`Store::open_inline`], for
//! the deterministic simulation only).
//!
//! Does not: decide states or schedules (the broker and renewal do), speak
//! HTTP, or know protobuf.
//!
//! Files: `connection.rs` (open, pragmas, file modes, read pool),
//! `migrate.rs`, `sealed.rs` (which fields are sealed and how), and one file
//! per table family: `tenants.rs` (reads) and `tenant_writes.rs`,
//! `credentials.rs`, `tokens.rs`, `jobs.rs`, `onboarding.rs` (the
//! authorization flow's committed steps), `clients.rs` (API clients),
//! `audit_events.rs` (the audit log table); `masterkey.rs` (key check value, re-sealing for
//! master key rotation); `stats.rs` (aggregates for operators) and
//! `backup.rs` (VACUUM INTO snapshots, restore, heartbeat).

mod audit_events;
pub mod backup;
mod clients;
mod connection;
mod credentials;
mod flow_seal;
mod group_commit;
mod jobs;
mod masterkey;
mod migrate;
mod onboarding;
mod sealed;
mod stats;
mod tenant_writes;
mod tenants;
#[cfg(test)]
mod testutil;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use connection::{lock, ReadPool};
pub use onboarding::{Flow, FlowCompletion, FlowStep, FlowUpdate};

pub use audit_events::{AuditEntry, AuditQuery, NewAuditEvent};
pub use clients::NewClientRow;
pub use masterkey::{has_sealed_data, KeyCheck, RotationReport};

pub use backup::{BackupCheck, BackupInfo, RestoreReport};
pub use stats::{QueueStats, TokenHealth};

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
    #[error("the configured master key (id {configured}) is not the key this database was sealed with (id {sealed_with}); start with the master key file the database was written with (master_key_file, $CREDENTIALS_DIRECTORY/master.key or <state_dir>/master.key). Nothing was changed")]
    WrongMasterKey {
        configured: String,
        sealed_with: String,
    },
    /// A tenant's sealed credentials do not open (another tenant's or
    /// field's ciphertext, damaged bytes). Nothing can be sent for it.
    #[error("the stored {kind} credentials of tenant {tenant} cannot be opened ({reason}); nothing is sent to the PBX for this tenant: set new credentials with UpdateTenant (trusted_app, together with pbx_base_url) or delete and re-create the tenant")]
    CredentialUnreadable {
        tenant: String,
        kind: &'static str,
        reason: String,
    },
    /// A clear column that decides where a secret goes (base URL, client
    /// id, redirect URI) is not the value sealed with the secret: the
    /// database was edited outside pbx-tokend.
    #[error("the {field} of tenant {tenant} ({stored:?}) is not the one its {kind} secret was sealed with ({sealed:?}): the database was changed outside pbx-tokend, so the secret is not sent anywhere; put the original value back, or set the tenant's pbx_base_url and trusted_app again with UpdateTenant (a public app: delete and re-create the tenant)")]
    CredentialTampered {
        tenant: String,
        kind: &'static str,
        field: &'static str,
        stored: String,
        sealed: String,
    },
    /// A sealed value of an authorization flow does not open (another
    /// row's ciphertext, damaged bytes, or the format from before flows
    /// were bound). Nothing is sent with it.
    #[error("the {what} held by the authorization flow of tenant {tenant} cannot be opened ({reason}); nothing is sent to the PBX with it: run BeginAuthorization to start the authorization again")]
    FlowUnreadable {
        tenant: String,
        what: &'static str,
        reason: String,
    },
    /// A clear column that decides where a flow's secret goes (the
    /// tenant's base URL, the new app's client id) is not the value sealed
    /// with it: the database was edited outside pbx-tokend.
    #[error("the {column} of tenant {tenant} ({stored:?}) is not the one the {what} of its authorization flow was sealed with ({sealed:?}): the database was changed outside pbx-tokend, so the {what} is not sent anywhere; put the original value back (pbx_base_url: UpdateTenant with the right pbx_base_url) and call CompleteAuthorization(tenant_id={tenant}) again, or run BeginAuthorization to start the authorization again")]
    FlowTampered {
        tenant: String,
        what: &'static str,
        column: &'static str,
        stored: String,
        sealed: String,
    },
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("cannot prepare the database location: {0}")]
    Io(#[from] std::io::Error),
    /// Opening the database failed; says which file and what was tried.
    #[error("cannot {op} {}: {message}", .path.display())]
    Open {
        op: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("backup {0}")]
    Backup(String),
}

impl StoreError {
    /// A tenant's stored credentials cannot be used (unreadable or bound to
    /// other values): that tenant's problem, not the store's.
    pub fn is_credential_fault(&self) -> bool {
        matches!(
            self,
            StoreError::CredentialUnreadable { .. } | StoreError::CredentialTampered { .. }
        )
    }

    /// An authorization flow's sealed values cannot be used (unreadable or
    /// bound to other values): that flow's problem, not the store's.
    pub fn is_flow_fault(&self) -> bool {
        matches!(
            self,
            StoreError::FlowUnreadable { .. } | StoreError::FlowTampered { .. }
        )
    }
}

/// A tenant whose stored credentials cannot be used (see
/// [`Store::credential_faults`]).
#[derive(Debug, Clone)]
pub struct CredentialFault {
    pub tenant_id: TenantId,
    /// The trusted app (renewals need it); otherwise the public app.
    pub trusted: bool,
    /// The operator-facing reason (a `StoreError` message).
    pub message: String,
}

/// The broker's start-up load: every tenant, and the tenants whose stored
/// token did not open (dropped, to be fetched again).
#[derive(Debug, Clone, Default)]
pub struct CacheLoad {
    pub tenants: Vec<CachedTenant>,
    pub dropped_tokens: Vec<TenantId>,
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

/// What one scheduler pass reads (see [`Store::ready_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyJobs {
    pub due: Vec<DueJob>,
    pub next_due_at: Option<UnixMs>,
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

/// Read-only connections. Two: a long admin listing and the renewal loop's
/// queries proceed side by side; more would not help on a small machine.
const READERS: usize = 2;

/// Handle to the database; cheap to clone (all clones share the
/// connections).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The one writer. A std `Mutex`, not tokio's: it is locked only inside
    /// `spawn_blocking` closures and never held across an `.await`, and
    /// SQLite serialises writers anyway, so queueing here costs nothing.
    /// `None` after `close`.
    writer: Mutex<Option<Connection>>,
    readers: ReadPool,
    keyring: Arc<Keyring>,
    path: PathBuf,
    /// Refresh outcomes waiting for the next group commit.
    refresh_queue: group_commit::Queue,
    /// Run SQL on the calling thread instead of the blocking pool; see
    /// [`Store::open_inline`].
    inline: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, applies migrations.
    ///
    /// Blocking (file system and SQLite); call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<Store, StoreError> {
        Self::open_with(path, keyring, false)
    }

    /// As [`Store::open`], but every query runs inline on the task that
    /// awaits it, for the deterministic simulation (`crate::simulation`):
    /// blocking-pool threads finish in an order the OS chooses, which a
    /// seed cannot replay, and under a paused tokio clock time could move
    /// while they run. Production must not use it: an fsync would then stall
    /// an async worker thread and every task queued on it.
    pub fn open_inline(path: &Path, keyring: Arc<Keyring>) -> Result<Store, StoreError> {
        Self::open_with(path, keyring, true)
    }

    fn open_with(path: &Path, keyring: Arc<Keyring>, inline: bool) -> Result<Store, StoreError> {
        connection::prepare_location(path)?;
        let mut writer = connection::open_writer(path)?;
        let found = migrate::apply(&mut writer, migrate::MIGRATIONS).map_err(|e| match e {
            StoreError::Sqlite(e) => connection::failed("update the schema of", path, e),
            other => other,
        })?;
        tracing::debug!(
            path = %path.display(),
            from = found,
            to = migrate::latest_version(),
            "database open"
        );
        let readers = ReadPool::open(path, READERS)?;
        Ok(Store {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(writer)),
                readers,
                keyring,
                path: path.to_owned(),
                refresh_queue: group_commit::Queue::default(),
                inline,
            }),
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the writer connection, on the blocking pool.
    async fn with_writer<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Keyring) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            let mut guard = lock(&inner.writer);
            let conn = guard.as_mut().ok_or_else(connection::closed)?;
            f(conn, &inner.keyring)
        })
        .await
    }

    /// Runs blocking SQLite work on the blocking pool (inline for a store
    /// from [`Store::open_inline`]).
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.inline {
            return f();
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer; commits when it
    /// returns `Ok`, rolls back otherwise.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keyring) -> Result<T, StoreError> + Send + 'static,
    {
        self.with_writer(move |conn, keys| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx, keys)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Runs `f` on a reader connection, on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Keyring) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.run(move || inner.readers.with(|conn| f(conn, &inner.keyring)))
            .await
    }

    /// Inserts the tenant with its credentials, first token and job, all or
    /// nothing. `TenantExists` if the id is taken.
    pub async fn insert_tenant(&self, t: NewTenant) -> Result<(), StoreError> {
        self.write(move |tx, keys| tenant_writes::insert(tx, keys, &t))
            .await
    }

    /// Inserts many tenants in one transaction (bulk import, load tests):
    /// all or nothing, `TenantExists` names the first duplicate.
    pub async fn insert_tenants(&self, ts: Vec<NewTenant>) -> Result<(), StoreError> {
        self.write(move |tx, keys| {
            ts.iter()
                .try_for_each(|t| tenant_writes::insert(tx, keys, t))
        })
        .await
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let id = id.clone();
        self.read(move |conn, _| tenants::get(conn, id.as_str()))
            .await
    }

    /// Tenants ordered by id, strictly after `after`, optionally one state.
    pub async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
        state: Option<TenantState>,
    ) -> Result<Vec<Tenant>, StoreError> {
        self.read(move |conn, _| tenants::list(conn, after.as_ref(), limit, state))
            .await
    }

    /// Every tenant with its current token, for the broker's cache at start-up.
    pub async fn load_cache(&self) -> Result<Vec<CachedTenant>, StoreError> {
        Ok(self.load_cache_checked().await?.tenants)
    }

    /// As [`Store::load_cache`], also naming the tenants whose token did not
    /// open: such a token is left out (with a warning), never a reason to
    /// refuse the whole load.
    pub async fn load_cache_checked(&self) -> Result<CacheLoad, StoreError> {
        self.read(tokens::load_cache).await
    }

    /// Success: token stored, state ACTIVE, failures reset, last_refresh_at =
    /// token.issued_at, job due at renew_at. Failure: state set,
    /// consecutive_failures + 1, last_error set, job due at retry_at.
    /// Returns consecutive_failures after the update.
    ///
    /// A tenant that was DISABLED or put back to PENDING_AUTHORIZATION while
    /// the refresh ran keeps that state (an operator's decision is not undone
    /// by a renewal that was already in flight). `TenantNotFound` if it was
    /// deleted meanwhile.
    pub async fn record_refresh(
        &self,
        id: &TenantId,
        record: RefreshRecord,
        now: UnixMs,
    ) -> Result<u32, StoreError> {
        group_commit::record(&self.inner, id.clone(), record, now).await
    }

    /// Applies `changes` in one transaction and returns the tenant as stored.
    /// A new base URL also moves the renewal job to the new host. With both
    /// `renew_at` and `clear_job`, the job is removed. A new `token` also sets
    /// last_refresh_at to its issued_at; `clear_failures` also resets the
    /// job's attempt counter. updated_at = `now`. `TenantNotFound` if missing.
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        changes: TenantChanges,
        now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        let id = id.clone();
        self.write(move |tx, keys| tenant_writes::update(tx, keys, id.as_str(), &changes, now))
            .await
    }

    /// Deletes the tenant, its credentials, token and jobs (bytes overwritten).
    pub async fn delete_tenant(&self, id: &TenantId) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| tenant_writes::delete(tx, id.as_str()))
            .await
    }

    /// Records the PBX user the trusted app acts for. `TenantNotFound` if
    /// missing. Leaves updated_at alone (this is observed, not edited).
    pub async fn set_pbx_user(&self, id: &TenantId, user: &PbxUser) -> Result<(), StoreError> {
        let id = id.clone();
        let user = user.clone();
        self.write(move |tx, _| tenant_writes::set_pbx_user(tx, id.as_str(), &user))
            .await
    }

    /// Jobs due at or before `now`, earliest first, of tenants whose state
    /// renews (`TenantState::is_renewing`).
    pub async fn due_jobs(&self, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError> {
        self.read(move |conn, _| jobs::due(conn, now, limit)).await
    }

    /// The scheduler's pass: up to `limit` due jobs of renewing tenants,
    /// earliest first, of hosts not in `skip_hosts`, and when the next job
    /// of those hosts falls due. A skipped host's backlog costs a walk over
    /// its index entries, never a read of its rows, and hides nothing.
    pub async fn ready_jobs(
        &self,
        now: UnixMs,
        skip_hosts: Vec<String>,
        limit: u32,
    ) -> Result<ReadyJobs, StoreError> {
        self.read(move |conn, _| jobs::ready(conn, now, &skip_hosts, limit))
            .await
    }

    /// Moves one job (creating it if absent). `TenantNotFound` if missing.
    pub async fn reschedule(&self, id: &TenantId, due_at: UnixMs) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| jobs::reschedule(tx, id.as_str(), due_at))
            .await
    }

    /// Moves many jobs in one transaction (spreading overdue renewals).
    /// Tenants deleted meanwhile are skipped.
    pub async fn reschedule_many(&self, jobs: Vec<(TenantId, UnixMs)>) -> Result<(), StoreError> {
        self.write(move |tx, _| jobs::reschedule_many(tx, &jobs))
            .await
    }

    /// Per host (ordered by host): renewing tenants, how many hold a token and
    /// the sum of those tokens' lifetimes.
    pub async fn host_loads(&self) -> Result<Vec<HostLoad>, StoreError> {
        self.read(|conn, _| jobs::host_loads(conn)).await
    }

    /// Tenant count for every state (zero included), in `TenantState::ALL`
    /// order.
    pub async fn count_by_state(&self) -> Result<Vec<(TenantState, u64)>, StoreError> {
        self.read(|conn, _| tenants::count_by_state(conn)).await
    }

    /// Maintenance: checkpoint the WAL (TRUNCATE). Afterwards the `-wal` file
    /// is empty, so no old page image (of a deleted row) stays in it.
    pub async fn wal_checkpoint(&self) -> Result<(), StoreError> {
        self.with_writer(|conn, _| checkpoint(conn)).await
    }

    /// Maintenance: `PRAGMA optimize`.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        self.with_writer(|conn, _| Ok(conn.execute_batch("PRAGMA optimize")?))
            .await
    }

    /// Flushes and closes; later calls fail.
    pub async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            inner.readers.close()?;
            let Some(conn) = lock(&inner.writer).take() else {
                return Ok(());
            };
            conn.execute_batch("PRAGMA optimize")?;
            checkpoint(&conn)?;
            conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
        })
        .await
    }
}

fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        tracing::warn!(
            log,
            done,
            "WAL checkpoint could not finish: readers were busy"
        );
    }
    Ok(())
}
