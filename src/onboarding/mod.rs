//! Onboarding through the PBX authorization dialog, as a resumable state
//! machine: BeginAuthorization hands out a URL with a one-time `state`;
//! CompleteAuthorization (or the callback listener) runs the six steps of
//! the provider's OAuth document (quoted in docs/ONBOARDING.md) from the code
//! exchange to a trusted application in use, committing each step's outcome
//! before the next one starts. A flow
//! interrupted by a crash resumes at start-up or on the next
//! CompleteAuthorization for the same state or tenant.
//!
//! Files: `authorize.rs` (state, URL, names: pure), `steps.rs` (the six
//! steps), `failures.rs` (what each PBX failure means: pure),
//! `crash_hook.rs` (a test-only hook).
//!
//! Does not: know protobuf or HTML (api/ translates), SQL (store/), or HTTP
//! (pbx/). Token requests go through the per-host limiter: every PBX call
//! is made on the [`GatedOnboardingPbx`] in [`OnboardingParts`], which
//! also brings the store and the clock (none is reached through the broker).

mod authorize;
mod claim;
mod crash_hook;
mod failures;
mod steps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::clock::{SharedClock, UnixMs};
use crate::config::OnboardingConfig;
use crate::domain::{Tenant, TenantId, TenantState, ValidationError};
use crate::pbx::gated::GatedOnboardingPbx;
use crate::secret::Secret;
use crate::store::{Flow, FlowKey, FlowStep, FlowUpdate, Store, StoreError};

pub use authorize::{authorization_url, state_hash};
pub use crash_hook::{CrashHook, CRASH_HOOK_VAR, CRASH_MARKER};

/// A flow the PBX user declined, as `deny` ended it.
#[derive(Debug, Clone)]
pub struct Denial {
    pub tenant_id: String,
    /// What to show the user (secret-free).
    pub message: String,
}

/// Why an onboarding call did not succeed. Messages say what happened and
/// what to do next; they never hold a state, code, token or secret.
#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("tenant {0} is not registered")]
    NotFound(String),
    /// The state is unknown, used or expired; the tenant is not in a state
    /// for this; or the PBX refused a step in a way a retry will not fix.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The PBX could not be reached or throttles; the flow can be retried.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_at: Option<UnixMs>,
    },
    #[error(transparent)]
    Store(StoreError),
    /// The flow's task ended abnormally (a bug); the flow resumes later.
    #[error("the authorization task failed: {0}")]
    Internal(String),
}

impl From<StoreError> for OnboardingError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TenantNotFound(id) => OnboardingError::NotFound(id),
            // The flow's problem (its message says what to do), not ours.
            e if e.is_flow_fault() => OnboardingError::FailedPrecondition(e.to_string()),
            other => OnboardingError::Store(other),
        }
    }
}

/// Settings from `[onboarding]`; replaced on SIGHUP.
#[derive(Debug, Clone)]
pub struct OnboardingSettings {
    pub app_name_template: String,
    pub state_ttl_ms: i64,
}

impl OnboardingSettings {
    pub fn from_config(c: &OnboardingConfig) -> Self {
        Self {
            app_name_template: c.app_name_template.clone(),
            state_ttl_ms: i64::try_from(c.state_ttl_seconds.saturating_mul(1000))
                .unwrap_or(i64::MAX),
        }
    }
}

/// BeginAuthorization's answer.
#[derive(Debug)]
pub struct Authorization {
    pub url: String,
    /// Shown once to the caller; only its hash is stored.
    pub state: Secret<String>,
    pub expires_at: UnixMs,
}

/// CompleteAuthorization's input, as plain strings from a front end.
#[derive(Debug, Default)]
pub struct CompleteInput {
    /// Preferred: identifies the flow.
    pub state: String,
    /// Alternative to `state`.
    pub tenant_id: String,
    /// Needed to start a flow; ignored when resuming one past the exchange.
    pub code: String,
}

/// What [`Onboarding`] works with, handed over when it is built.
pub struct OnboardingParts {
    /// The cache the activated tenant goes into (under its fetch lock),
    /// the renewal policy and the token lifetime default.
    pub broker: Arc<Broker>,
    pub store: Store,
    pub clock: SharedClock,
    /// Every PBX call of a flow; token requests through the host limiter.
    pub pbx: Arc<GatedOnboardingPbx>,
}

