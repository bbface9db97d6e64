//! The six steps of the flow and what each PBX failure means for it:
//! 1 exchange the code (through the host limiter), 2 create the trusted app,
//! 3 store its credentials, 4 get its first token (through the limiter),
//! 5 read the PBX user with it, 6 put it in use. Each step commits its
//! outcome before the next starts; a failed step records why (on the flow
//! and the tenant's last_error) and either waits to be retried or ends the
//! flow.
//!
//! Does not: find flows or take the per-tenant lock (mod.rs does), or
//! decide what a PBX error means (failures.rs does).

use rand::Rng;

use super::failures::{
    create_failure, exchange_failure, orphan_note, token_failure, Failure, Outcome,
};
use super::{authorize, Onboarding, OnboardingError};
use crate::clock::UnixMs;
use crate::domain::{AccessToken, AppCredentials, Tenant, TenantId, TenantState};
use crate::pbx::PbxError;
use crate::store::{CachedTenant, Flow, FlowCompletion, FlowStep, FlowUpdate, StoreError};

/// A token this close to expiry is not used to read the PBX user...
const MIN_TOKEN_VALIDITY_MS: i64 = 5_000;

/// ...unless its whole life is shorter: then half of its life is enough.
/// A fixed margin of at least the lifetime made every new token "too old"
/// at once, and the flow fetched tokens in a loop forever (the kill -9
/// campaign's 5-second tokens found it).
fn fit_for_user_check(token: &AccessToken, now: UnixMs) -> bool {
    token.valid_for(now, MIN_TOKEN_VALIDITY_MS.min(token.lifetime_ms() / 2))
}
/// Storing the new app is retried: its secret exists nowhere else.
const STORE_ATTEMPTS: u32 = 3;

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
        // The flow's values were checked against the URL read with them;
        // the tenant was read afterwards. Send only if it is the same one.
        if flow.base_url != tenant.base_url.as_str() {
            let f = Failure::new(
                Outcome::Stuck,
                format!(
                    "the pbx_base_url of tenant {} changed while its authorization flow was being read ({:?}, then {:?}); nothing was sent; call CompleteAuthorization(tenant_id={}) again",
                    tenant.id, flow.base_url, tenant.base_url.as_str(), tenant.id
                ),
            );
            let update = Self::update_for(&f, None);
            return Err(self.fail(&tenant.id, update, f).await);
        }
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
        match self.store.advance_flow(id, update, self.now()).await {
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
        let (public, redirect_uri) = self.store.public_credentials(id).await?.ok_or_else(|| {
            OnboardingError::FailedPrecondition(format!(
                "tenant {id} has no public app any more; register it again with public_app"
            ))
        })?;
        let issued_at = self.now();
        let result = self
            .pbx
            .authorization_code(base, &public, code, &redirect_uri)
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
        self.store
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
        self.store
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
        self.store
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
            match self.store.advance_flow(id, update, self.now()).await {
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
        match self.pbx.client_credentials(&tenant.base_url, &app).await {
            Ok(grant) => {
                let token = self.broker.token_from_grant(grant, issued_at);
                let update = FlowUpdate::TokenObtained {
                    token: token.clone(),
                };
                self.store.advance_flow(id, update, self.now()).await?;
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
            Some(t) if fit_for_user_check(t, now) => t.clone(),
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
                self.store.advance_flow(id, update, self.now()).await?;
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
                let t = self.store.complete_flow(&id, completion, now).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn token(issued: i64, life_ms: i64) -> AccessToken {
        AccessToken {
            value: Secret::new("t".to_owned()),
            token_type: "Bearer".into(),
            issued_at: UnixMs(issued),
            expires_at: UnixMs(issued + life_ms),
        }
    }

    #[test]
    fn a_fresh_short_lived_token_is_fit_to_read_the_user() {
        // 5-second tokens: fit for the first half of their life only.
        let t = token(1_000, 5_000);
        assert!(fit_for_user_check(&t, UnixMs(1_010)));
        assert!(fit_for_user_check(&t, UnixMs(3_400)));
        assert!(!fit_for_user_check(&t, UnixMs(3_600)));
        // One-hour tokens: fit until 5 s before expiry.
        let t = token(0, 3_600_000);
        assert!(fit_for_user_check(&t, UnixMs(3_594_000)));
        assert!(!fit_for_user_check(&t, UnixMs(3_596_000)));
        // A token without a life is never fit.
        assert!(!fit_for_user_check(&token(0, 0), UnixMs(0)));
    }
}
