//! One tenant's place in the cache: its current token, its state, the end
//! signal of its streams (disabled, deleted: see `watch.rs`), both with a
//! change channel made once someone watches (`lazy_watch.rs`), and the
//! fetch lock that makes refreshes single-flight.
//!
//! Why std locks here: they guard a few fields for nanoseconds and are never
//! held across `.await`; the fetch lock is a tokio mutex because it is held
//! for the whole PBX round trip.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::lazy_watch::LazyWatch;
use super::watch::WatchEnd;
use super::TokenError;
use crate::clock::UnixMs;
use crate::domain::{AccessToken, PbxBaseUrl, TenantId, TenantState};
use crate::store::CachedTenant;

#[derive(Debug)]
struct Meta {
    base_url: PbxBaseUrl,
    state: TenantState,
    failures: u32,
    last_error: Option<String>,
    /// No on-demand fetch before this time (after a failed one).
    cooldown_until: Option<UnixMs>,
    /// When a ReportRejectedToken last forced a refresh (rate limit).
    last_report_refresh: Option<UnixMs>,
    /// Why the stored credentials cannot be used (they do not open, or are
    /// bound to another base URL or client id); callers get this message.
    credential_fault: Option<String>,
    /// What the store could not write (full disk); see [`Unstored`].
    storage: Option<Unstored>,
}

/// A tenant whose last outcome the store could not write. A token is a
/// cache: it is served from memory meanwhile, and the next commit that
/// works writes it. The job row is stale too, so its real due time is kept
/// here for the scheduler.
#[derive(Debug, Clone)]
pub struct Unstored {
    /// The fetched token and its planned renewal, if the lost write was a
    /// success (a lost failure leaves nothing to write later).
    pub token: Option<(Arc<AccessToken>, UnixMs)>,
    /// The store's error, for the operator.
    pub error: String,
    /// Failed writes in a row (the retry backoff grows with them).
    pub failures: u32,
    /// When the scheduler runs the job again (a retry of the write, or the
    /// renewal itself, whichever comes first).
    pub due: UnixMs,
}

#[derive(Debug)]
pub struct Slot {
    id: TenantId,
    meta: Mutex<Meta>,
    token: LazyWatch<Option<Arc<AccessToken>>>,
    /// Why the tenant's streams must end (`None` while they may run).
    end: LazyWatch<Option<WatchEnd>>,
    fetch: tokio::sync::Mutex<()>,
    /// A token request of this tenant our side gave up on may be open at
    /// the provider until then (broker/abandoned/mod.rs).
    provider_busy: Mutex<Option<tokio::time::Instant>>,
    /// When a caller last asked for the token (Unix ms; 0: not since the
    /// slot was made). Written on the GetToken path, so a relaxed atomic,
    /// at most once a second (see `mark_asked`). Not persisted.
    last_asked: AtomicI64,
    /// WatchToken streams open now.
    streams: AtomicU32,
    /// The scheduler left this tenant's due renewal for later: it was idle
    /// while its host's budget was short (`broker/activity/mod.rs`).
    parked: AtomicBool,
}

/// `last_asked` is kept to this resolution: a tenant asked thousands of
/// times a second writes the shared cache line once a second, not on every
/// call (idleness is measured in minutes).
const ASKED_RESOLUTION_MS: i64 = 1000;

/// What a caller is told when a tenant in `state` hands out no tokens.
fn not_servable_hint(state: TenantState) -> Option<&'static str> {
    match state {
        TenantState::PendingAuthorization => Some(
            "it has no token until the PBX user allows access: run BeginAuthorization and CompleteAuthorization",
        ),
        TenantState::Disabled => {
            Some("it was disabled by an operator; enable it with UpdateTenant(enabled=true)")
        }
        _ => None,
    }
}

/// The NOT_SERVABLE error for `state`, if the state hands out no tokens.
pub(super) fn not_servable_error(tenant: &str, state: TenantState) -> Option<TokenError> {
    not_servable_hint(state).map(|hint| TokenError::NotServable {
        tenant: tenant.to_owned(),
        state,
        hint,
    })
}

fn end_for(state: TenantState) -> Option<WatchEnd> {
    not_servable_hint(state).map(|_| WatchEnd::NotServable(state))
}

impl Slot {
    pub fn from_cached(t: CachedTenant) -> Self {
        let token = LazyWatch::new(t.token.map(Arc::new));
        let end = LazyWatch::new(end_for(t.state));
        Self {
            id: t.id,
            meta: Mutex::new(Meta {
                base_url: t.base_url,
                state: t.state,
                failures: 0,
                last_error: None,
                cooldown_until: None,
                last_report_refresh: None,
                storage: None,
                credential_fault: None,
            }),
            token,
            end,
            fetch: tokio::sync::Mutex::new(()),
            provider_busy: Mutex::new(None),
            last_asked: AtomicI64::new(0),
            streams: AtomicU32::new(0),
            parked: AtomicBool::new(false),
        }
    }

