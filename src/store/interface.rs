//! The storage interface: what the rest of the daemon may ask of a backend,
//! as a few narrow async traits, and [`Store`], the cheap-to-clone handle
//! every component receives when it is built.
//!
//! Written for a networked database as much as for SQLite: every call can
//! fail, and a failure may be transient (`StoreError::is_transient`: try
//! again later, nothing was written); nothing here assumes one writer
//! process, so an operation that must not race another replica (consuming
//! an authorization `state`, taking over a host's renewal duty) is one
//! call that the backend makes atomic. Each call is one transaction: it
//! happens entirely or not at all.
//!
//! Sealing is the backend's job: secrets and tokens go in and come out
//! clear, and are stored sealed, bound to their tenant and field, so a row
//! copied onto another tenant or column does not open.
//!
//! The backend-neutral conformance suite (`conformance/`, test-only) is the
//! executable form of these rules; every backend runs it.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use super::events::{EventPage, EventSettings, OutboxEntry};
use super::feed::ChangeFeed;
use super::flow::{Flow, FlowCompletion, FlowKey, FlowUpdate};
use super::records::{
    AuditEntry, AuditQuery, BackupInfo, CacheLoad, CachedTenant, CredentialFault, DueJob, HostLoad,
    KeyCheck, Lease, LeaseClaim, NewAuditEvent, NewClientRow, NewTenant, QueueStats, ReadyJobs,
    RefreshRecord, SlotGrant, SlotRequest, TenantChanges, TokenHealth, WriteFence,
};
use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::clients::{ClientInfo, KeyHash};
use crate::domain::{AppCredentials, PbxUser, Tenant, TenantId, TenantState};

/// Tenants: their clear fields, state and the credentials written with
/// them.
#[async_trait]
pub trait TenantRepo: Send + Sync {
    /// Inserts the tenant with its credentials, first token and job, all or
    /// nothing. `TenantExists` if the id is taken.
    async fn insert_tenant(&self, t: NewTenant) -> Result<(), StoreError>;

    /// Inserts many tenants in one transaction (bulk import, load tests):
    /// all or nothing, `TenantExists` names the first duplicate.
    async fn insert_tenants(&self, ts: Vec<NewTenant>) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: &TenantId) -> Result<Option<Tenant>, StoreError>;

    /// Tenants ordered by id, strictly after `after`, optionally one state.
    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
        state: Option<TenantState>,
    ) -> Result<Vec<Tenant>, StoreError>;

    /// Applies `changes` in one transaction and returns the tenant as
    /// stored. A new base URL also moves the renewal job to the new host.
    /// With both `renew_at` and `clear_job`, the job is removed. A new
    /// `token` also sets last_refresh_at to its issued_at; `clear_failures`
    /// also resets the job's attempt counter. updated_at = `now`.
    /// `TenantNotFound` if missing.
    async fn update_tenant(
        &self,
        id: &TenantId,
        changes: TenantChanges,
        now: UnixMs,
    ) -> Result<Tenant, StoreError>;

    /// Deletes the tenant, its credentials, token, job and flow (bytes
    /// overwritten where the backend can), recording a DELETED event at
    /// `now`. `TenantNotFound` if missing.
    async fn delete_tenant(&self, id: &TenantId, now: UnixMs) -> Result<(), StoreError>;

    /// Records the PBX user the trusted app acts for. `TenantNotFound` if
    /// missing. Leaves updated_at alone (this is observed, not edited).
    async fn set_pbx_user(&self, id: &TenantId, user: &PbxUser) -> Result<(), StoreError>;
}

/// The apps' credentials, sealed with the values that decide where their
/// secret may be sent (base URL, client id, redirect URI).
#[async_trait]
pub trait CredentialRepo: Send + Sync {
    /// Every tenant whose stored credentials cannot be used (unreadable, or
    /// bound to other values than the clear columns hold).
    async fn credential_faults(&self) -> Result<Vec<CredentialFault>, StoreError>;

    /// `Ok` if the tenant's stored credentials open and match its columns;
    /// otherwise the fault (`CredentialUnreadable` / `CredentialTampered`).
    async fn verify_credentials(&self, id: &TenantId) -> Result<(), StoreError>;