pub struct Onboarding {
    broker: Arc<Broker>,
    store: Store,
    clock: SharedClock,
    pbx: Arc<GatedOnboardingPbx>,
    settings: RwLock<Arc<OnboardingSettings>>,
    /// One flow at a time per tenant: a tokio mutex per tenant, held for the
    /// whole flow (PBX round trips included). Entries are never removed: a
    /// few bytes per tenant that ever onboarded.
    locks: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    crash_hook: CrashHook,
    /// Flows run on their own tasks (tracked for shutdown): a caller that
    /// goes away (gRPC deadline, closed browser) must not cancel a flow
    /// between the PBX's answer and its commit.
    tasks: TaskTracker,
}

/// How long a code exchange holds its claim on the state: longer than a
/// PBX request may take; a crash mid-exchange frees the state after it.
/// The call driving the flow extends it while it works (`claim.rs`).
const EXCHANGE_CLAIM_MS: i64 = 30_000;

const UNKNOWN_STATE: &str = "this authorization state is not known: it was never issued, a later BeginAuthorization replaced it, or its tenant was deleted; run BeginAuthorization for a new authorization URL";

impl Onboarding {
    pub fn new(
        parts: OnboardingParts,
        settings: OnboardingSettings,
        crash_hook: CrashHook,
        tasks: TaskTracker,
    ) -> Self {
        let OnboardingParts {
            broker,
            store,
            clock,
            pbx,
        } = parts;
        Self {
            broker,
            store,
            clock,
            pbx,
            settings: RwLock::new(Arc::new(settings)),
            locks: Mutex::new(HashMap::new()),
            crash_hook,
            tasks,
        }
    }

    pub fn settings(&self) -> Arc<OnboardingSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_settings(&self, s: OnboardingSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
    }

    fn now(&self) -> UnixMs {
        self.clock.now()
    }