    /// Replaces everything but the identity and the watchers.
    pub fn reset(&self, t: CachedTenant) {
        {
            let mut m = self.meta();
            m.base_url = t.base_url;
            m.state = t.state;
            m.failures = 0;
            m.last_error = None;
            m.cooldown_until = None;
            // The store just wrote this tenant: what it holds is the truth.
            m.storage = None;
            m.credential_fault = None;
        }
        self.set_end(end_for(t.state));
        if let Some(token) = t.token {
            self.token.replace(Some(Arc::new(token)));
        }
    }

    /// Tells the streams (only when the reason changes: a no-op update of
    /// an ACTIVE tenant wakes nobody).
    fn set_end(&self, end: Option<WatchEnd>) {
        self.end.replace_if(end, |current, end| current != end);
    }

    /// The tenant is gone: its streams end with NOT_FOUND.
    pub fn mark_deleted(&self) {
        self.set_end(Some(WatchEnd::Deleted));
    }

    pub fn subscribe_end(&self) -> watch::Receiver<Option<WatchEnd>> {
        self.end.subscribe()
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        // Poisoning would need a panic inside a few field assignments.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &TenantId {
        &self.id
    }

    pub fn state(&self) -> TenantState {
        self.meta().state
    }

    pub fn set_state(&self, state: TenantState) {
        self.meta().state = state;
        self.set_end(end_for(state));
    }

    pub fn set_base_url(&self, url: PbxBaseUrl) {
        self.meta().base_url = url;
    }

    /// A newer token stored by another replica: watchers are told; state
    /// and failures are the database's business (set apart).
    pub fn replace_token(&self, token: Arc<AccessToken>) {
        self.token.replace(Some(token));
    }

    pub fn base_url(&self) -> PbxBaseUrl {
        self.meta().base_url.clone()
    }

    pub fn failures(&self) -> u32 {
        self.meta().failures
    }

    pub fn last_error(&self) -> Option<String> {
        self.meta().last_error.clone()
    }

    pub fn token(&self) -> Option<Arc<AccessToken>> {
        self.token.get()
    }

    /// For the activity scan over every slot (`activity/mod.rs`): `f` of
    /// the host when the tenant renews, read under one lock without
    /// copying the URL. The scan runs on a runtime worker every 5 s, in
    /// the way of GetToken calls queued there; copying the URL and the
    /// host cost two allocations per tenant (605 instructions per tenant
    /// and scan under callgrind, 267 without them: docs/BENCHMARKS.md).
    pub fn with_renewing_host<R>(&self, f: impl FnOnce(&str) -> R) -> Option<R> {
        let meta = self.meta();
        meta.state.is_renewing().then(|| f(meta.base_url.host()))
    }