    /// Marks a tenant whose credentials cannot be used: state
    /// CREDENTIALS_REJECTED (a DISABLED or PENDING_AUTHORIZATION tenant
    /// keeps its state), last_error `message`, job due at `retry_at`.
    async fn record_credential_fault(
        &self,
        id: &TenantId,
        message: String,
        retry_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError>;

    /// The trusted app, checked against the tenant's columns. `None` for a
    /// tenant without one, or no such tenant.
    async fn trusted_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<AppCredentials>, StoreError>;

    /// The public app and its redirect URI, checked likewise (`None` as
    /// above).
    async fn public_credentials(
        &self,
        id: &TenantId,
    ) -> Result<Option<(AppCredentials, String)>, StoreError>;
}

/// Held tokens and refresh outcomes.
#[async_trait]
pub trait TokenRepo: Send + Sync {
    /// Every tenant with its current token, for the broker's cache; a
    /// stored token that does not open is left out and named in
    /// `dropped_tokens` (a warning, never a reason to refuse the load).
    async fn load_cache_checked(&self) -> Result<CacheLoad, StoreError>;

    /// As [`TokenRepo::load_cache_checked`], the tenants only.
    async fn load_cache(&self) -> Result<Vec<CachedTenant>, StoreError> {
        Ok(self.load_cache_checked().await?.tenants)
    }

    /// Success: token stored, state ACTIVE, failures reset, last_refresh_at
    /// = token.issued_at, job due at renew_at. Failure: state set,
    /// consecutive_failures + 1, last_error set, job due at retry_at.
    /// Returns consecutive_failures after the update.
    ///
    /// A tenant that was DISABLED or put back to PENDING_AUTHORIZATION
    /// while the refresh ran keeps that state (an operator's decision is
    /// not undone by a renewal that was already in flight).
    /// `TenantNotFound` if it was deleted meanwhile. Concurrent calls may
    /// be committed together (group commit); each is all or nothing.
    async fn record_refresh(
        &self,
        id: &TenantId,
        record: RefreshRecord,
        now: UnixMs,
    ) -> Result<u32, StoreError> {
        self.record_refresh_fenced(id, record, WriteFence::None, now)
            .await
    }

    /// [`TokenRepo::record_refresh`], applied only if `fence` still holds
    /// in the same transaction (see [`WriteFence`]); otherwise `Fenced` and
    /// nothing is written (the failure counters and the job included).
    async fn record_refresh_fenced(
        &self,
        id: &TenantId,
        record: RefreshRecord,
        fence: WriteFence,
        now: UnixMs,
    ) -> Result<u32, StoreError>;
}

/// The renewal queue: one job per renewing tenant, due at a time.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Jobs due at or before `now`, earliest first (ties by host, then
    /// tenant id), of tenants whose state renews.
    async fn due_jobs(&self, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError>;

    /// The scheduler's pass: up to `limit` due jobs of renewing tenants,
    /// earliest first, of hosts not in `skip_hosts`, and when the next job
    /// of those hosts falls due.
    async fn ready_jobs(
        &self,
        now: UnixMs,
        skip_hosts: Vec<String>,
        limit: u32,
    ) -> Result<ReadyJobs, StoreError>;

    /// Moves one job (creating it if absent). `TenantNotFound` if missing.
    async fn reschedule(&self, id: &TenantId, due_at: UnixMs) -> Result<(), StoreError>;

    /// Moves many jobs in one transaction (spreading overdue renewals).
    /// Tenants deleted meanwhile are skipped.
    async fn reschedule_many(&self, jobs: Vec<(TenantId, UnixMs)>) -> Result<(), StoreError>;
}

/// Renewal duty per PBX host, held by one replica at a time: a lease with
/// an epoch that grows with every change of holder, so a write made under
/// an old epoch can be told apart from a current one.
#[async_trait]
pub trait LeaseTable: Send + Sync {
    /// Takes or renews `host`'s lease for `holder` for `ttl_ms`. Granted
    /// when the lease is free, expired, or already `holder`'s (a renewal
    /// keeps the epoch; a new holder, or the same one after its lease
    /// expired or was released, gets the next epoch); otherwise
    /// refused with the current holder's lease. `now` is the caller's
    /// clock; a networked backend uses the database's clock instead, so
    /// replicas' clocks need not agree.
    async fn claim_lease(
        &self,
        host: &str,
        holder: &str,
        ttl_ms: i64,
        now: UnixMs,
    ) -> Result<LeaseClaim, StoreError>;