    async fn lock(&self, id: &TenantId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.clone()).or_default().clone()
        };
        m.lock_owned().await
    }

    async fn tenant(&self, id: &TenantId) -> Result<Tenant, OnboardingError> {
        self.store
            .get_tenant(id)
            .await?
            .ok_or_else(|| OnboardingError::NotFound(id.to_string()))
    }

    /// BeginAuthorization: a new state (superseding an earlier one) and the
    /// URL the PBX user must open. Works for an ACTIVE tenant too: the new
    /// trusted app replaces the old credentials only once it works.
    pub async fn begin(&self, tenant_id: &str) -> Result<Authorization, OnboardingError> {
        let id = TenantId::parse(tenant_id)?;
        let tenant = self.tenant(&id).await?;
        if tenant.state == TenantState::Disabled {
            return Err(OnboardingError::FailedPrecondition(format!(
                "tenant {id} is disabled; enable it with UpdateTenant(enabled=true) before authorizing it"
            )));
        }
        let Some((public, redirect_uri)) = self.store.public_credentials(&id).await? else {
            return Err(OnboardingError::FailedPrecondition(format!(
                "tenant {id} has no public app (it was registered with trusted-app credentials), so it cannot be authorized through the PBX dialog; set new trusted-app credentials with UpdateTenant, or delete the tenant and register it again with public_app and redirect_uri"
            )));
        };
        let _running = self.lock(&id).await;
        let current = match self.store.flow_of(&id).await {
            // A flow whose sealed values cannot be used is ended without
            // reading them; an app it created is listed for deletion.
            Err(e) if e.is_flow_fault() => {
                let note = format!("BeginAuthorization replaced an authorization flow whose sealed values could not be used: {e}");
                let said = self.store.discard_flow(&id, note, self.now()).await?;
                tracing::warn!(tenant = %id, "{said}");
                None
            }
            other => other?,
        };
        if let Some(flow) = current {
            if flow.step.holds_new_app() {
                return Err(OnboardingError::FailedPrecondition(format!(
                    "the authorization of tenant {id} in progress holds a new trusted application ({}) that is not in use yet; finish it with CompleteAuthorization(tenant_id={id}) before starting another",
                    flow.app.as_ref().map_or("?", |a| a.client_id.as_str())
                )));
            }
            if flow.step == FlowStep::CreatingApp {
                self.settle_interrupted_creation(flow).await?;
            }
        }
        let state = authorize::new_state();
        let now = self.now();
        let expires_at = now.plus_ms(self.settings().state_ttl_ms);
        self.store
            .begin_flow(&id, authorize::state_hash(&state), expires_at, now)
            .await?;
        let url = authorize::authorization_url(
            &tenant.base_url,
            &public.client_id,
            &redirect_uri,
            &state,
        );
        tracing::info!(tenant = %id, expires_at = %expires_at, reauthorization = tenant.state != TenantState::PendingAuthorization, "authorization started");
        Ok(Authorization {
            url,
            state: Secret::new(state),
            expires_at,
        })
    }

    /// CompleteAuthorization: starts the flow with the code, or resumes an
    /// interrupted one; returns the tenant once it uses the new trusted app.
    /// The flow runs on its own task: dropping this future does not stop it.
    pub async fn complete(
        self: &Arc<Self>,
        input: CompleteInput,
    ) -> Result<Tenant, OnboardingError> {
        let this = Arc::clone(self);
        self.tasks
            .spawn(async move { this.complete_flow(input).await })
            .await
            .map_err(|e| OnboardingError::Internal(e.to_string()))?
    }

    async fn complete_flow(&self, input: CompleteInput) -> Result<Tenant, OnboardingError> {
        if input.state.is_empty() && input.tenant_id.is_empty() {
            return Err(ValidationError::new(
                "state",
                "state or tenant_id is required to identify the authorization",
            )
            .into());
        }
        if !input.code.is_empty() {
            authorize::validate_code(&input.code)?;
        }
        let by_state = if input.state.is_empty() {
            None
        } else {
            authorize::validate_state(&input.state)?;
            Some(authorize::state_hash(&input.state))
        };
        let id = match by_state {
            Some(hash) => {
                let flow = self
                    .refuse_faulty(self.store.flow_by_state(hash).await)
                    .await?
                    .ok_or_else(|| OnboardingError::FailedPrecondition(UNKNOWN_STATE.to_owned()))?;
                if !input.tenant_id.is_empty() && input.tenant_id != flow.tenant_id.as_str() {
                    return Err(ValidationError::new(
                        "tenant_id",
                        "does not match the tenant of the state; give one of them",
                    )
                    .into());
                }
                flow.tenant_id
            }
            None => TenantId::parse(&input.tenant_id)?,
        };
        let _running = self.lock(&id).await;
        // Read again under the lock: a flow may have moved (or been replaced).
        let flow = match by_state {
            Some(hash) => self
                .refuse_faulty(self.store.flow_by_state(hash).await)
                .await?
                .ok_or_else(|| OnboardingError::FailedPrecondition(UNKNOWN_STATE.to_owned()))?,
            None => {
                let _ = self.tenant(&id).await?;
                let flow = self.refuse_faulty(self.store.flow_of(&id).await).await?;
                flow.ok_or_else(|| {
                    OnboardingError::FailedPrecondition(format!(
                        "no authorization of tenant {id} was started; run BeginAuthorization and have the PBX user open the URL"
                    ))
                })?
            }
        };
        let tenant = self.tenant(&id).await?;
        let via = if by_state.is_some() {
            "this state was already used"
        } else {
            "no authorization of this tenant is in progress"
        };
        // Kept for as long as this call drives the flow (`claim.rs`).
        let mut _claim = None;
        let flow = match flow.step {
            FlowStep::Completed => {
                return Err(OnboardingError::FailedPrecondition(format!(
                    "{via}: the authorization of tenant {id} completed at {}; run BeginAuthorization to authorize it again",
                    flow.updated_at
                )))
            }
            FlowStep::Failed => {
                return Err(OnboardingError::FailedPrecondition(format!(
                    "{via}: the authorization of tenant {id} failed ({}); run BeginAuthorization to start again",
                    flow.error.as_deref().unwrap_or("no details")
                )))
            }
            FlowStep::Issued => {
                let now = self.now();
                if now >= flow.state_expires_at {
                    return Err(OnboardingError::FailedPrecondition(format!(
                        "the authorization state of tenant {id} expired at {} (states are valid for {} s); run BeginAuthorization for a new authorization URL",
                        flow.state_expires_at,
                        self.settings().state_ttl_ms / 1000
                    )));
                }
                authorize::validate_code(&input.code)?;
                // The per-tenant lock guards this process only: the claim
                // is the one cluster-wide guard, taken in one statement
                // before the code goes to the PBX.
                let key = match by_state {
                    Some(hash) => FlowKey::State(hash),
                    None => FlowKey::Tenant(id.clone()),
                };
                let until = now.plus_ms(EXCHANGE_CLAIM_MS);
                let flow = self
                    .store
                    .consume_state(key, now, until)
                    .await?
                    .ok_or_else(|| {
                        OnboardingError::FailedPrecondition(format!(
                            "{via}: the code of tenant {id}'s authorization is being exchanged by another call (on this or another replica); wait a few seconds and check the tenant's state"
                        ))
                    })?;
                _claim = Some(self.hold_claim(&id, until));
                self.exchange_code(&tenant, flow, &input.code).await?
            }
            _ => {
                _claim = self.claim_resumption(&id).await?;
                tracing::info!(tenant = %id, step = %flow.step, "resuming an interrupted authorization");
                flow
            }
        };
        self.drive(&tenant, flow).await
    }

    /// The PBX answered the authorization request with `error` (the user
    /// denied access: `access_denied`). Ends the flow; returns the tenant
    /// (for the audit log) and what to show.
    pub async fn deny(
        &self,
        state: &str,
        error: &str,
        description: Option<&str>,
    ) -> Result<Denial, OnboardingError> {
        authorize::validate_state(state)?;
        let hash = authorize::state_hash(state);
        let lookup = || async {
            self.store
                .flow_by_state(hash)
                .await?
                .ok_or_else(|| OnboardingError::FailedPrecondition(UNKNOWN_STATE.to_owned()))
        };
        let id = lookup().await?.tenant_id;
        let _running = self.lock(&id).await;
        let flow = lookup().await?;
        if flow.step != FlowStep::Issued {
            return Err(OnboardingError::FailedPrecondition(format!(
                "this state was already used: the authorization of tenant {id} is {}; nothing was changed",
                flow.step
            )));
        }
        if self.now() >= flow.state_expires_at {
            return Err(OnboardingError::FailedPrecondition(format!(
                "the authorization state of tenant {id} expired at {}; nothing was changed",
                flow.state_expires_at
            )));
        }
        let message = failures::denial_message(error, description);
        self.store
            .advance_flow(
                &id,
                FlowUpdate::Failed {
                    orphan: None,
                    error: message.clone(),
                },
                self.now(),
            )
            .await?;
        tracing::warn!(tenant = %id, "authorization ended: {message}");
        Ok(Denial {
            tenant_id: id.to_string(),
            message,
        })
    }

    /// Start-up: resumes every flow a crash interrupted between the code
    /// exchange and the end (and flows holding a stored new app). Errors are
    /// recorded on the tenant and logged.
    /// `cancel` is checked between flows (each flow is crash-safe anyway).
    pub async fn resume_interrupted(&self, cancel: CancellationToken) {
        let ids = match self.store.interrupted_flows().await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!("cannot list interrupted authorizations: {e}");
                return;
            }
        };
        if !ids.is_empty() {
            tracing::info!(
                flows = ids.len(),
                "resuming authorizations interrupted by a stop"
            );
        }
        for id in ids {
            if cancel.is_cancelled() {
                return;
            }
            match self.resume_one(&id).await {
                Ok(t) => {
                    tracing::info!(tenant = %id, state = %t.state, "interrupted authorization completed")
                }
                Err(e) => {
                    tracing::warn!(tenant = %id, "interrupted authorization not completed: {e}")
                }
            }
        }
    }

    /// A flow read whose sealed values do not open or no longer match the
    /// columns that say where they go: nothing is sent, the flow stays as it
    /// is (so that it resumes once the column is put back) and the reason
    /// goes to the flow's error and the tenant's last_error.
    async fn refuse_faulty(
        &self,
        read: Result<Option<Flow>, StoreError>,
    ) -> Result<Option<Flow>, OnboardingError> {
        let e = match read {
            Err(e) if e.is_flow_fault() => e,
            other => return Ok(other?),
        };
        let tenant = match &e {
            StoreError::FlowTampered { tenant, .. } | StoreError::FlowUnreadable { tenant, .. } => {
                TenantId::parse(tenant).ok()
            }
            _ => None,
        };
        let message = e.to_string();
        tracing::error!(
            tenant = tenant.as_ref().map_or("?", |t| t.as_str()),
            "authorization flow refused: {message}"
        );
        if let Some(id) = tenant {
            let update = FlowUpdate::Error {
                error: message.clone(),
            };
            if let Err(rec) = self.store.advance_flow(&id, update, self.now()).await {
                tracing::error!(tenant = %id, "cannot record the refused authorization flow: {rec}");
            }
        }
        Err(OnboardingError::FailedPrecondition(message))
    }

    async fn resume_one(&self, id: &TenantId) -> Result<Tenant, OnboardingError> {
        let _running = self.lock(id).await;
        let flow = self.refuse_faulty(self.store.flow_of(id).await).await?;
        let flow: Flow = flow.ok_or_else(|| {
            OnboardingError::FailedPrecondition(format!("the authorization of {id} is gone"))
        })?;
        if !flow.step.in_progress() {
            return self.tenant(id).await;
        }
        // Creating an application is a visible side effect in the PBX: it is
        // repeated by itself only after a stop cut a flow short, never after
        // a create call that failed and was reported (e.g. an unreadable
        // answer would leave one more orphan at every start).
        if flow.step == FlowStep::CodeExchanged {
            if let Some(error) = &flow.error {
                return Err(OnboardingError::FailedPrecondition(format!(
                    "it waits for CompleteAuthorization(tenant_id={id}) after: {error}"
                )));
            }
        }
        let _claim = self.claim_resumption(id).await?;
        let tenant = self.tenant(id).await?;
        self.drive(&tenant, flow).await
    }

    fn hold_claim(&self, id: &TenantId, until: UnixMs) -> claim::ClaimHeartbeat {
        let (store, clock) = (self.store.clone(), self.clock.clone());
        claim::hold(store, clock, id.clone(), until, EXCHANGE_CLAIM_MS)
    }

    /// Start-up on SQLite (one process): claims left by a crash of an
    /// earlier run hold nothing, and must not make a CompleteAuthorization
    /// retry wait for them to lapse. Called before any call is served.
    pub async fn void_stale_claims(&self) {
        if self.store.backend_name() != "sqlite" {
            return;
        }
        match self.store.clear_flow_claims().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(claims = n, "authorization claims left by the previous run were voided"),
            Err(e) => tracing::warn!("cannot void the authorization claims left by the previous run ({e}); they lapse within {} s", EXCHANGE_CLAIM_MS / 1000),
        }
    }

    /// With several replicas, a flow in progress is driven on by one call
    /// at a time cluster-wide (the per-tenant lock guards this process
    /// only): the replica that exchanged the code holds the claim while it
    /// works, so another one resuming the same flow would create a second
    /// app. One process on SQLite needs no claim (and a stale one left by a
    /// crash must not hold up the resumption at start-up).
    async fn claim_resumption(
        &self,
        id: &TenantId,
    ) -> Result<Option<claim::ClaimHeartbeat>, OnboardingError> {
        if self.store.backend_name() == "sqlite" {
            return Ok(None);
        }
        let now = self.now();
        let until = now.plus_ms(EXCHANGE_CLAIM_MS);
        if self.store.claim_flow(id, now, until).await? {
            return Ok(Some(self.hold_claim(id, until)));
        }
        Err(OnboardingError::FailedPrecondition(format!(
            "the authorization of tenant {id} is being completed by another call (on this or another replica); wait a few seconds and check the tenant's state"
        )))
    }
}
