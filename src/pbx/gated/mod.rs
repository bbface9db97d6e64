//! The one home of "a PBX request through the per-host limiter": every
//! token-endpoint request (the broker's refreshes of every kind, tenants'
//! first token on Create/UpdateTenant, onboarding's code exchange and
//! first token) is made through [`GatedPbx`] or [`GatedOnboardingPbx`],
//! which take the host's limiter slot, throttle the whole host on a 429
//! and keep the slot of a request our side gave up on for one more
//! request timeout. No caller takes a limiter slot by hand.
//!
//! Why one place: the limits are a contract with the provider ("never more
//! than N in any second, M at once, nothing while throttled"); three
//! hand-written copies of the acquire/throttle/abandon dance could drift,
//! and the one that forgot the abandoned-request rule would let a paused
//! process burst past the provider's concurrency on resume.
//!
//! The abandoned-request rule (see `broker/abandoned/mod.rs` for the story):
//! a request that failed no sooner than `[pbx] request_timeout_ms`, or
//! whose future was dropped mid-way, may still be open at the provider, so
//! its host slot stays taken for one more timeout. A request that got an
//! answer, or failed fast, frees it at once.
//!
//! Scheduled renewals ask for [`Lane::Proactive`]; everything else is a
//! demand request that goes first (see `pbx::limiter`).
//!
//! Application creation and the user lookup (onboarding steps 2 and 5) are
//! not token requests: they pass through [`GatedOnboardingPbx`] unlimited,
//! as they always did, so onboarding needs no second handle on the PBX.
//!
//! Several replicas on PostgreSQL: after the replica's own limiter, each
//! request also takes a slot of the host's budget shared in the database
//! (`shared.rs`), and a 429 is stored there for every replica.
//!
//! Does not: decide what a failure means for a tenant (broker, tenants and
//! onboarding each do), or know the tenant's single flight (the broker's
//! `abandoned::TenantMark`).

pub mod shared;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::limiter::{HostLimiters, Lane, RequestPermit};
use super::{PbxApi, PbxError, PbxOnboardingApi, TokenGrant};
use crate::clock::UnixMs;
use crate::domain::{AppCredentials, PbxBaseUrl, PbxUser};
use crate::metrics::{FetchStage, Metrics};
use crate::secret::Secret;

/// A gated request that did not produce its answer.
#[derive(Debug)]
pub enum FetchFailure {
    /// Our own limiter knows the host is throttled: nothing was sent.
    HostThrottled {
        until: UnixMs,
    },
    Pbx(PbxError),
}

impl FetchFailure {
    /// The metrics class (`renewal` result label).
    pub fn class(&self) -> &'static str {
        match self {
            FetchFailure::HostThrottled { .. } => "throttled",
            FetchFailure::Pbx(e) => e.class(),
        }
    }

    /// The operator-facing text stored as `last_error`.
    pub fn describe(&self) -> String {
        match self {
            FetchFailure::HostThrottled { until } => {
                format!("throttled: the PBX host asked us to wait (HTTP 429) until {until}")
            }
            FetchFailure::Pbx(PbxError::Throttled { retry_after }) => format!(
                "throttled: the PBX answered HTTP 429; no request before {}s have passed",
                retry_after.as_secs()
            ),
            FetchFailure::Pbx(e) => e.to_string(),
        }
    }
}

/// Whether a finished call is one our side gave up on: it failed no sooner
/// than the request timeout (the PBX client's timer fired, or a limiter
/// wait plus a slow failure: counting those too only costs a little
/// throughput).
pub fn timed_out<T, E>(result: &Result<T, E>, took: Duration, timeout: Duration) -> bool {
    result.is_err() && took >= timeout
}

/// Token requests (`client_credentials`) through the per-host limiter.
/// Built once per engine; the broker and tenants hold it, onboarding holds
/// it inside its [`GatedOnboardingPbx`].
pub struct GatedPbx {
    api: Arc<dyn PbxApi>,
    limiter: Arc<HostLimiters>,
    /// `[pbx] request_timeout_ms`: how long an abandoned request still
    /// counts as in flight. Replaced on SIGHUP.
    request_timeout_ms: AtomicU64,
    /// Several replicas: the cluster's budget per host (`shared.rs`).
    shared: Option<Arc<dyn shared::SharedBudget>>,
    /// Times the limiter wait, the shared budget and the request.
    metrics: Option<Arc<Metrics>>,
}

impl GatedPbx {
    pub fn new(api: Arc<dyn PbxApi>, limiter: Arc<HostLimiters>, request_timeout_ms: u64) -> Self {
        Self {
            api,
            limiter,
            request_timeout_ms: AtomicU64::new(request_timeout_ms),
            shared: None,
            metrics: None,
        }
    }

