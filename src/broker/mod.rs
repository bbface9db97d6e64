//! The broker: every tenant's current token in memory, refreshed
//! single-flight, watched by streams. `GetToken` is answered here from
//! memory, without SQLite or the network, while a valid token is held.
//!
//! A refresh (on-demand, forced, reported-rejected or scheduled) always runs
//! under the tenant's fetch lock, calls the PBX through the per-host limiter
//! ([`GatedPbx`], the one home of limited requests) and records the outcome
//! durably before the new token is published.
//!
//! Its store, clock and gated PBX client come in when it is built and stay
//! private: other components get their own handles from the engine, not
//! through the broker.
//!
//! Does not: decide *when* scheduled renewals run (renewal/), validate admin
//! input (tenants), take limiter slots (pbx::gated), or know protobuf (api/).

mod abandoned;
mod activity;
pub mod catch_up;
mod jitter;
mod lazy_watch;
mod min_valid;
mod record;
mod remote;
#[cfg(test)]
mod remote_tests;
mod report;
mod scheduling;
mod slot;
mod startup;
pub mod unstored;
mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::clock::{SharedClock, UnixMs};
use crate::config::Config;
use crate::domain::{AccessToken, TenantId, TenantState, ValidationError};
use crate::metrics::{FetchStage, Metrics};
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::Lane;
use crate::pbx::TokenGrant;
use crate::policy::RenewalPolicy;
use crate::store::{CachedTenant, Store, StoreError, WriteFence};

pub use activity::{HostActivity, OpenStream};
pub use jitter::Jitter;
pub use scheduling::{DutyFence, RequestTurn, Scheduling};
pub use slot::Slot;
pub use watch::{TokenWatch, WatchEnd};

/// Why a token could not be handed out.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("tenant {0} is not registered; create it with AdminService.CreateTenant")]
    NotFound(String),
    #[error("tenant {0} was deleted; its credentials and tokens are gone (register it again with AdminService.CreateTenant)")]
    Deleted(String),
    #[error("tenant {tenant} is {state}: {hint}")]
    NotServable {
        tenant: String,
        state: TenantState,
        hint: &'static str,
    },
    /// The stored credentials do not open or are bound to other values
    /// (see `store::credentials`); `reason` says which and what to do.
    #[error("{reason}")]
    CredentialsUnusable { tenant: String, reason: String },
    #[error("no valid token for tenant {tenant}: {reason}")]
    Unavailable {
        tenant: String,
        reason: String,
        retry_at: Option<UnixMs>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// See `refresh`: a token younger than this is never replaced on demand.
const FRESH_ENOUGH_MS: i64 = 1000;

const REJECTED_HINT: &str =
    "the PBX rejected the trusted app credentials; set new ones with UpdateTenant or re-authorize";

/// Settings the broker reads on every refresh; replaced on SIGHUP.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub default_min_valid_ms: i64,
    pub default_lifetime_ms: i64,
    pub policy: RenewalPolicy,
    /// After a failed on-demand fetch, callers get the held token (or
    /// UNAVAILABLE) for this long before another on-demand attempt: a PBX
    /// outage must not turn every GetToken into a PBX request.
    pub on_demand_retry_ms: i64,
    /// At most one refresh forced by ReportRejectedToken per tenant in this
    /// interval; a report of the current token in between waits for the
    /// interval's end or is answered UNAVAILABLE (`report.rs`).
    pub report_rejected_interval_ms: i64,
    /// `[refresh] idle_after_seconds` in ms: busy or idle (activity/mod.rs).
    pub idle_after_ms: i64,
}

impl BrokerSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            default_min_valid_ms: i64::from(c.token.default_min_valid_seconds) * 1000,
            default_lifetime_ms: i64::try_from(c.token.default_lifetime_seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            policy: RenewalPolicy::from_config(&c.refresh),
            on_demand_retry_ms: 1000,
            report_rejected_interval_ms: i64::try_from(c.token.report_rejected_interval_ms)
                .unwrap_or(i64::MAX),
            idle_after_ms: i64::try_from(c.refresh.idle_after_seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        }
    }
}

