//! The six steps of the flow and what each PBX failure means for it:
//! 1 exchange the code (through the host limiter), 2 create the trusted app,
//! 3 store its credentials, 4 get its first token (through the limiter),
//! 5 read the PBX user with it, 6 put it in use. Each step commits its
//! outcome before the next starts; a failed step records why (on the flow
//! and the tenant's last_error) and either waits to be retried or ends the
//! flow.
//!
//! Does not: find flows or take the per-tenant lock (mod.rs does).

use rand::Rng;

use super::{authorize, Onboarding, OnboardingError};
use crate::broker::FetchFailure;
use crate::clock::UnixMs;
use crate::domain::{AppCredentials, Tenant, TenantId, TenantState};
use crate::pbx::PbxError;
use crate::store::{CachedTenant, Flow, FlowCompletion, FlowStep, FlowUpdate, StoreError};

/// A token this close to expiry is not used to read the PBX user.
const MIN_TOKEN_VALIDITY_MS: i64 = 5_000;
/// Storing the new app is retried: its secret exists nowhere else.
const STORE_ATTEMPTS: u32 = 3;

/// How a failed step leaves the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The PBX is unreachable or throttles: the flow waits for a retry.
    Retry(Option<UnixMs>),
    /// Someone must change something first; the flow waits.
    Stuck,
    /// The flow cannot go on: it fails and its state is consumed.
    Fatal,
}

#[derive(Debug)]
struct Failure {
    outcome: Outcome,
    message: String,
}

impl Failure {
    fn new(outcome: Outcome, what: impl std::fmt::Display) -> Self {
        Self {
            outcome,
            message: format!("authorization flow: {what}"),
        }
    }

    fn error(&self) -> OnboardingError {
        match self.outcome {
            Outcome::Retry(retry_at) => OnboardingError::Unavailable {
                reason: self.message.clone(),
                retry_at,
            },
            Outcome::Stuck | Outcome::Fatal => {
                OnboardingError::FailedPrecondition(self.message.clone())
            }
        }
    }
}

fn corrupt(id: &TenantId, what: &str) -> OnboardingError {
    OnboardingError::Store(StoreError::Corrupt(format!(
        "onboarding flow of tenant {id} has no {what}"
    )))
}

impl Onboarding {
    /// Runs the flow from its committed step to the end.
    pub(super) async fn drive(
        &self,
        tenant: &Tenant,
        mut flow: Flow,
    ) -> Result<Tenant, OnboardingError> {
        loop {
            flow = match flow.step {
                FlowStep::CodeExchanged => self.create_app(tenant, flow).await?,
                FlowStep::CreatingApp => self.settle_interrupted_creation(flow).await?,
                FlowStep::AppStored => self.first_token(tenant, flow).await?,
                FlowStep::TokenObtained => self.verify_user(tenant, flow).await?,
                FlowStep::UserVerified => return self.activate(flow).await,
                FlowStep::Issued | FlowStep::Completed | FlowStep::Failed => {
                    return self.tenant(&tenant.id).await
                }
            };
        }
    }

    /// Records a failed step and turns it into the caller's error.
    async fn fail(&self, id: &TenantId, update: FlowUpdate, f: Failure) -> OnboardingError {
        tracing::warn!(tenant = %id, "{}", f.message);
        match self
            .broker
            .store()
            .advance_flow(id, update, self.now())
            .await
        {
            Ok(()) => f.error(),
            Err(e) => e.into(),
        }
    }

    fn update_for(f: &Failure, orphan: Option<String>) -> FlowUpdate {
        match f.outcome {
            Outcome::Fatal => FlowUpdate::Failed {
                orphan,
                error: f.message.clone(),
            },
            _ => FlowUpdate::Error {
                error: f.message.clone(),
            },
        }
    }