    /// Each request's stages go into `renewal_stage_seconds`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn stage(&self, stage: FetchStage, since: tokio::time::Instant) {
        if let Some(m) = &self.metrics {
            m.fetch_stage(stage, since.elapsed());
        }
    }

    /// Every request also takes a slot of the cluster's budget per host.
    pub fn with_shared_budget(mut self, budget: Arc<dyn shared::SharedBudget>) -> Self {
        self.shared = Some(budget);
        self
    }

    /// SIGHUP: the new `[pbx] request_timeout_ms` for the grace.
    pub fn set_request_timeout_ms(&self, ms: u64) {
        self.request_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// How long a request our side gave up on still counts as in flight
    /// (one more request timeout). The broker applies the same grace to
    /// the tenant's single flight.
    pub fn abandon_grace(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.load(Ordering::Relaxed))
    }

    /// `grant_type=client_credentials` for a trusted app, gated, in the
    /// demand lane (somebody waits for the token).
    pub async fn client_credentials(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
    ) -> Result<TokenGrant, FetchFailure> {
        self.client_credentials_in(base, creds, Lane::Demand).await
    }

    /// [`Self::client_credentials`] in `lane`: scheduled renewals use
    /// [`Lane::Proactive`] and stand aside for demand requests.
    pub async fn client_credentials_in(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
        lane: Lane,
    ) -> Result<TokenGrant, FetchFailure> {
        self.through(base, lane, || self.api.client_credentials(base, creds))
            .await
    }

    /// Runs one token-endpoint request (`call`) under the host's limiter:
    /// waits for a slot and the window, refuses while the host is
    /// throttled, and throttles the whole host on a 429. Private: callers
    /// name the request they make, never the limiter.
    async fn through<T, F, Fut>(
        &self,
        base: &PbxBaseUrl,
        lane: Lane,
        call: F,
    ) -> Result<T, FetchFailure>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, PbxError>>,
    {
        let waited = tokio::time::Instant::now();
        let permit = match self.limiter.acquire_in(base.host(), lane).await {
            Ok(p) => p,
            Err(t) => return Err(FetchFailure::HostThrottled { until: t.until }),
        };
        self.stage(FetchStage::Limiter, waited);
        let grace = self.abandon_grace();
        // Held past the end of the call if it is cancelled or times out.
        let permit = HostSlot::new(permit, grace);
        let cluster = match &self.shared {
            Some(budget) => {
                let taking = tokio::time::Instant::now();
                let slot = shared::take(budget, &self.limiter, base.host()).await?;
                self.stage(FetchStage::SharedBudget, taking);
                Some(slot)
            }
            None => None,
        };
        let started = tokio::time::Instant::now();
        let result = call().await;
        self.stage(FetchStage::Pbx, started);
        let abandoned = timed_out(&result, started.elapsed(), grace);
        permit.finish(abandoned);
        if let Some(slot) = cluster {
            slot.finish(abandoned, grace);
        }
        result.map_err(|e| {
            if let PbxError::Throttled { retry_after } = &e {
                // A 429 on the token endpoint is the host's limit: every
                // tenant of the host waits, not only this one (and, with
                // several replicas, every replica).
                self.limiter.throttle_for(base.host(), *retry_after);
                if let Some(budget) = &self.shared {
                    spawn_detached(budget.throttle(base.host(), *retry_after));
                }
            }
            FetchFailure::Pbx(e)
        })
    }
}

/// The authorization flow's PBX: the code exchange and the first token
/// gated like every token request; application creation and the user
/// lookup passed through (see the module doc).
pub struct GatedOnboardingPbx {
    tokens: Arc<GatedPbx>,
    api: Arc<dyn PbxOnboardingApi>,
}

impl GatedOnboardingPbx {
    /// `tokens` is the engine's [`GatedPbx`], so onboarding shares the
    /// host limits with renewals.
    pub fn new(tokens: Arc<GatedPbx>, api: Arc<dyn PbxOnboardingApi>) -> Self {
        Self { tokens, api }
    }

    /// `grant_type=authorization_code` with the public app, gated.
    pub async fn authorization_code(
        &self,
        base: &PbxBaseUrl,
        public_app: &AppCredentials,
        code: &str,
        redirect_uri: &str,
    ) -> Result<TokenGrant, FetchFailure> {
        self.tokens
            .through(base, Lane::Demand, || {
                self.api
                    .authorization_code(base, public_app, code, redirect_uri)
            })
            .await
    }

    /// The new trusted app's first `client_credentials` token, gated.
    pub async fn client_credentials(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
    ) -> Result<TokenGrant, FetchFailure> {
        self.tokens.client_credentials(base, creds).await
    }

    /// `POST /api/ver1.0/application/` (not a token request: unlimited).
    pub async fn create_application(
        &self,
        base: &PbxBaseUrl,
        bearer: &Secret<String>,
        name: &str,
    ) -> Result<AppCredentials, PbxError> {
        self.api.create_application(base, bearer, name).await
    }

    /// `GET /api/ver1.0/user/` (not a token request: unlimited).
    pub async fn get_user(
        &self,
        base: &PbxBaseUrl,
        bearer: &Secret<String>,
    ) -> Result<PbxUser, PbxError> {
        self.api.get_user(base, bearer).await
    }
}

/// Runs `f` on the current runtime without waiting for it (nothing
/// outside a runtime).
fn spawn_detached(f: futures::future::BoxFuture<'static, ()>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

/// A host's concurrency slot for one request; see the module doc.
struct HostSlot {
    permit: Option<RequestPermit>,
    grace: Duration,
}

impl HostSlot {
    fn new(permit: RequestPermit, grace: Duration) -> Self {
        Self {
            permit: Some(permit),
            grace,
        }
    }

    /// The call ended; `abandoned`: it timed out at our side.
    fn finish(mut self, abandoned: bool) {
        if let Some(p) = self.permit.take() {
            if abandoned {
                p.hold_for(self.grace);
            }
        }
    }
}

impl Drop for HostSlot {
    /// Dropped without `finish`: the call was cancelled mid-way.
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            p.hold_for(self.grace);
        }
    }
}

#[cfg(test)]
mod tests;
