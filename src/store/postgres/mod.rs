//! The PostgreSQL backend: several replicas share one database (with its
//! own replication and failover). Implements the storage interface with
//! the same rules and the same sealing as SQLite (`store/seal/`), so a row
//! means the same in both; correct with several processes writing at once.
//!
//! How: every call takes a pooled connection and runs ONE transaction
//! (committed when the call's work returns `Ok`, rolled back otherwise).
//! Concurrent writers are kept apart by the database: single-statement
//! upserts and `UPDATE ... RETURNING` that lock the row they change, so a
//! refresh outcome racing another one or a delete never loses an update or
//! resurrects a row. Lease claims run on the database's clock. Connection
//! loss, a server shutting down and a read-only server after a failover
//! are `StoreError::Unavailable` (retry), and the connection is dropped so
//! the pool reconnects (a multi-host URL then reaches the new primary).
//! So is a call whose work goes unanswered for `CALL_DEADLINE` (a network
//! cut that drops packets): the caller hears so in seconds, and a
//! connection abandoned mid-call is closed, never handed to the next call.
//!
//! Files: `connect.rs` (URL, TLS, keepalives, the pool), `error.rs`
//! (SQLSTATE -> `StoreError`), `migrate.rs` (embedded migrations under an
//! advisory lock), and one file per table family as in `sqlite/`:
//! `tenants.rs` (reads), `tenant_writes.rs`, `credentials.rs`, `tokens.rs`,
//! `refresh_batch.rs` (refresh outcomes, group-committed),
//! `jobs.rs`, `leases.rs`, `onboarding.rs`, `clients.rs`,
//! `audit_events.rs`, `events.rs` (tenant events, webhook outbox),
//! `stats.rs`, `lifecycle.rs` (master key check,
//! heartbeat, housekeeping); `testdb.rs` (tests only: a real PostgreSQL
//! server for the test process).
//!
//! `feed.rs` (the change feed and replicas table) and `listen.rs` (the
//! LISTEN connection of its own) serve the cluster's cache sync.
//!
//! Does not: hold a session advisory lock, or back itself up (that is pg_dump's and the base backups' job).

mod audit_events;
mod budget;
#[cfg(test)]
mod budget_tests;
mod clients;
#[cfg(test)]
mod conformance_tests;
mod connect;
mod credential_reads;
mod credentials;
mod drainer;
mod error;
mod events;
mod feed;
#[cfg(test)]
mod feed_tests;
mod flow_claims;
mod flow_rebind;
mod import;
mod jobs;
mod leases;
mod lifecycle;
mod listen;
mod migrate;
mod onboarding;
#[cfg(test)]
mod record_tests;
mod refresh_batch;
#[cfg(test)]
mod smoke_tests;
mod stats;
mod tenant_writes;
mod tenants;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod tests;
mod tokens;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    CacheLoad, DueJob, JobQueue, NewTenant, ReadyJobs, RefreshRecord, StoreError, TenantChanges,
    TenantRepo, TokenRepo, WriteFence,
};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{PbxUser, Tenant, TenantId, TenantState};
use crate::secret::Secret;

/// The transaction every call runs in.
pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// What a call's work returns: a future borrowing its transaction.
pub(super) type TxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How long a call's work may go unanswered before it is given up (see
/// `PgStore::transact`): a replica whose database connection went silent
/// (a partition that drops packets, a frozen server) answers its callers
/// `Unavailable` within this, instead of when TCP gives up (20 s) or the
/// caller's deadline passes.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// A pooled connection that goes back to the pool only when its call
/// ended cleanly ([`Conn::release`]). One dropped mid-call (a deadline,
/// the caller's own timeout or a cancelled RPC around the call) or left
/// useless by an error is closed instead: the next call must not queue
/// behind an answer that may never come, and a multi-host URL then
/// reconnects to the writable server.
struct Conn(Option<Object>);