    /// Step 1: the code for the public app's token, through the limiter.
    pub(super) async fn exchange_code(
        &self,
        tenant: &Tenant,
        mut flow: Flow,
        code: &str,
    ) -> Result<Flow, OnboardingError> {
        let id = &tenant.id;
        let base = &tenant.base_url;
        let (public, redirect_uri) = self
            .broker
            .store()
            .public_credentials(id)
            .await?
            .ok_or_else(|| {
                OnboardingError::FailedPrecondition(format!(
                    "tenant {id} has no public app any more; register it again with public_app"
                ))
            })?;
        let issued_at = self.now();
        let result = self
            .broker
            .through_limiter(base, || {
                self.pbx
                    .authorization_code(base, &public, code, &redirect_uri)
            })
            .await;
        let grant = match result {
            Ok(g) => g,
            Err(f) => {
                let failure =
                    exchange_failure(&f, &redirect_uri, flow.state_expires_at, self.now());
                let update = Self::update_for(&failure, None);
                return Err(self.fail(id, update, failure).await);
            }
        };
        let token = self.broker.token_from_grant(grant, issued_at);
        self.broker
            .store()
            .advance_flow(
                id,
                FlowUpdate::CodeExchanged {
                    public_token: token.clone(),
                },
                self.now(),
            )
            .await?;
        tracing::info!(tenant = %id, "authorization step 1/6: code exchanged for the PBX user's token");
        self.crash_hook.after_step(1).await;
        flow.step = FlowStep::CodeExchanged;
        flow.public_token = Some(token);
        Ok(flow)
    }

    /// A flow found in `CreatingApp`: the daemon stopped during the create
    /// call. The app may exist without its answer stored: name it, go back.
    pub(super) async fn settle_interrupted_creation(
        &self,
        mut flow: Flow,
    ) -> Result<Flow, OnboardingError> {
        let id = &flow.tenant_id;
        let name = flow
            .app_name
            .take()
            .unwrap_or_else(|| "(name not recorded)".to_owned());
        let message = format!(
            "authorization flow: the daemon stopped while the PBX was creating application \"{name}\", so it may exist in the PBX without its credentials stored; delete it in the PBX web UI if it is there (the flow goes on with a new application)"
        );
        tracing::warn!(tenant = %id, app_name = %name, "{message}");
        self.broker
            .store()
            .advance_flow(
                id,
                FlowUpdate::AppCreationFailed {
                    orphan: Some(name.clone()),
                    error: message,
                },
                self.now(),
            )
            .await?;
        flow.step = FlowStep::CodeExchanged;
        if !flow.orphaned_apps.contains(&name) {
            flow.orphaned_apps.push(name);
        }
        Ok(flow)
    }

    /// Steps 2 and 3: create the trusted app and store its answer at once.
    async fn create_app(&self, tenant: &Tenant, mut flow: Flow) -> Result<Flow, OnboardingError> {
        let id = &tenant.id;
        let now = self.now();
        let public_token = match &flow.public_token {
            Some(t) if t.valid_for(now, 0) => t.clone(),
            _ => {
                let f = Failure::new(Outcome::Fatal, "the access token from the PBX user's authorization expired before the trusted application was created; run BeginAuthorization and have the PBX user allow access again");
                let update = Self::update_for(&f, None);
                return Err(self.fail(id, update, f).await);
            }
        };
        let template = self.settings().app_name_template.clone();
        let name = authorize::app_name(&template, id, &authorize::new_suffix());
        // Recorded before the call: if the daemon dies during it, the next
        // start knows which application may exist without its answer.
        self.broker
            .store()
            .advance_flow(id, FlowUpdate::CreatingApp { name: name.clone() }, now)
            .await?;
        tracing::info!(tenant = %id, app_name = %name, "authorization step 2/6: creating the trusted application");
        let result = self
            .pbx
            .create_application(&tenant.base_url, &public_token.value, &name)
            .await;
        let app = match result {
            Ok(app) => app,
            Err(e) => {
                let (failure, orphan) =
                    create_failure(&e, &name, id, public_token.expires_at, self.now());
                if orphan {
                    tracing::warn!(tenant = %id, app_name = %name, "the PBX may hold application \"{name}\" without its credentials stored; delete it in the PBX web UI");
                }
                let orphan = orphan.then(|| name.clone());
                let update = match failure.outcome {
                    Outcome::Fatal => Self::update_for(&failure, orphan),
                    _ => FlowUpdate::AppCreationFailed {
                        orphan,
                        error: failure.message.clone(),
                    },
                };
                return Err(self.fail(id, update, failure).await);
            }
        };
        self.crash_hook.after_step(2).await;
        self.store_new_app(id, &name, &app).await?;
        tracing::info!(tenant = %id, app_name = %name, client_id = %app.client_id, "authorization step 3/6: trusted application stored");
        self.crash_hook.after_step(3).await;
        flow.step = FlowStep::AppStored;
        flow.app_name = Some(name);
        flow.app = Some(app);
        Ok(flow)
    }

