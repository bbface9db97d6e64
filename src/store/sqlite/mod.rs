//! The SQLite backend: the embedded default, one node. Opens the database
//! (WAL, `synchronous=FULL`, foreign keys, busy timeout, `secure_delete`),
//! applies the embedded migrations in one transaction, and implements the
//! storage interface. Secrets and tokens are sealed here with the tenant id
//! and field name bound in as associated data, so a copy of the database
//! file alone reveals nothing; a client secret is sealed together with the
//! base URL, client id and redirect URI it may be sent with, so an edited
//! copy cannot redirect it (`credentials.rs`).
//!
//! Writes go through one writer connection; reads use a pool of two
//! read-only connections, so a slow admin listing never blocks a renewal
//! commit. Every call runs its SQLite work on the blocking pool (except in
//! a store opened with [`SqliteStore::open_inline`], for the deterministic
//! simulation only).
//!
//! Files: `connection.rs` (open, pragmas, file modes, read pool),
//! `migrate.rs`, `sealed.rs` (which fields are sealed and how), and one file
//! per table family: `tenants.rs` (reads) and `tenant_writes.rs`,
//! `credentials.rs`, `tokens.rs` (with `group_commit.rs`), `jobs.rs`,
//! `leases.rs`, `onboarding.rs` (the authorization flow's committed steps;
//! `flow_seal.rs`), `clients.rs` (API clients), `audit_events.rs` (the
//! audit log table), `events.rs` (tenant events, the webhook outbox, and
//! waking streams after a commit); `masterkey.rs` (key check value, re-sealing for master
//! key rotation); `stats.rs` (aggregates for operators); `lifecycle.rs`
//! (heartbeat, checkpoints, close) and `backup.rs` (VACUUM INTO snapshots,
//! restore).

mod audit_events;
pub mod backup;
mod clients;
#[cfg(test)]
mod conformance_tests;
mod connection;
mod credentials;
mod events;
mod export;
mod feed;
mod flow_claims;
mod flow_seal;
mod group_commit;
mod jobs;
mod leases;
mod lifecycle;
mod masterkey;
mod migrate;
mod onboarding;
mod sealed;
mod stats;
mod tenant_writes;
mod tenants;
#[cfg(test)]
pub(crate) mod testutil;
mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, Transaction, TransactionBehavior};

use connection::{lock, ReadPool};

pub use backup::{BackupCheck, RestoreReport};
pub(crate) use export::export;
pub use masterkey::{has_sealed_data, RotationReport};

// The interface's vocabulary, named here so the files below say `super::X`.
#[allow(unused_imports)]
pub(crate) use super::{
    AuditEntry, AuditQuery, BackupInfo, CachedTenant, CredentialFault, Flow, FlowCompletion,
    FlowStep, FlowUpdate, KeyCheck, NewAuditEvent, NewClientRow, QueueStats, TokenHealth,
};
use super::{
    CacheLoad, DueJob, HostLoad, JobQueue, NewTenant, ReadyJobs, RefreshRecord, StoreError,
    TenantChanges, TenantRepo, TokenRepo, WriteFence,
};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxUser, Tenant, TenantId, TenantState};

/// Read-only connections. Two: a long admin listing and the renewal loop's
/// queries proceed side by side; more would not help on a small machine.
const READERS: usize = 2;

/// Handle to the database; cheap to clone (all clones share the
/// connections).
#[derive(Clone)]
pub struct SqliteStore {
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
    /// [`SqliteStore::open_inline`].
    inline: bool,
    /// Event settings and the "events committed" channel.
    events: events::EventHub,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations.
    ///
    /// Blocking (file system and SQLite); call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, keyring, false)
    }

    /// As [`SqliteStore::open`], but every query runs inline on the task that
    /// awaits it, for the deterministic simulation (`crate::simulation`):
    /// blocking-pool threads finish in an order the OS chooses, which a
    /// seed cannot replay, and under a paused tokio clock time could move
    /// while they run. Production must not use it: an fsync would then stall
    /// an async worker thread and every task queued on it.
    pub fn open_inline(path: &Path, keyring: Arc<Keyring>) -> Result<SqliteStore, StoreError> {
        Self::open_with(path, keyring, true)
    }

    fn open_with(
        path: &Path,
        keyring: Arc<Keyring>,
        inline: bool,
    ) -> Result<SqliteStore, StoreError> {
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
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some(writer)),
                readers,
                keyring,
                path: path.to_owned(),
                refresh_queue: group_commit::Queue::default(),
                inline,
                events: events::EventHub::default(),
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
    /// from [`SqliteStore::open_inline`]).
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

    /// As [`SqliteStore::write`], with the context `f` appends events
    /// through; streams are woken after the commit.
    async fn write_ev<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &Keyring, &events::EventCx) -> Result<T, StoreError>
            + Send
            + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            let mut guard = lock(&inner.writer);
            let conn = guard.as_mut().ok_or_else(connection::closed)?;
            let cx = inner.events.begin();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx, &inner.keyring, &cx)?;
            tx.commit()?;
            inner.events.committed(&cx);
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
}