/// Why a refresh is being made; it changes what "already fresh" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A caller needs `ms` of validity.
    MinValid(i64),
    /// Scheduled renewal: skip if an earlier fetch already renewed.
    Scheduled,
    /// Operator asked: always fetch.
    Forced,
}

pub struct Broker {
    clock: SharedClock,
    store: Store,
    /// Token requests through the per-host limiter; its grace for abandoned
    /// requests is also the tenant's (`abandoned/mod.rs`).
    pbx: Arc<GatedPbx>,
    settings: RwLock<Arc<BrokerSettings>>,
    /// Copy of `settings.default_min_valid_ms` for the GetToken hot path.
    default_min_valid_ms: AtomicI64,
    slots: RwLock<HashMap<TenantId, Arc<Slot>>>,
    /// Woken whenever a renewal job may have moved earlier.
    schedule_changed: Notify,
    metrics: Arc<Metrics>,
    /// Every random choice the broker makes (entropy unless the simulation
    /// seeds it with [`Broker::with_jitter`]).
    jitter: Jitter,
    /// Slots with an [`unstored::Unstored`] record, and those of them that
    /// hold a token only in memory (kept in step by `set_unstored`).
    unstored_tenants: AtomicI64,
    unstored_tokens: AtomicI64,
    /// Several replicas share the database: every token write is fenced
    /// (by the lease epoch, or on demand by the token held before the
    /// fetch). Off on one node (SQLite), where nothing else writes.
    fence_writes: bool,
    /// When this broker was built: every tenant counts as asked for then
    /// (busy-ness is not persisted; activity/mod.rs).
    started_at: UnixMs,
    /// Parked tenants asked for again, for the scheduler (activity/mod.rs).
    woken: Mutex<Vec<TenantId>>,
    /// A cache miss reads the database (several replicas share it;
    /// `remote.rs`).
    read_through: AtomicBool,
    /// Calls wait for the change feed after a long pause (`catch_up.rs`).
    catch_up: catch_up::CatchUp,
}

impl Broker {
    pub fn new(
        clock: SharedClock,
        store: Store,
        pbx: Arc<GatedPbx>,
        settings: BrokerSettings,
    ) -> Self {
        let started_at = clock.now();
        Self {
            clock,
            store,
            pbx,
            default_min_valid_ms: AtomicI64::new(settings.default_min_valid_ms),
            settings: RwLock::new(Arc::new(settings)),
            slots: RwLock::new(HashMap::new()),
            schedule_changed: Notify::new(),
            metrics: Arc::new(Metrics::new()),
            jitter: Jitter::entropy(),
            unstored_tenants: AtomicI64::new(0),
            unstored_tokens: AtomicI64::new(0),
            fence_writes: false,
            started_at,
            woken: Mutex::new(Vec::new()),
            read_through: AtomicBool::new(false),
            catch_up: catch_up::CatchUp::default(),
        }
    }

    /// Fences every token write (several replicas on one database).
    pub fn with_fenced_writes(mut self, on: bool) -> Self {
        self.fence_writes = on;
        self
    }

    /// Counts fetches (result, latency) into the daemon's registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the jitter source (the deterministic simulation seeds it).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// A uniform number in [0, 1) from the broker's jitter source.
    pub fn jitter(&self) -> f64 {
        self.jitter.next()
    }

    pub fn settings(&self) -> Arc<BrokerSettings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set_settings(&self, settings: BrokerSettings) {
        self.default_min_valid_ms
            .store(settings.default_min_valid_ms, Ordering::Relaxed);
        match self.settings.write() {
            Ok(mut s) => *s = Arc::new(settings),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(settings),
        }
    }

    pub fn schedule_changed(&self) -> &Notify {
        &self.schedule_changed
    }

    /// The cache's confirmed freshness against the change feed.
    pub fn catch_up(&self) -> &catch_up::CatchUp {
        &self.catch_up
    }