    /// Step 3: the secret exists only in the PBX's answer, so a failed
    /// commit is retried before anything else happens.
    async fn store_new_app(
        &self,
        id: &TenantId,
        name: &str,
        app: &AppCredentials,
    ) -> Result<(), OnboardingError> {
        let mut attempt = 1;
        loop {
            let update = FlowUpdate::AppStored { app: app.clone() };
            match self
                .broker
                .store()
                .advance_flow(id, update, self.now())
                .await
            {
                Ok(()) => return Ok(()),
                // A deleted tenant will not come back; anything else may pass.
                Err(e)
                    if attempt < STORE_ATTEMPTS && !matches!(e, StoreError::TenantNotFound(_)) =>
                {
                    tracing::error!(tenant = %id, attempt, "cannot store the new trusted application yet: {e}; retrying");
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => {
                    tracing::error!(tenant = %id, app_name = %name, client_id = %app.client_id, "cannot store the new trusted application: {e}; its secret is lost: delete application \"{name}\" in the PBX web UI");
                    return Err(e.into());
                }
            }
        }
    }

    /// Step 4: the new app's first `client_credentials` token.
    async fn first_token(&self, tenant: &Tenant, mut flow: Flow) -> Result<Flow, OnboardingError> {
        let id = &tenant.id;
        let app = flow.app.clone().ok_or_else(|| corrupt(id, "trusted app"))?;
        let name = flow
            .app_name
            .clone()
            .unwrap_or_else(|| app.client_id.clone());
        let issued_at = self.now();
        match self.broker.request_token(&tenant.base_url, &app).await {
            Ok(grant) => {
                let token = self.broker.token_from_grant(grant, issued_at);
                let update = FlowUpdate::TokenObtained {
                    token: token.clone(),
                };
                self.broker
                    .store()
                    .advance_flow(id, update, self.now())
                    .await?;
                tracing::info!(tenant = %id, expires_at = %token.expires_at, "authorization step 4/6: first token of the new application obtained");
                self.crash_hook.after_step(4).await;
                flow.step = FlowStep::TokenObtained;
                flow.token = Some(token);
                Ok(flow)
            }
            Err(f) => {
                let failure = token_failure(&f, &name, &app.client_id, id, self.now());
                let orphan = (failure.outcome == Outcome::Fatal).then_some(name);
                let update = Self::update_for(&failure, orphan);
                Err(self.fail(id, update, failure).await)
            }
        }
    }

    /// Step 5: the PBX user the new app acts for.
    async fn verify_user(&self, tenant: &Tenant, mut flow: Flow) -> Result<Flow, OnboardingError> {
        let id = &tenant.id;
        let now = self.now();
        let token = match &flow.token {
            Some(t) if t.valid_for(now, MIN_TOKEN_VALIDITY_MS) => t.clone(),
            // Expired while the flow waited: step 4 again.
            _ => {
                flow.step = FlowStep::AppStored;
                flow.token = None;
                return Ok(flow);
            }
        };
        match self.pbx.get_user(&tenant.base_url, &token.value).await {
            Ok(user) => {
                let update = FlowUpdate::UserVerified { user: user.clone() };
                self.broker
                    .store()
                    .advance_flow(id, update, self.now())
                    .await?;
                tracing::info!(tenant = %id, pbx_user_id = user.id, login = %user.login, "authorization step 5/6: PBX user verified");
                self.crash_hook.after_step(5).await;
                flow.step = FlowStep::UserVerified;
                flow.pbx_user = Some(user);
                Ok(flow)
            }
            Err(e) => {
                let what = format!("reading the PBX user with the new application's token failed: {e}; the new trusted application is stored");
                let (outcome, todo, update_kind) = match &e {
                    PbxError::CredentialsRejected { .. } => (Outcome::Stuck, "call CompleteAuthorization(tenant_id) again to retry with a fresh token", true),
                    PbxError::Throttled { retry_after } => (Outcome::Retry(Some(now.plus(*retry_after))), "call CompleteAuthorization(tenant_id) again after the throttle ends", false),
                    PbxError::Transient { .. } => (Outcome::Retry(None), "call CompleteAuthorization(tenant_id) again when the PBX answers", false),
                    _ => (Outcome::Stuck, "call CompleteAuthorization(tenant_id) again once the PBX answers GET /api/ver1.0/user/ properly", false),
                };
                let f = Failure::new(outcome, format!("{what}; {todo}"));
                let update = if update_kind {
                    FlowUpdate::TokenDropped {
                        error: f.message.clone(),
                    }
                } else {
                    Self::update_for(&f, None)
                };
                Err(self.fail(id, update, f).await)
            }
        }
    }

    /// Step 6: the tenant uses the new app, in one transaction, and the
    /// broker's cache gets its token; renewals take over.
    async fn activate(&self, flow: Flow) -> Result<Tenant, OnboardingError> {
        let id = flow.tenant_id.clone();
        let app = flow.app.ok_or_else(|| corrupt(&id, "trusted app"))?;
        let token = flow.token.ok_or_else(|| corrupt(&id, "first token"))?;
        let user = flow.pbx_user.ok_or_else(|| corrupt(&id, "PBX user"))?;
        let current = self.tenant(&id).await?;
        // An operator's DISABLED (set while the flow ran) stands.
        let (state, renew_at) = if current.state == TenantState::Disabled {
            (TenantState::Disabled, None)
        } else {
            let policy = self.broker.settings().policy.clone();
            let jitter: f64 = rand::thread_rng().gen();
            (TenantState::Active, Some(policy.renew_at(&token, jitter)))
        };
        let note = orphan_note(&flow.orphaned_apps);
        let client_id = app.client_id.clone();
        let completion = FlowCompletion {
            app,
            token: token.clone(),
            user,
            state,
            renew_at,
            note: note.clone(),
        };
        let now = self.now();
        // Under the fetch lock: no renewal with the old credentials can be
        // recorded between this commit and the cache update.
        let tenant = self
            .broker
            .with_fetch_lock(&id, async {
                let t = self
                    .broker
                    .store()
                    .complete_flow(&id, completion, now)
                    .await?;
                self.broker.upsert_slot(CachedTenant {
                    id: id.clone(),
                    base_url: t.base_url.clone(),
                    state: t.state,
                    token: Some(token),
                });
                Ok::<_, StoreError>(t)
            })
            .await?;
        tracing::info!(tenant = %id, client_id = %client_id, app_name = flow.app_name.as_deref().unwrap_or(""), state = %tenant.state, "authorization step 6/6: tenant uses its new trusted application");
        if let Some(note) = &note {
            tracing::warn!(tenant = %id, "{note}");
        }
        self.crash_hook.after_step(6).await;
        Ok(tenant)
    }
}

/// The text for a callback `error=..` (the user denied access, or another
/// OAuth error), with the PBX's words cleaned.
pub(super) fn denial_message(error: &str, description: Option<&str>) -> String {
    let error: String = error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if error == "access_denied" {
        return "authorization flow: the PBX user denied access (error=access_denied); nothing was changed; to try again, run BeginAuthorization and have the PBX user click Allow".to_owned();
    }
    let detail: String = description
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let detail = detail.trim();
    format!(
        "authorization flow: the PBX answered the authorization request with error={}{}; nothing was changed; run BeginAuthorization to try again",
        if error.is_empty() { "(empty)" } else { &error },
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )
}

fn orphan_note(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    Some(format!(
        "authorization flow: completed, but the PBX may hold application(s) {} created without their credentials being stored; delete them in the PBX web UI (the tenant uses a different one)",
        list.join(", ")
    ))
}

/// What a failed code exchange (step 1) means. The flow stays at `Issued`:
/// the same state can be completed with a new code while it is valid.
fn exchange_failure(
    f: &FetchFailure,
    redirect_uri: &str,
    state_until: UnixMs,
    now: UnixMs,
) -> Failure {
    let again = format!("have the PBX user open the authorization URL again (its state is valid until {state_until}) and complete with the new code, or run BeginAuthorization for a new URL");
    match f {
        FetchFailure::HostThrottled { until } => Failure::new(
            Outcome::Retry(Some(*until)),
            format!("{}; the code was not sent: call CompleteAuthorization again with the same state and code after that (if the code has expired by then, {again})", f.describe()),
        ),
        FetchFailure::Pbx(e @ PbxError::CredentialsRejected { error, description, .. }) => {
            let grant = error.as_deref().is_some_and(|e| e.eq_ignore_ascii_case("invalid_grant"));
            let redirect = description.as_deref().is_some_and(|d| d.to_ascii_lowercase().contains("redirect"));
            if grant && redirect {
                Failure::new(Outcome::Stuck, format!("{e}: the redirect URI does not match; the tenant's redirect_uri ({redirect_uri}) must be exactly the one registered with the provider's public app: fix the registration or register the tenant again with the right redirect_uri, then run BeginAuthorization"))
            } else if grant {
                Failure::new(Outcome::Stuck, format!("{e}: the authorization code has expired or was already used; {again}"))
            } else {
                Failure::new(Outcome::Stuck, format!("{e}: the PBX did not accept the tenant's public app client_id and client_secret; check them with the provider (to change them, delete the tenant and register it again)"))
            }
        }
        FetchFailure::Pbx(e @ PbxError::Throttled { retry_after }) => Failure::new(
            Outcome::Retry(Some(now.plus(*retry_after))),
            format!("{e}; call CompleteAuthorization again with the same state and code after that (if the code has expired by then, {again})"),
        ),
        FetchFailure::Pbx(e @ PbxError::Transient { .. }) => Failure::new(
            Outcome::Retry(None),
            format!("{e}; the code may still be valid for a short while: call CompleteAuthorization again with the same state and code (if it has expired, {again})"),
        ),
        FetchFailure::Pbx(e) => Failure::new(
            Outcome::Stuck,
            format!("{e}; check the tenant's pbx_base_url and public app, then {again}"),
        ),
    }
}

/// What a failed create call (step 2) means, and whether the application
/// may exist in the PBX without its answer stored (an orphan).
fn create_failure(
    e: &PbxError,
    name: &str,
    id: &TenantId,
    usable_until: UnixMs,
    now: UnixMs,
) -> (Failure, bool) {
    let resume = format!("call CompleteAuthorization(tenant_id={id}) again to go on with a new application (possible until {usable_until}, while the authorization's token is valid)");
    match e {
        PbxError::Refused { status: 403, message } => (
            Failure::new(Outcome::Fatal, format!("the PBX user who allowed access may not create applications (HTTP 403: {message}); have a PBX user with the right to create applications (an administrator) allow access: run BeginAuthorization again; or create a trusted application in the PBX web UI and register it with UpdateTenant (trusted_app)")),
            false,
        ),
        PbxError::CredentialsRejected { .. } => (
            Failure::new(Outcome::Fatal, format!("{e}: the PBX no longer accepts the token of the PBX user's authorization; run BeginAuthorization and have the PBX user allow access again")),
            false,
        ),
        PbxError::Throttled { retry_after } => (
            Failure::new(Outcome::Retry(Some(now.plus(*retry_after))), format!("{e}; no application was created; after that, {resume}")),
            false,
        ),
        PbxError::Transient { .. } => (
            Failure::new(Outcome::Retry(None), format!("{e}; the PBX may or may not have created application \"{name}\" (if it shows in the PBX web UI, delete it); {resume}")),
            true,
        ),
        PbxError::Protocol { reason } => (
            Failure::new(Outcome::Stuck, format!("the PBX created application \"{name}\" but its answer has no recognisable credentials ({reason}); delete \"{name}\" in the PBX web UI; {resume}")),
            true,
        ),
        PbxError::Refused { .. } | PbxError::Misconfigured { .. } => (
            Failure::new(Outcome::Stuck, format!("{e}; no application was created; {resume}")),
            false,
        ),
    }
}

/// What a failed first token (step 4) means. Rejected credentials of an app
/// the PBX just created end the flow (the secret is useless); anything else
/// leaves the stored app waiting for a retry.
fn token_failure(
    f: &FetchFailure,
    name: &str,
    client_id: &str,
    id: &TenantId,
    now: UnixMs,
) -> Failure {
    let retry = format!("the new trusted application \"{name}\" (client_id {client_id}) is stored: call CompleteAuthorization(tenant_id={id}) again to go on");
    match f {
        FetchFailure::Pbx(e @ PbxError::CredentialsRejected { .. }) => Failure::new(
            Outcome::Fatal,
            format!("{e}: the PBX rejected the new trusted application \"{name}\" (client_id {client_id}) right after creating it; delete it in the PBX web UI and run BeginAuthorization to try again"),
        ),
        FetchFailure::HostThrottled { until } => Failure::new(Outcome::Retry(Some(*until)), format!("{}; {retry} after that", f.describe())),
        FetchFailure::Pbx(e @ PbxError::Throttled { retry_after }) => {
            Failure::new(Outcome::Retry(Some(now.plus(*retry_after))), format!("{e}; {retry} after that"))
        }
        FetchFailure::Pbx(e @ PbxError::Transient { .. }) => Failure::new(Outcome::Retry(None), format!("{e}; {retry}")),
        FetchFailure::Pbx(e) => Failure::new(Outcome::Stuck, format!("{e}; {retry} once the PBX answers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn exchange_failures_say_what_to_do() {
        let rejected = |error: &str, description: &str| {
            FetchFailure::Pbx(PbxError::CredentialsRejected {
                status: 400,
                error: Some(error.into()),
                description: Some(description.into()),
            })
        };
        let f = exchange_failure(
            &rejected("invalid_grant", "The code has expired."),
            "https://crm/cb",
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Stuck);
        assert!(
            f.message.contains("expired or was already used"),
            "{}",
            f.message
        );
        let f = exchange_failure(
            &rejected("invalid_grant", "Mismatching redirect URI."),
            "https://crm/cb",
            UnixMs(0),
            UnixMs(0),
        );
        assert!(
            f.message.contains("redirect URI does not match")
                && f.message.contains("https://crm/cb"),
            "{}",
            f.message
        );
        let f = exchange_failure(
            &rejected("invalid_client", "bad"),
            "u",
            UnixMs(0),
            UnixMs(0),
        );
        assert!(f.message.contains("public app"), "{}", f.message);
        let f = exchange_failure(
            &FetchFailure::HostThrottled { until: UnixMs(5) },
            "u",
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Retry(Some(UnixMs(5))));
        assert!(matches!(f.error(), OnboardingError::Unavailable { .. }));
    }

    #[test]
    fn create_failures_name_possible_orphans() {
        let (f, orphan) = create_failure(
            &PbxError::Refused {
                status: 403,
                message: "You do not have permission.".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Fatal, false));
        assert!(f.message.contains("may not create applications"));
        let (f, orphan) = create_failure(
            &PbxError::Protocol {
                reason: "fields received: app_key, app_password".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Stuck, true));
        assert!(f.message.contains("\"app 1\"") && f.message.contains("app_key"));
        let (f, orphan) = create_failure(
            &PbxError::Transient {
                reason: "HTTP 503".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Retry(None), true));
        let (_, orphan) = create_failure(
            &PbxError::Throttled {
                retry_after: std::time::Duration::from_secs(1),
            },
            "a",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert!(!orphan);
    }

    #[test]
    fn rejected_new_app_ends_the_flow_other_token_failures_wait() {
        let f = token_failure(
            &FetchFailure::Pbx(PbxError::CredentialsRejected {
                status: 401,
                error: None,
                description: None,
            }),
            "n",
            "cid",
            &id(),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Fatal);
        let f = token_failure(
            &FetchFailure::Pbx(PbxError::Transient { reason: "x".into() }),
            "n",
            "cid",
            &id(),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Retry(None));
        assert!(f.message.contains("is stored"));
    }

    #[test]
    fn denial_and_orphan_texts() {
        assert!(denial_message("access_denied", None).contains("denied access"));
        let m = denial_message("<script>x</script>", Some("a\nb"));
        assert!(!m.contains('<') && !m.contains('\n'), "{m}");
        assert_eq!(orphan_note(&[]), None);
        assert!(orphan_note(&["a b".into()]).unwrap().contains("\"a b\""));
    }
}