impl Conn {
    /// The connection; held from the pool until released or dropped.
    fn client(&mut self) -> Result<&mut Object, StoreError> {
        self.0
            .as_mut()
            .ok_or_else(|| StoreError::Task("a connection used after its call ended".into()))
    }

    /// Back to the pool, for the next call.
    fn release(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.0.take() {
            // Detached from the pool: dropping the client closes it.
            drop(Object::take(obj));
        }
    }
}

/// Handle to the database; cheap to clone (all clones share the pool).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
    /// Leases on the caller's clock instead of the database's: only for the
    /// conformance suite, whose lease cases move time by hand.
    caller_lease_clock: bool,
    /// `CALL_DEADLINE`; shorter in tests.
    call_deadline: Duration,
}

struct Inner {
    pool: Pool,
    keyring: Arc<Keyring>,
    /// Hosts and database, for logs (never the URL: it may hold a password).
    target: String,
    /// Event settings and the "events committed" channel.
    events: events::EventHub,
    /// What the change-feed listener connects with (`listen.rs`).
    listen: Arc<listen::ListenConfig>,
    /// Refresh outcomes waiting for their group commit (`refresh_batch.rs`).
    refreshes: refresh_batch::Queue,
    /// Budget slots waiting to be taken or released together (`budget.rs`).
    slots: budget::SlotQueues,
    /// Renewals' credential reads waiting for the next batch
    /// (`credential_reads.rs`).
    credential_reads: credential_reads::Queue,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database at `url` (libpq URL or key=value string;
    /// `password`, from `[store] postgres_password_file`, wins over one in
    /// the URL) and applies the migrations. Fails with `Unavailable` when
    /// the database cannot be reached, `SchemaTooNew` when it is newer
    /// than this binary.
    pub async fn connect(
        url: &str,
        password: Option<&Secret<String>>,
        keyring: Arc<Keyring>,
    ) -> Result<PgStore, StoreError> {
        let (cfg, tls, root_cert) = connect::config(url, password)?;
        let target = connect::describe(&cfg);
        let listen = Arc::new(listen::ListenConfig {
            cfg: cfg.clone(),
            tls,
            root_cert: root_cert.clone(),
        });
        let pool = connect::pool(cfg, tls, root_cert.as_deref())?;
        let mut client = pool.get().await.map_err(|e| {
            let e = error::pool_error(e);
            match e {
                StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {target}: {m}"
                )),
                other => other,
            }
        })?;
        let found = migrate::apply(&mut client, migrate::MIGRATIONS).await?;
        tracing::info!(
            database = %target,
            tls,
            from = found,
            to = migrate::latest_version(),
            "PostgreSQL store open"
        );
        drop(client);
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                keyring,
                target,
                events: events::EventHub::default(),
                listen,
                refreshes: refresh_batch::Queue::default(),
                credential_reads: credential_reads::Queue::default(),
                slots: budget::SlotQueues::default(),
            }),
            caller_lease_clock: false,
            call_deadline: CALL_DEADLINE,
        })
    }

    /// The same store with leases on the caller's clock (tests only: the
    /// conformance suite's lease cases pass the time by hand).
    #[cfg(test)]
    pub(crate) fn with_caller_lease_clock(mut self) -> PgStore {
        self.caller_lease_clock = true;
        self
    }

    /// The same store with another call deadline (tests only).
    #[cfg(test)]
    pub(crate) fn with_call_deadline(mut self, deadline: Duration) -> PgStore {
        self.call_deadline = deadline;
        self
    }

    /// Hosts and database this store talks to (no user, no password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.inner.pool.get().await.map_err(error::pool_error)
    }

    /// Runs `f` in one transaction; commits when it returns `Ok`, rolls
    /// back otherwise; bounded by the call deadline (`CALL_DEADLINE`).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> FnOnce(&'a Tx<'a>, &'a Keyring) -> TxFuture<'a, T> + Send,
    {
        self.transact(Some(self.call_deadline), move |tx, keys, _| f(tx, keys))
            .await
    }

    /// As [`PgStore::write`], with the context `f` appends events through;
    /// this handle's streams are woken after the commit.
    async fn write_ev<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> FnOnce(&'a Tx<'a>, &'a Keyring, &'a events::EventCx) -> TxFuture<'a, T> + Send,
    {
        self.transact(Some(self.call_deadline), f).await
    }

    /// As [`PgStore::write`] without the call deadline, for work that grows
    /// with the number of tenants (the cache load at start-up, a
    /// migration's import, housekeeping, spreading a backlog): the
    /// connection's TCP timeouts bound it instead.
    async fn bulk<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> FnOnce(&'a Tx<'a>, &'a Keyring) -> TxFuture<'a, T> + Send,
    {
        self.transact(None, move |tx, keys, _| f(tx, keys)).await
    }

    /// One transaction on a pooled connection. The work before COMMIT must
    /// finish within `deadline`, or the call answers `Unavailable` (the
    /// transaction is abandoned with its connection, so nothing of it is
    /// written). COMMIT itself is not cut short: once it is sent, giving up
    /// could not say whether it landed.
    async fn transact<T, F>(&self, deadline: Option<Duration>, f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> FnOnce(&'a Tx<'a>, &'a Keyring, &'a events::EventCx) -> TxFuture<'a, T> + Send,
    {
        let cx = self.inner.events.begin();
        let mut conn = Conn(Some(self.client().await?));
        let out = async {
            let work = async {
                let tx = conn.client()?.transaction().await?;
                let out = f(&tx, &self.inner.keyring, &cx).await?;
                Ok::<_, StoreError>((tx, out))
            };
            let (tx, out) = self.within(deadline, work).await?;
            tx.commit().await?;
            Ok(out)
        }
        .await;
        match &out {
            Ok(_) => {
                self.inner.events.committed(&cx);
                conn.release();
            }
            Err(e) if !error::breaks_connection(e) => conn.release(),
            Err(_) => {}
        }
        out
    }

    /// `work`'s result, or `Unavailable` when it did not finish within
    /// `deadline` (`None`: no bound).
    async fn within<T>(
        &self,
        deadline: Option<Duration>,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(limit) = deadline else {
            return work.await;
        };
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "PostgreSQL at {} did not answer within {} ms (the network to it is cut or \
                 it is overloaded); the call was abandoned and its connection closed",
                self.inner.target,
                limit.as_millis()
            )))
        })
    }

    /// One statement in its own (implicit) transaction, its rows: for a
    /// single-statement read or autocommit write, one round trip where
    /// `read`/`write` take three (BEGIN, the statement, COMMIT). Bounded by
    /// the call deadline; a timed-out write may have landed, so only
    /// writes whose repeat is harmless use it (taking and giving back
    /// budget slots).
    async fn autocommit(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut conn = Conn(Some(self.client().await?));
        let out: Result<Vec<Row>, StoreError> = self
            .within(Some(self.call_deadline), async {
                let client = conn.client()?;
                let stmt = client.prepare_cached(sql).await?;
                Ok(client.query(&stmt, params).await?)
            })
            .await;
        match &out {
            Err(e) if error::breaks_connection(e) => {}
            _ => conn.release(),
        }
        out
    }

    /// A read: the same as a write (one transaction, so several statements
    /// see one snapshot-consistent view per statement and nothing is left
    /// open), kept apart for readability.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> FnOnce(&'a Tx<'a>, &'a Keyring) -> TxFuture<'a, T> + Send,
    {
        self.write(f).await
    }
}