    pub fn tenant_count(&self) -> usize {
        self.slots_read().len()
    }

    // A poisoned map lock means a panic while inserting/removing an Arc;
    // the map itself is still consistent, so keep serving.
    fn slots_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn slots_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, tenant: &str) -> Result<Arc<Slot>, TokenError> {
        TenantId::validate(tenant)?;
        self.slots_read()
            .get(tenant)
            .cloned()
            .ok_or_else(|| TokenError::NotFound(tenant.to_owned()))
    }

    /// Registers (or replaces) a tenant in the cache after it was stored.
    pub fn upsert_slot(&self, cached: CachedTenant) {
        let mut slots = self.slots_write();
        match slots.get(&cached.id) {
            Some(existing) => {
                // The store just wrote the tenant: nothing is pending.
                self.set_unstored(existing, None);
                existing.reset(cached)
            }
            None => {
                let slot = Slot::from_cached(cached);
                // A tenant just registered is about to be used: busy.
                slot.mark_asked(self.clock.now());
                slots.insert(slot.id().clone(), Arc::new(slot));
            }
        }
        drop(slots);
        self.schedule_changed.notify_one();
    }

    /// Runs `f` holding the tenant's fetch lock (if it is cached), so no
    /// refresh with the old credentials is recorded between a credential
    /// swap's commit and its `upsert_slot` (re-authorization).
    pub async fn with_fetch_lock<T>(
        &self,
        id: &TenantId,
        f: impl std::future::Future<Output = T>,
    ) -> T {
        let slot = self.slots_read().get(id).cloned();
        match slot {
            Some(slot) => {
                let _flight = slot.fetch_lock().await;
                f.await
            }
            None => f.await,
        }
    }

    /// Whether the tenant is in the cache (the scheduler skips, for a
    /// while, jobs of tenants another replica created after this one
    /// loaded its cache).
    pub fn knows(&self, id: &TenantId) -> bool {
        self.slots_read().contains_key(id)
    }

    /// Forgets a tenant: its watchers' streams end (NOT_FOUND).
    pub fn remove_slot(&self, id: &TenantId) {
        let removed = self.slots_write().remove(id);
        if let Some(slot) = removed {
            self.set_unstored(&slot, None);
            slot.mark_deleted();
        }
    }

    /// Sets a tenant's state in the cache (after the store recorded it).
    pub fn set_state(&self, id: &TenantId, state: TenantState) {
        if let Some(slot) = self.slots_read().get(id) {
            slot.set_state(state);
        }
    }

    /// The hot path: the held token if it is valid for `min_valid_secs`
    /// (0 = configured default); otherwise one single-flight fetch.
    pub async fn get_token(
        &self,
        tenant: &str,
        min_valid_secs: u32,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot_or_load(tenant).await?;
        let min_valid_ms = self.min_valid_ms(min_valid_secs);
        let now = self.clock.now();
        let last_asked = slot.last_asked();
        self.note_asked(&slot, now);
        if let Some(token) = slot.servable_token(now, min_valid_ms) {
            return Ok(token);
        }
        // Busy or idle as it was before this call.
        let idle_after_ms = self.settings().idle_after_ms;
        let was_busy = self.busy_if_asked_at(&slot, last_asked, now, idle_after_ms);
        self.metrics.get_token_cache_miss(was_busy);
        // An ask no token can satisfy is refused, not fetched for (min_valid.rs).
        min_valid::check(slot.id(), min_valid_secs, slot.token().as_deref())?;
        let token = self
            .refresh(&slot, Need::MinValid(min_valid_ms), Scheduling::default())
            .await?;
        min_valid::check(slot.id(), min_valid_secs, Some(&token))?;
        Ok(token)
    }

    /// Operator-forced refresh.
    pub async fn force_refresh(&self, tenant: &str) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot_or_load(tenant).await?;
        self.refresh(&slot, Need::Forced, Scheduling::default())
            .await
    }

    /// A scheduled renewal (renewal worker). Errors are recorded on the
    /// tenant; the result only says whether a PBX request was made.
    pub async fn renew_scheduled(&self, tenant: &TenantId) -> Result<(), TokenError> {
        self.renew_on_duty(tenant, Scheduling::default()).await
    }

    /// A scheduled renewal under the host's lease (`duty`: see
    /// [`DutyFence`]; `None` on one node), giving back its `turn` when
    /// the PBX request is over.
    pub async fn renew_on_duty(
        &self,
        tenant: &TenantId,
        scheduling: Scheduling,
    ) -> Result<(), TokenError> {
        let slot = match self.slot(tenant.as_str()) {
            Ok(s) => s,
            // Deleted since the job was read.
            Err(TokenError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.refresh(&slot, Need::Scheduled, scheduling)
            .await
            .map(|_| ())
    }

    /// The current token and every new one, and the signal that ends
    /// the stream (tenant disabled or deleted).
    pub fn watch(&self, tenant: &str) -> Result<TokenWatch, TokenError> {
        let slot = self.slot(tenant)?;
        slot.check_servable_state()?;
        self.note_asked(&slot, self.clock.now());
        Ok(TokenWatch {
            tokens: slot.subscribe(),
            end: slot.subscribe_end(),
            _open: OpenStream::new(slot),
        })
    }

    async fn refresh(
        &self,
        slot: &Arc<Slot>,
        need: Need,
        scheduling: Scheduling,
    ) -> Result<Arc<AccessToken>, TokenError> {
        if need != Need::Forced {
            slot.check_servable_state()?;
        } else {
            slot.check_has_credentials_state()?;
        }
        let seen = slot.token();
        let _flight = slot.fetch_lock().await;
        let now = self.clock.now();
        let settings = self.settings();
        let held = slot.token();
        // Single flight: whoever waited for a fetch takes its result, even if
        // it is short of `min_valid` (no fresher token can be had).
        if let Some(t) = &held {
            let replaced = seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, t));
            if replaced && t.valid_for(now, 0) && slot.state().is_renewing() {
                return Ok(t.clone());
            }
        }
        match need {
            Need::MinValid(ms) => {
                if let Some(t) = slot.servable_token(now, ms) {
                    return Ok(t);
                }
                // A token fetched a moment ago is as fresh as a new fetch would
                // make it: asking for more validity than any token has must not
                // turn every call into a PBX request.
                if let Some(t) = &held {
                    if now.0 - t.issued_at.0 < FRESH_ENOUGH_MS && slot.state().is_renewing() {
                        return Ok(t.clone());
                    }
                }
                // Credentials were rejected: retry only on the rare schedule,
                // never per caller.
                if slot.state() == TenantState::CredentialsRejected {
                    if let Some(e) = Self::credential_fault_error(slot) {
                        return held_or(held, now, || e);
                    }
                    return held_or(held, now, || TokenError::NotServable {
                        tenant: slot.id().to_string(),
                        state: TenantState::CredentialsRejected,
                        hint: REJECTED_HINT,
                    });
                }
                if let Some(until) = slot.on_demand_cooldown(now) {
                    return held_or(held, now, || TokenError::Unavailable {
                        tenant: slot.id().to_string(),
                        reason: format!(
                            "the last fetch failed ({}); retrying after {until}",
                            slot.last_error().unwrap_or_else(|| "unknown error".into())
                        ),
                        retry_at: Some(until),
                    });
                }
            }
            Need::Scheduled => {
                if let Some(t) = &held {
                    if now < settings.policy.earliest_renewal(t) {
                        // Renewed on demand since the job was planned (or
                        // fetched but not stored: write it now).
                        let at = settings.policy.renew_at(t, self.jitter());
                        self.store_schedule(slot, at, now).await?;
                        return Ok(t.clone());
                    }
                }
            }
            Need::Forced => {}
        }
        // Scheduled renewals stand aside in the limiter for requests a
        // caller waits for.
        let lane = match need {
            Need::Scheduled => Lane::Proactive,
            Need::MinValid(_) | Need::Forced => Lane::Demand,
        };
        match self.fetch_locked(slot, now, lane, scheduling).await {
            Ok(t) => Ok(t),
            Err(e) => {
                if let Need::MinValid(_) = need {
                    // The fetch may have waited (limiter queue, a PBX timeout):
                    // judge the held token at the time of answering, not at the
                    // time the fetch began (the simulation served an expired
                    // token that way).
                    let now = self.clock.now();
                    slot.start_cooldown(now.plus_ms(settings.on_demand_retry_ms));
                    // Serve gracefully: a token that has not expired beats an error.
                    if let Some(t) = held.filter(|t| t.valid_for(now, 0)) {
                        return Ok(t);
                    }
                }
                Err(e)
            }
        }
    }

    /// One PBX round trip; the caller holds the slot's fetch lock. Under
    /// a duty, nothing is sent once its time is up.
    async fn fetch_locked(
        &self,
        slot: &Arc<Slot>,
        now: UnixMs,
        lane: Lane,
        scheduling: Scheduling,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let Scheduling { duty, turn } = scheduling;
        if let Some(d) = &duty {
            if tokio::time::Instant::now() >= d.stop_at {
                return Err(TokenError::Unavailable {
                    tenant: slot.id().to_string(),
                    reason: "this replica's renewal duty for the PBX host is running out without a renewed lease; another replica may take it over".into(),
                    retry_at: None,
                });
            }
        }
        // Read before the fetch: the write must find the same token stored.
        let fence = match duty {
            Some(d) => d.fence,
            None if self.fence_writes => {
                WriteFence::TokenIssuedAt(slot.token().map(|t| t.issued_at))
            }
            None => WriteFence::None,
        };
        let reading = tokio::time::Instant::now();
        let creds = self.store.trusted_credentials(slot.id()).await;
        self.metrics
            .fetch_stage(FetchStage::Credentials, reading.elapsed());
        let creds = match creds {
            Ok(creds) => creds,
            Err(e) if e.is_credential_fault() => {
                let reason = e.to_string();
                self.record_credential_fault(slot, reason.clone()).await?;
                return Err(TokenError::CredentialsUnusable {
                    tenant: slot.id().to_string(),
                    reason,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let creds = creds.ok_or_else(|| TokenError::NotServable {
            tenant: slot.id().to_string(),
            state: slot.state(),
            hint: "it has no trusted app credentials yet; complete the authorization flow",
        })?;
        let base = slot.base_url();
        let grace = self.abandon_grace();
        // Single flight as the provider sees it: wait out a request of this
        // tenant our side gave up on, which may still be open there.
        slot.wait_provider_done().await;
        let mark = abandoned::TenantMark::new(slot, grace);
        let started = tokio::time::Instant::now();
        let outcome = self.pbx.client_credentials_in(&base, &creds, lane).await;
        drop(turn);
        mark.finish(abandoned::timed_out(&outcome, started.elapsed(), grace));
        self.record_outcome(slot, now, outcome, started.elapsed(), fence)
            .await
    }

    /// Turns a grant into the token we hold, applying the default lifetime.
    pub fn token_from_grant(&self, grant: TokenGrant, issued_at: UnixMs) -> AccessToken {
        let lifetime_ms = match grant.expires_in_secs {
            Some(s) => i64::try_from(s)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            None => self.settings().default_lifetime_ms,
        };
        AccessToken {
            value: grant.access_token,
            token_type: grant.token_type,
            issued_at,
            expires_at: issued_at.plus_ms(lifetime_ms),
        }
    }
}

fn held_or(
    held: Option<Arc<AccessToken>>,
    now: UnixMs,
    err: impl FnOnce() -> TokenError,
) -> Result<Arc<AccessToken>, TokenError> {
    match held {
        Some(t) if t.valid_for(now, 0) => Ok(t),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod fence_tests;
#[cfg(test)]
mod test_tenant;
#[cfg(test)]
mod tests;