    /// Gives the lease up at once if `holder` still holds it at `epoch`
    /// (another replica may take it without waiting for the expiry).
    async fn release_lease(&self, host: &str, holder: &str, epoch: i64) -> Result<(), StoreError>;

    /// Every lease, expired ones included, ordered by host.
    async fn leases(&self) -> Result<Vec<Lease>, StoreError>;
}

/// The per-host PBX request budget shared by every replica (several
/// replicas on PostgreSQL): a sliding window of request starts, in-flight
/// slots with an expiry and the host's 429 reset time, each taken or set
/// atomically on the database's clock. One SQLite node keeps its budget in
/// memory (`pbx::limiter`) and answers `Unsupported`.
#[async_trait]
pub trait HostBudget: Send + Sync {
    /// Takes one request slot if the window, the concurrency and the
    /// host's throttle allow it, all in one transaction.
    async fn take_host_slot(&self, req: SlotRequest) -> Result<SlotGrant, StoreError>;

    /// The request is over: its slot is free at once.
    async fn release_host_slot(&self, slot: i64) -> Result<(), StoreError>;

    /// The host answered 429: no replica sends it anything for
    /// `retry_after_ms` (a shorter throttle never shortens a longer one).
    async fn throttle_host(&self, host: &str, retry_after_ms: i64) -> Result<(), StoreError>;
}

/// The authorization flow, one committed step at a time so it resumes
/// after a crash. The `state` is known only by its SHA-256.
#[async_trait]
pub trait FlowRepo: Send + Sync {
    /// Starts (or restarts) the tenant's flow at `Issued` with a new state.
    async fn begin_flow(
        &self,
        id: &TenantId,
        state_hash: [u8; 32],
        state_expires_at: UnixMs,
        now: UnixMs,
    ) -> Result<(), StoreError>;