#[async_trait]
impl TenantRepo for SqliteStore {
    /// Inserts the tenant with its credentials, first token and job, all or
    /// nothing. `TenantExists` if the id is taken.
    async fn insert_tenant(&self, t: NewTenant) -> Result<(), StoreError> {
        self.write_ev(move |tx, keys, ev| tenant_writes::insert(tx, keys, ev, &t))
            .await
    }

    /// Inserts many tenants in one transaction (bulk import, load tests):
    /// all or nothing, `TenantExists` names the first duplicate.
    async fn insert_tenants(&self, ts: Vec<NewTenant>) -> Result<(), StoreError> {
        self.write_ev(move |tx, keys, ev| {
            ts.iter()
                .try_for_each(|t| tenant_writes::insert(tx, keys, ev, t))
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let id = id.clone();
        self.read(move |conn, _| tenants::get(conn, id.as_str()))
            .await
    }

    /// Tenants ordered by id, strictly after `after`, optionally one state.
    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
        state: Option<TenantState>,
    ) -> Result<Vec<Tenant>, StoreError> {
        self.read(move |conn, _| tenants::list(conn, after.as_ref(), limit, state))
            .await
    }

    /// Applies `changes` in one transaction and returns the tenant as stored.
    /// A new base URL also moves the renewal job to the new host. With both
    /// `renew_at` and `clear_job`, the job is removed. A new `token` also sets
    /// last_refresh_at to its issued_at; `clear_failures` also resets the
    /// job's attempt counter. updated_at = `now`. `TenantNotFound` if missing.
    async fn update_tenant(
        &self,
        id: &TenantId,
        changes: TenantChanges,
        now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            tenant_writes::update_by_operator(tx, keys, ev, id.as_str(), &changes, now)
        })
        .await
    }

    /// Deletes the tenant, its credentials, token and jobs (bytes
    /// overwritten), with a DELETED event.
    async fn delete_tenant(&self, id: &TenantId, now: UnixMs) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, _, ev| tenant_writes::delete(tx, ev, id.as_str(), now))
            .await
    }

    /// Records the PBX user the trusted app acts for. `TenantNotFound` if
    /// missing. Leaves updated_at alone (this is observed, not edited).
    async fn set_pbx_user(&self, id: &TenantId, user: &PbxUser) -> Result<(), StoreError> {
        let id = id.clone();
        let user = user.clone();
        self.write(move |tx, _| tenant_writes::set_pbx_user(tx, id.as_str(), &user))
            .await
    }
}

#[async_trait]
impl TokenRepo for SqliteStore {
    /// As [`SqliteStore::load_cache`], also naming the tenants whose token did not
    /// open: such a token is left out (with a warning), never a reason to
    /// refuse the whole load.
    async fn load_cache_checked(&self) -> Result<CacheLoad, StoreError> {
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
    async fn record_refresh_fenced(
        &self,
        id: &TenantId,
        record: RefreshRecord,
        fence: WriteFence,
        now: UnixMs,
    ) -> Result<u32, StoreError> {
        group_commit::record(&self.inner, id.clone(), record, fence, now).await
    }
}

#[async_trait]
impl JobQueue for SqliteStore {
    /// Jobs due at or before `now`, earliest first, of tenants whose state
    /// renews (`TenantState::is_renewing`).
    async fn due_jobs(&self, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError> {
        self.read(move |conn, _| jobs::due(conn, now, limit)).await
    }

    /// The scheduler's pass: up to `limit` due jobs of renewing tenants,
    /// earliest first, of hosts not in `skip_hosts`, and when the next job
    /// of those hosts falls due. A skipped host's backlog costs a walk over
    /// its index entries, never a read of its rows, and hides nothing.
    async fn ready_jobs(
        &self,
        now: UnixMs,
        skip_hosts: Vec<String>,
        limit: u32,
    ) -> Result<ReadyJobs, StoreError> {
        self.read(move |conn, _| jobs::ready(conn, now, &skip_hosts, limit))
            .await
    }

    /// Moves one job (creating it if absent). `TenantNotFound` if missing.
    async fn reschedule(&self, id: &TenantId, due_at: UnixMs) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| jobs::reschedule(tx, id.as_str(), due_at))
            .await
    }

    /// Moves many jobs in one transaction (spreading overdue renewals).
    /// Tenants deleted meanwhile are skipped.
    async fn reschedule_many(&self, jobs: Vec<(TenantId, UnixMs)>) -> Result<(), StoreError> {
        self.write(move |tx, _| jobs::reschedule_many(tx, &jobs))
            .await
    }
}
