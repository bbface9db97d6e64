//! One tenant's place in the cache: its current token (a `watch` channel, so
//! readers and streams see every new token), its state, and the fetch lock
//! that makes refreshes single-flight.
//!
//! Why std locks here: they guard a few fields for nanoseconds and are never
//! held across `.await`; the fetch lock is a tokio mutex because it is held
//! for the whole PBX round trip.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

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
}

#[derive(Debug)]
pub struct Slot {
    id: TenantId,
    meta: Mutex<Meta>,
    token: watch::Sender<Option<Arc<AccessToken>>>,
    fetch: tokio::sync::Mutex<()>,
}

impl Slot {
    pub fn from_cached(t: CachedTenant) -> Self {
        let (token, _) = watch::channel(t.token.map(Arc::new));
        Self {
            id: t.id,
            meta: Mutex::new(Meta {
                base_url: t.base_url,
                state: t.state,
                failures: 0,
                last_error: None,
                cooldown_until: None,
                last_report_refresh: None,
                credential_fault: None,
            }),
            token,
            fetch: tokio::sync::Mutex::new(()),
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
            m.credential_fault = None;
        }
        if let Some(token) = t.token {
            self.token.send_replace(Some(Arc::new(token)));
        }
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
        self.token.borrow().clone()
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
        let guard = self.token.borrow();
        match guard.as_ref() {
            Some(t) if t.valid_for(now, min_valid_ms) => Some(t.clone()),
            _ => None,
        }
    }

    /// Errors for states that never hand out tokens.
    pub fn check_servable_state(&self) -> Result<(), TokenError> {
        let state = self.state();
        let hint = match state {
            TenantState::PendingAuthorization => {
                "it has no token until the PBX user allows access: run BeginAuthorization and CompleteAuthorization"
            }
            TenantState::Disabled => "it was disabled by an operator; enable it with UpdateTenant(enabled=true)",
            _ => return Ok(()),
        };
        Err(TokenError::NotServable {
            tenant: self.id.to_string(),
            state,
            hint,
        })
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

    pub async fn fetch_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.fetch.lock().await
    }

    pub fn on_demand_cooldown(&self, now: UnixMs) -> Option<UnixMs> {
        self.meta().cooldown_until.filter(|until| *until > now)
    }

    /// Whether a report forced a refresh less than `interval_ms` before `now`.
    pub fn report_refresh_within(&self, now: UnixMs, interval_ms: i64) -> bool {
        self.meta()
            .last_report_refresh
            .is_some_and(|at| now.0 - at.0 < interval_ms)
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
        self.token.send_replace(Some(token));
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