/// Rows of a cached statement.
pub(super) async fn query(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query(&stmt, params).await?)
}

/// At most one row of a cached statement.
pub(super) async fn query_opt(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_opt(&stmt, params).await?)
}

/// Exactly one row of a cached statement.
pub(super) async fn query_one(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&stmt, params).await?)
}

/// Rows changed by a cached statement.
pub(super) async fn execute(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, params).await?)
}

/// A `u32` limit as the BIGINT PostgreSQL compares it with.
pub(super) fn limit(n: u32) -> i64 {
    i64::from(n)
}

#[async_trait]
impl TenantRepo for PgStore {
    async fn insert_tenant(&self, t: NewTenant) -> Result<(), StoreError> {
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move { tenant_writes::insert(tx, keys, ev, &t).await })
        })
        .await
    }

    async fn insert_tenants(&self, ts: Vec<NewTenant>) -> Result<(), StoreError> {
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move {
                for t in &ts {
                    tenant_writes::insert(tx, keys, ev, t).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError> {
        let id = id.clone();
        self.read(move |tx, _| Box::pin(async move { tenants::get(tx, id.as_str()).await }))
            .await
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
        state: Option<TenantState>,
    ) -> Result<Vec<Tenant>, StoreError> {
        self.read(move |tx, _| {
            Box::pin(async move { tenants::list(tx, after.as_ref(), limit, state).await })
        })
        .await
    }

    async fn update_tenant(
        &self,
        id: &TenantId,
        changes: TenantChanges,
        now: UnixMs,
    ) -> Result<Tenant, StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, keys, ev| {
            Box::pin(async move {
                tenant_writes::update_by_operator(tx, keys, ev, id.as_str(), &changes, now).await
            })
        })
        .await
    }

    async fn delete_tenant(&self, id: &TenantId, now: UnixMs) -> Result<(), StoreError> {
        let id = id.clone();
        self.write_ev(move |tx, _, ev| {
            Box::pin(async move { tenant_writes::delete(tx, ev, id.as_str(), now).await })
        })
        .await
    }

    async fn set_pbx_user(&self, id: &TenantId, user: &PbxUser) -> Result<(), StoreError> {
        let (id, user) = (id.clone(), user.clone());
        self.write(move |tx, _| {
            Box::pin(async move { tenant_writes::set_pbx_user(tx, id.as_str(), &user).await })
        })
        .await
    }
}

