//! The plain data the storage interface takes and returns: what is written
//! (new tenants, changes, refresh outcomes, audit events, API clients) and
//! what is read back (the cache load, due jobs, per-host load, operator
//! figures). No SQL and no I/O: every backend speaks these types.

use std::path::PathBuf;

use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::clients::{ClientInfo, KeyHash};
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};

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
    /// With `token`: the `expires_at` of the token stored when the call
    /// read the tenant, before it fetched (`None`: none was stored). See
    /// [`TenantChanges::check_token_swap`].
    pub replaces_token_expiring: Option<UnixMs>,
    /// Sets the renewal job's due time; with `clear_job` the job is removed.
    pub renew_at: Option<UnixMs>,
    pub clear_job: bool,
    /// Resets consecutive_failures and last_error.
    pub clear_failures: bool,
}

impl TenantChanges {
    /// UpdateTenant's token lands only if the stored token (`stored`, its
    /// `expires_at`) is still the one the call saw before it fetched: a
    /// renewal or another replica that stored one meanwhile, or this
    /// replica paused between its fetch and its write, must not be undone.
    /// Tokens are compared as stored values, never by which clock stamped
    /// them later, so no skew between replicas' clocks matters. `Fenced`
    /// otherwise; the backend then writes nothing of the change.
    pub fn check_token_swap(&self, tenant: &str, stored: Option<UnixMs>) -> Result<(), StoreError> {
        if self.token.is_none() || stored == self.replaces_token_expiring {
            return Ok(());
        }
        let show = |t: Option<UnixMs>| {
            t.map_or_else(|| "none".to_owned(), |t| format!("one expiring at {t}"))
        };
        Err(StoreError::Fenced {
            tenant: tenant.to_owned(),
            reason: format!(
                "the stored token changed while this call fetched its first token with the new credentials (it saw {}, the database now holds {}): a renewal or another replica stored one meanwhile; nothing was changed, call again",
                show(self.replaces_token_expiring),
                show(stored)
            ),
        })
    }
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

/// What a refresh outcome's write must still find in the database, checked
/// in the write's own transaction (`TokenRepo::record_refresh_fenced`): a
/// replica paused or cut off past its lease, or one that fetched on demand
/// while another replica renewed, must not overwrite a newer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFence {
    /// No check: one node (SQLite), the only writer there is.
    None,
    /// Renewal duty: `holder` still holds `host`'s lease at `epoch`, and
    /// `host` is still the tenant's host.
    Lease {
        host: String,
        holder: String,
        epoch: i64,
    },
    /// On demand: the stored token is still the one held before the fetch
    /// (by its `issued_at`; `None`: no token was stored).
    TokenIssuedAt(Option<UnixMs>),
}

/// One request's claim on a PBX host's budget shared by every replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotRequest {
    pub host: String,
    /// The replica asking (kept with the slot, for operators).
    pub holder: String,
    /// At most this many request starts in any `window_ms`.
    pub rps: u32,
    pub window_ms: i64,
    /// At most this many requests in flight at once.
    pub concurrent: u32,
    /// A slot not released by then is free again (its replica died).
    pub slot_ttl_ms: i64,
}

/// The answer to a [`SlotRequest`]. Waits are relative (ms from the
/// decision), so no replica's clock need agree with the database's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotGrant {
    /// Send the request; release `slot` when it is over.
    Granted { slot: i64 },
    /// The host answered 429; nothing for `wait_ms`.
    Throttled { wait_ms: i64 },
    /// The window has room again in `wait_ms`.
    RateLimited { wait_ms: i64 },
    /// Every concurrency slot is taken.
    Busy,
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

/// One event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    pub at: UnixMs,
    pub client_id: String,
    pub action: String,
    pub tenant_id: Option<String>,
    pub outcome: String,
    pub detail: String,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub event: NewAuditEvent,
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only events with an id below this (the previous page's last id).
    pub before_id: Option<i64>,
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub limit: u32,
}

/// A client to insert: its listing fields and its key's hash.
#[derive(Debug, Clone)]
pub struct NewClientRow {
    pub info: ClientInfo,
    pub key_hash: KeyHash,
}

/// Held tokens of renewing tenants (ACTIVE, RENEWAL_FAILING,
/// CREDENTIALS_REJECTED), against the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenHealth {
    /// Renewing tenants.
    pub renewing: u64,
    /// Of those, how many hold a token.
    pub with_token: u64,
    /// Held tokens already expired.
    pub expired: u64,
    /// Held tokens not yet expired with less than `window` of their
    /// lifetime left: their renewal is due or late.
    pub in_renewal_window: u64,
}

/// The renewal queue, against the clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs of renewing tenants that are due now.
    pub due: u64,
    /// Of those, due for longer than the grace.
    pub overdue: u64,
    /// Due time of the oldest due job.
    pub oldest_due_at: Option<UnixMs>,
}

/// What `check_master_key` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCheck {
    /// The check value opened.
    Verified,
    /// No check value yet (new database, or one from before it existed);
    /// existing sealed values opened, and the check value was written.
    Initialized,
    /// The check value opened and was from before schema 6: this many
    /// credentials were re-sealed bound to their columns, in the same
    /// transaction that wrote the new check value.
    Upgraded { credentials: u64 },
}

/// What a finished backup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub path: PathBuf,
    pub bytes: u64,
    /// Older backups removed to keep the configured number.
    pub pruned: Vec<PathBuf>,
}

/// One PBX host's renewal duty as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub host: String,
    /// The replica holding it.
    pub holder: String,
    /// Grows by one at every change of holder, never reused.
    pub epoch: i64,
    /// On the backend's clock.
    pub expires_at: UnixMs,
}

/// What `LeaseTable::claim_lease` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseClaim {
    /// The caller holds the lease until `expires_at`.
    Granted(Lease),
    /// Another holder's lease has not expired.
    Refused(Lease),
}