    /// The held token's lifetime, without cloning the token's `Arc`.
    pub fn token_lifetime_ms(&self) -> Option<i64> {
        self.token.with(|t| t.as_ref().map(|t| t.lifetime_ms()))
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<AccessToken>>> {
        self.token.subscribe()
    }

    /// The held token, if the tenant may be served and the token is valid
    /// for `min_valid_ms` more.
    pub fn servable_token(&self, now: UnixMs, min_valid_ms: i64) -> Option<Arc<AccessToken>> {
        if !self.state().is_renewing() {
            return None;
        }
        self.token.with(|t| match t.as_ref() {
            Some(t) if t.valid_for(now, min_valid_ms) => Some(t.clone()),
            _ => None,
        })
    }

    /// Errors for states that never hand out tokens.
    pub fn check_servable_state(&self) -> Result<(), TokenError> {
        match not_servable_error(self.id.as_str(), self.state()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A forced refresh is allowed in every state that has credentials.
    pub fn check_has_credentials_state(&self) -> Result<(), TokenError> {
        match self.state() {
            TenantState::PendingAuthorization | TenantState::Disabled => {
                self.check_servable_state()
            }
            _ => Ok(()),
        }
    }

    /// See `provider_busy`; never shortens an earlier mark.
    pub fn provider_busy_until(&self, until: tokio::time::Instant) {
        let mut b = self.provider_busy.lock().unwrap_or_else(|p| p.into_inner());
        *b = Some(b.map_or(until, |old| old.max(until)));
    }

    /// Waits until no abandoned request of this tenant may be open at the
    /// provider (called under the fetch lock, before a new request).
    pub async fn wait_provider_done(&self) {
        let until = *self.provider_busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    pub async fn fetch_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.fetch.lock().await
    }

    pub fn on_demand_cooldown(&self, now: UnixMs) -> Option<UnixMs> {
        self.meta().cooldown_until.filter(|until| *until > now)
    }

    /// When the next report-forced refresh is allowed, if a report forced
    /// one less than `interval_ms` before `now` (`None`: allowed now). A
    /// mark later than `now` (the wall clock stepped back) does not count:
    /// it would otherwise hold reports off until the clock caught up.
    pub fn next_report_refresh(&self, now: UnixMs, interval_ms: i64) -> Option<UnixMs> {
        self.meta()
            .last_report_refresh
            .filter(|at| *at <= now)
            .map(|at| at.plus_ms(interval_ms))
            .filter(|next| now < *next)
    }

    /// When a report last forced a refresh (for the answer's message).
    pub fn last_report_refresh(&self) -> Option<UnixMs> {
        self.meta().last_report_refresh
    }

    pub fn mark_report_refresh(&self, at: UnixMs) {
        self.meta().last_report_refresh = Some(at);
    }

    pub fn start_cooldown(&self, until: UnixMs) {
        self.meta().cooldown_until = Some(until);
    }

    /// A new token: state ACTIVE, failures cleared, watchers told.
    pub fn publish(&self, token: Arc<AccessToken>) {
        {
            let mut m = self.meta();
            // An operator's DISABLED (set while this fetch was in flight)
            // stands, as it does in the store.
            if m.state.is_renewing() {
                m.state = TenantState::Active;
            }
            m.failures = 0;
            m.last_error = None;
            m.cooldown_until = None;
            m.credential_fault = None;
        }
        self.token.replace(Some(token));
    }

    /// What the store could not write, if anything.
    pub fn unstored(&self) -> Option<Unstored> {
        self.meta().storage.clone()
    }

    /// Replaces the storage record (None: everything is stored); returns the
    /// previous one. A new record without a token keeps the earlier token
    /// that is still waiting to be written.
    pub fn set_unstored(&self, new: Option<Unstored>) -> Option<Unstored> {
        let mut m = self.meta();
        let old = m.storage.take();
        m.storage = match (new, &old) {
            (Some(mut n), Some(o)) if n.token.is_none() => {
                n.token.clone_from(&o.token);
                Some(n)
            }
            (n, _) => n,
        };
        old
    }

    /// Sets the operator-facing error without counting a failure (a token
    /// fetched but not stored).
    pub fn set_last_error(&self, error: Option<String>) {
        self.meta().last_error = error;
    }

    /// The stored credentials cannot be used: CREDENTIALS_REJECTED (if the
    /// state renews) with `reason` for callers, until new credentials or a
    /// token arrive.
    pub fn record_credential_fault(&self, reason: String) {
        self.record_failure(TenantState::CredentialsRejected, reason.clone());
        self.meta().credential_fault = Some(reason);
    }

    pub fn credential_fault(&self) -> Option<String> {
        self.meta().credential_fault.clone()
    }

    pub fn record_failure(&self, state: TenantState, error: String) {
        let mut m = self.meta();
        if m.state.is_renewing() {
            m.state = state;
        }
        m.failures = m.failures.saturating_add(1);
        m.last_error = Some(error);
    }
}

/// Busy or idle (see `broker/activity/mod.rs`): lock-free, read and written
/// with relaxed atomics.
impl Slot {
    /// A caller asked for the token at `now`; returns whether the tenant
    /// was parked (its renewal left for later), which this ask ends. A load
    /// and at most one store per second, no read-modify-write: this runs on
    /// every GetToken.
    pub fn mark_asked(&self, now: UnixMs) -> bool {
        if now.0 - self.last_asked.load(Ordering::Relaxed) >= ASKED_RESOLUTION_MS {
            self.last_asked.store(now.0, Ordering::Relaxed);
        }
        self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::Relaxed)
    }

    /// When a caller last asked (0: not since the slot was made).
    pub fn last_asked(&self) -> UnixMs {
        UnixMs(self.last_asked.load(Ordering::Relaxed))
    }

    pub fn open_streams(&self) -> u32 {
        self.streams.load(Ordering::Relaxed)
    }

    pub fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed(&self) {
        let _ = self
            .streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Relaxed);
    }

    /// Clears the mark; returns whether it was set.
    pub fn take_parked(&self) -> bool {
        self.parked.swap(false, Ordering::Relaxed)
    }

    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }
}