#[async_trait]
impl TokenRepo for PgStore {
    async fn load_cache_checked(&self) -> Result<CacheLoad, StoreError> {
        self.bulk(|tx, keys| Box::pin(tokens::load_cache(tx, keys)))
            .await
    }

    /// Group-committed (`refresh_batch.rs`): outcomes arriving while a
    /// batch commits share the next transaction, each fenced and applied
    /// whole or not at all with its tenant row locked, so an outcome racing
    /// another one or a delete from another replica never half-lands.
    async fn record_refresh_fenced(
        &self,
        id: &TenantId,
        record: RefreshRecord,
        fence: WriteFence,
        now: UnixMs,
    ) -> Result<u32, StoreError> {
        self.record_refresh_grouped(id.clone(), record, fence, now)
            .await
    }
}

#[async_trait]
impl JobQueue for PgStore {
    async fn due_jobs(&self, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError> {
        self.read(move |tx, _| Box::pin(jobs::due(tx, now, limit)))
            .await
    }

    async fn ready_jobs(
        &self,
        now: UnixMs,
        skip_hosts: Vec<String>,
        limit: u32,
    ) -> Result<ReadyJobs, StoreError> {
        self.read(move |tx, _| {
            Box::pin(async move { jobs::ready(tx, now, &skip_hosts, limit).await })
        })
        .await
    }

    async fn reschedule(&self, id: &TenantId, due_at: UnixMs) -> Result<(), StoreError> {
        let id = id.clone();
        self.write(move |tx, _| {
            Box::pin(async move { jobs::reschedule(tx, id.as_str(), due_at).await })
        })
        .await
    }

    async fn reschedule_many(&self, jobs: Vec<(TenantId, UnixMs)>) -> Result<(), StoreError> {
        self.bulk(move |tx, _| Box::pin(async move { jobs::reschedule_many(tx, &jobs).await }))
            .await
    }
}