    /// Claims the `state` (named by its hash, or by its tenant) for one code exchange, in ONE atomic statement
    /// (cluster-wide: two replicas completing the same state at once, one
    /// gets it): the flow if it is at `Issued`, unexpired at `now` and not
    /// claimed by another exchange until after `now`; the claim lasts until
    /// `until` (a crash lets it lapse). `None` otherwise (unknown, used,
    /// expired or being exchanged: `flow_by_state` says which). A
    /// retryable failure's `FlowUpdate::Error` releases the claim.
    async fn consume_state(
        &self,
        key: FlowKey,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Option<Flow>, StoreError>;

    /// Claims a flow that is in progress (after the code exchange, before
    /// the end) for one resumption, in ONE atomic statement: `true` if it
    /// was unclaimed or its claim lapsed at `now` (it then lasts until
    /// `until`), `false` if another call (on any replica) holds it. With
    /// several replicas, only the holder drives the flow on, so a flow is
    /// never resumed twice at once (two apps created).
    async fn claim_flow(
        &self,
        id: &TenantId,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError>;

    /// The flow a `state` belongs to, if any (consumed or not).
    async fn flow_by_state(&self, state_hash: [u8; 32]) -> Result<Option<Flow>, StoreError>;

    async fn flow_of(&self, id: &TenantId) -> Result<Option<Flow>, StoreError>;

    /// Tenants whose flow stopped part-way (a step after the code exchange
    /// and before the end), oldest first: resumed at start-up.
    async fn interrupted_flows(&self) -> Result<Vec<TenantId>, StoreError>;

    /// Commits one step's outcome. An error carried by the update is also
    /// written to the tenant's last_error.
    async fn advance_flow(
        &self,
        id: &TenantId,
        update: FlowUpdate,
        now: UnixMs,
    ) -> Result<(), StoreError>;

    /// Ends the flow as failed with `error`, wiping its secrets; returns the
    /// message stored.
    async fn discard_flow(
        &self,
        id: &TenantId,
        error: String,
        now: UnixMs,
    ) -> Result<String, StoreError>;

    /// Step 6: puts the new app, token and user on the tenant and marks the
    /// flow completed, in one transaction. Returns the tenant as stored.
    async fn complete_flow(
        &self,
        id: &TenantId,
        completion: FlowCompletion,
        now: UnixMs,
    ) -> Result<Tenant, StoreError>;
}

/// The life of a flow's claim (taken by `FlowRepo::consume_state` or
/// `FlowRepo::claim_flow`) while its holder works on the flow.
#[async_trait]
pub trait FlowClaims: Send + Sync {
    /// Moves the claim its caller holds on `id`'s flow, the one that lasts
    /// until `held` (the value it was given: a claim's end is its identity),
    /// to `until`, in one statement. `false` if the caller does not hold it
    /// any more (it lapsed and another call took the flow, or the flow
    /// ended): the caller should stop driving it.
    async fn extend_flow_claim(
        &self,
        id: &TenantId,
        held: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError>;

    /// Ends every claim; returns how many there were. Only for one process
    /// starting on its own database (SQLite): a claim left by a crash of an
    /// earlier run holds nothing any more and must not hold up a retry.
    async fn clear_flow_claims(&self) -> Result<u64, StoreError>;
}

/// API clients: their role, patterns and the SHA-256 of their key.
#[async_trait]
pub trait ClientRepo: Send + Sync {
    async fn insert_client(&self, row: NewClientRow) -> Result<(), StoreError>;

    /// Every client, revoked ones included.
    async fn list_clients(&self) -> Result<Vec<ClientInfo>, StoreError>;

    /// Unrevoked clients with their key hash; reflects every create and
    /// revoke that returned before the call.
    async fn active_client_keys(&self) -> Result<Vec<(KeyHash, ClientInfo)>, StoreError>;

    /// Revokes the client; `None` if it does not exist. Revoking twice
    /// keeps the first time.
    async fn revoke_client(
        &self,
        client_id: &str,
        now: UnixMs,
    ) -> Result<Option<ClientInfo>, StoreError>;

    async fn has_active_admin(&self) -> Result<bool, StoreError>;

    /// Inserts `row` (an admin) only if no unrevoked admin exists, as one
    /// atomic step cluster-wide; `true` if inserted. Replicas starting
    /// together on an empty database bootstrap exactly one admin.
    async fn insert_first_admin(&self, row: NewClientRow) -> Result<bool, StoreError>;
}

/// The append-only audit log, paged newest first by id.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends the event; returns its id (ids grow).
    async fn insert_audit(&self, event: NewAuditEvent) -> Result<i64, StoreError>;

    async fn list_audit(&self, q: AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Tenant events and the webhook outbox. Events are not written through
/// this trait: every change of the other traits writes its own events in
/// its own transaction (insert -> CREATED; update -> UPDATED, plus
/// STATE_CHANGED when the state differs; delete -> DELETED; a refresh
/// outcome, credential fault, failed or discarded flow that changes the
/// state -> STATE_CHANGED; a completed flow -> AUTHORIZATION_COMPLETED,
/// plus STATE_CHANGED when the state differs). Nothing changed, no event:
/// a renewal of an ACTIVE tenant that stays ACTIVE writes none. With
/// [`EventSettings::outbox`] each event also gets an outbox row in that
/// transaction.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// How events are written from now on (this handle only).
    fn set_event_settings(&self, settings: EventSettings);

    /// Wakes when this handle committed an event: the value is the highest
    /// event id it committed (a hint; readers re-read `events_after`).
    /// Events committed by another handle (replica) do not wake it.
    fn subscribe_events(&self) -> tokio::sync::watch::Receiver<i64>;

    /// Up to `limit` events with an id above `after`, ascending, and how
    /// far retention has pruned.
    async fn events_after(&self, after: i64, limit: u32) -> Result<EventPage, StoreError>;

    /// The highest event id committed (0 if none ever was).
    async fn latest_event_id(&self) -> Result<i64, StoreError>;

    /// Deletes events older than `older_than`, except those still in the
    /// outbox; returns how many went.
    async fn prune_events(&self, older_than: UnixMs) -> Result<u64, StoreError>;

    /// Outbox entries due at `now`, oldest event first, at most one per
    /// tenant (its oldest), so a tenant's events go out in order.
    async fn outbox_due(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError>;

    /// The event was delivered: its outbox row goes (no error if gone).
    async fn outbox_delivered(&self, event_id: i64) -> Result<(), StoreError>;

    /// A delivery failed: attempts + 1, retry at `next_attempt_at`.
    async fn outbox_failed(
        &self,
        event_id: i64,
        next_attempt_at: UnixMs,
        error: String,
    ) -> Result<(), StoreError>;

    /// Outbox rows waiting.
    async fn outbox_depth(&self) -> Result<u64, StoreError>;
}

/// Figures for operators (metrics, `GetServerStatus`), read-only.
#[async_trait]
pub trait StoreStats: Send + Sync {
    /// Per host (ordered by host): renewing tenants, how many hold a token
    /// and the sum of those tokens' lifetimes.
    async fn host_loads(&self) -> Result<Vec<HostLoad>, StoreError>;

    /// The hosts of [`StoreStats::host_loads`] (those with renewing
    /// tenants), ordered, without the per-host sums: what the renewal duty
    /// reads every round. A backend answers it from an index when it can.
    async fn renewing_hosts(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .host_loads()
            .await?
            .into_iter()
            .filter(|l| l.renewing_tenants > 0)
            .map(|l| l.host)
            .collect())
    }

    /// Tenant count for every state (zero included), in `TenantState::ALL`
    /// order.
    async fn count_by_state(&self) -> Result<Vec<(TenantState, u64)>, StoreError>;

    /// Token expiry standing at `now`. `window` is the share of a token's
    /// lifetime after its planned renewal point.
    async fn token_health(&self, now: UnixMs, window: f64) -> Result<TokenHealth, StoreError>;

    /// Due and overdue (more than `grace_ms` late) jobs at `now`.
    async fn queue_stats(&self, now: UnixMs, grace_ms: i64) -> Result<QueueStats, StoreError>;
}

/// Opening checks, liveness and housekeeping.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// "sqlite" or "postgres": what `GetServerStatus` reports.
    fn backend_name(&self) -> &'static str;

    /// Checks that the configured master key is the one the data was
    /// sealed with (writing the check value into a new database).
    /// `WrongMasterKey` otherwise; nothing is changed then.
    async fn check_master_key(&self) -> Result<KeyCheck, StoreError>;

    /// Records that this process is alive at `now`.
    async fn heartbeat(&self, now: UnixMs) -> Result<(), StoreError>;

    /// Periodic housekeeping of the write-ahead log (SQLite: a TRUNCATE
    /// checkpoint, so no old page image of a deleted row stays in it). A
    /// backend with nothing to do returns `Ok`.
    async fn wal_checkpoint(&self) -> Result<(), StoreError>;

    /// Periodic refresh of the query planner's statistics.
    async fn optimize(&self) -> Result<(), StoreError>;

    /// A consistent snapshot into `dir`, keeping the newest `keep`.
    /// `Unsupported` on a backend whose backups are the database's own.
    async fn backup_into(
        &self,
        dir: &Path,
        now: UnixMs,
        keep: u32,
    ) -> Result<BackupInfo, StoreError>;

    /// Flushes and closes; later calls fail.
    async fn close(&self) -> Result<(), StoreError>;
}

/// Everything a backend provides. Implemented for every type that
/// implements the parts.
pub trait Storage:
    TenantRepo
    + CredentialRepo
    + TokenRepo
    + JobQueue
    + LeaseTable
    + HostBudget
    + FlowRepo
    + FlowClaims
    + ClientRepo
    + AuditLog
    + EventLog
    + StoreStats
    + Lifecycle
    + ChangeFeed
{
}

impl<T> Storage for T where
    T: TenantRepo
        + CredentialRepo
        + TokenRepo
        + JobQueue
        + LeaseTable
        + HostBudget
        + FlowRepo
        + FlowClaims
        + ClientRepo
        + AuditLog
        + EventLog
        + StoreStats
        + Lifecycle
        + ChangeFeed
{
}

/// Handle to the storage backend; cheap to clone (all clones share the
/// backend). Dereferences to [`Storage`], so `store.get_tenant(..)` works
/// without naming a trait.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Storage>,
}

impl Store {
    /// Wraps a backend.
    pub fn new(backend: impl Storage + 'static) -> Store {
        Store {
            backend: Arc::new(backend),
        }
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Storage;

    fn deref(&self) -> &Self::Target {
        &*self.backend
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.backend_name())
            .finish_non_exhaustive()
    }
}
