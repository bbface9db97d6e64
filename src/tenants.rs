//! Tenant administration use cases: create, read, list, update, delete,
//! refresh. Validates input into domain types, talks to the PBX (through the
//! per-host limiter: `pbx::gated`) before anything is stored, then keeps the
//! store and the broker's cache in step. Its store, clock and gated PBX
//! client come in [`TenantsParts`], not through the broker.
//!
//! Does not: know protobuf (api/admin.rs translates) or SQL (store/).

use std::sync::Arc;

use crate::broker::{Broker, TokenError};
use crate::clock::{SharedClock, UnixMs};
use crate::domain::{
    validate_display_name, AccessToken, AppCredentials, HostPattern, PbxBaseUrl, Tenant, TenantId,
    TenantState, UrlPolicy, ValidationError,
};
use crate::pbx::gated::{FetchFailure, GatedPbx};
use crate::pbx::PbxError;
use crate::renewal::capacity;
use crate::replicas::ReplicaConfirm;
use crate::store::{CachedTenant, NewTenant, Store, StoreError, TenantChanges};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("tenant {0} is not registered")]
    NotFound(String),
    #[error("tenant {0} already exists; use UpdateTenant to change it or DeleteTenant first")]
    AlreadyExists(String),
    /// The request is fine but the tenant or the PBX is not in a state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The PBX could not be reached; nothing was changed.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_at: Option<UnixMs>,
    },
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TenantExists(id) => AdminError::AlreadyExists(id),
            StoreError::TenantNotFound(id) => AdminError::NotFound(id),
            other => AdminError::Store(other),
        }
    }
}

/// CreateTenant input, as plain strings from the API layer.
#[derive(Debug, Default)]
pub struct CreateTenantInput {
    pub tenant_id: String,
    pub display_name: String,
    pub pbx_base_url: String,
    /// (client_id, client_secret)
    pub trusted_app: Option<(String, String)>,
    pub public_app: Option<(String, String)>,
    pub redirect_uri: String,
}

/// UpdateTenant input; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct UpdateTenantInput {
    pub tenant_id: String,
    pub display_name: Option<String>,
    pub pbx_base_url: Option<String>,
    pub trusted_app: Option<(String, String)>,
    pub enabled: Option<bool>,
}

pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    pub next_page_token: String,
    pub warnings: Vec<String>,
}

/// Numbers the capacity warning needs (from config; replaced on SIGHUP).
#[derive(Debug, Clone, Copy)]
pub struct CapacitySettings {
    pub default_lifetime_secs: u64,
    pub at_fraction: f64,
    pub per_host_rps: u32,
}

/// What [`Tenants`] works with, handed over when it is built.
pub struct TenantsParts {
    /// The cache kept in step with each change; forced refreshes.
    pub broker: Arc<Broker>,
    pub store: Store,
    pub clock: SharedClock,
    /// A new trusted app's first token goes through the per-host limiter.
    pub pbx: Arc<GatedPbx>,
}

pub struct Tenants {
    broker: Arc<Broker>,
    store: Store,
    clock: SharedClock,
    pbx: Arc<GatedPbx>,
    url_policy: UrlPolicy,
    capacity: std::sync::RwLock<CapacitySettings>,
    /// `[pbx] allowed_hosts`; empty allows every host. Replaced on SIGHUP.
    allowed_hosts: std::sync::RwLock<Arc<Vec<HostPattern>>>,
    /// Several replicas: updates and deletes return once the others
    /// applied them (`crate::replicas`). Unset: nothing to wait for.
    confirm: std::sync::OnceLock<ReplicaConfirm>,
}

const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

impl Tenants {
    pub fn new(parts: TenantsParts, url_policy: UrlPolicy, capacity: CapacitySettings) -> Self {
        let TenantsParts {
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
            url_policy,
            capacity: std::sync::RwLock::new(capacity),
            allowed_hosts: std::sync::RwLock::new(Arc::new(Vec::new())),
            confirm: std::sync::OnceLock::new(),
        }
    }

    pub fn set_allowed_hosts(&self, hosts: Vec<HostPattern>) {
        *self
            .allowed_hosts
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
    }

    /// A base URL parsed with the URL policy and checked against the allow list.
    fn base_url(&self, url: &str) -> Result<PbxBaseUrl, ValidationError> {
        let parsed = PbxBaseUrl::parse(url, self.url_policy)?;
        let allowed = self
            .allowed_hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !allowed.is_empty() && !allowed.iter().any(|p| p.matches(parsed.host_name())) {
            return Err(ValidationError::new(
                "pbx_base_url",
                format!(
                    "host {} is not in [pbx] allowed_hosts; ask the operator to add it",
                    parsed.host_name()
                ),
            ));
        }
        Ok(parsed)
    }

    pub fn set_capacity(&self, c: CapacitySettings) {
        *self.capacity.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    fn now(&self) -> UnixMs {
        self.clock.now()
    }

    pub async fn create(&self, input: CreateTenantInput) -> Result<Tenant, AdminError> {
        let id = TenantId::parse(&input.tenant_id)?;
        validate_display_name(&input.display_name)?;
        let base_url = self.base_url(&input.pbx_base_url)?;
        if self.store.get_tenant(&id).await?.is_some() {
            return Err(AdminError::AlreadyExists(id.to_string()));
        }
        let now = self.now();
        let new = match (input.trusted_app, input.public_app) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "trusted_app",
                    "give either trusted_app (existing trusted application) or public_app (authorization flow), not both",
                )
                .into())
            }
            (None, None) => {
                return Err(ValidationError::new(
                    "trusted_app",
                    "is required (or public_app with redirect_uri for the authorization flow)",
                )
                .into())
            }
            (Some((cid, secret)), None) => {
                let creds = AppCredentials::parse("trusted_app", &cid, &secret)?;
                // The first token proves the credentials before anything is stored.
                let token = self.first_token(&base_url, &creds).await?;
                let renew_at = self
                    .broker
                    .settings()
                    .policy
                    .renew_at(&token, self.broker.jitter());
                NewTenant {
                    id: id.clone(),
                    display_name: input.display_name,
                    base_url,
                    state: TenantState::Active,
                    trusted_app: Some(creds),
                    public_app: None,
                    token: Some(token),
                    renew_at: Some(renew_at),
                    now,
                }
            }
            (None, Some((cid, secret))) => {
                let creds = AppCredentials::parse("public_app", &cid, &secret)?;
                let redirect = validate_redirect_uri(&input.redirect_uri)?;
                NewTenant {
                    id: id.clone(),
                    display_name: input.display_name,
                    base_url,
                    state: TenantState::PendingAuthorization,
                    trusted_app: None,
                    public_app: Some((creds, redirect)),
                    token: None,
                    renew_at: None,
                    now,
                }
            }
        };
        let cached = CachedTenant {
            id: new.id.clone(),
            base_url: new.base_url.clone(),
            state: new.state,
            token: new.token.clone(),
        };
        self.store.insert_tenant(new).await?;
        self.broker.upsert_slot(cached);
        tracing::info!(tenant = %id, "tenant created");
        self.get(&input.tenant_id).await
    }

    /// A token for credentials not stored yet (create, credential change).
    async fn first_token(
        &self,
        base: &PbxBaseUrl,
        creds: &AppCredentials,
    ) -> Result<AccessToken, AdminError> {
        let issued_at = self.now();
        match self.pbx.client_credentials(base, creds).await {
            Ok(grant) => Ok(self.broker.token_from_grant(grant, issued_at)),
            Err(FetchFailure::Pbx(e @ PbxError::CredentialsRejected { .. })) => {
                Err(AdminError::FailedPrecondition(format!(
                    "{e}; nothing was stored: check the trusted app's client_id and client_secret"
                )))
            }
            Err(FetchFailure::Pbx(
                e @ (PbxError::Refused { .. }
                | PbxError::Protocol { .. }
                | PbxError::Misconfigured { .. }),
            )) => Err(AdminError::FailedPrecondition(format!(
                "{e}; nothing was stored: check pbx_base_url points at the PBX API"
            ))),
            Err(f @ FetchFailure::HostThrottled { until }) => Err(AdminError::Unavailable {
                reason: format!(
                    "{}; nothing was stored, try again after {until}",
                    f.describe()
                ),
                retry_at: Some(until),
            }),
            Err(f) => Err(AdminError::Unavailable {
                reason: format!(
                    "could not get a first token: {}; nothing was stored, try again",
                    f.describe()
                ),
                retry_at: None,
            }),
        }
    }

    pub async fn get(&self, tenant_id: &str) -> Result<Tenant, AdminError> {
        let id = TenantId::parse(tenant_id)?;
        let mut tenant = self
            .store
            .get_tenant(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
        self.broker.overlay_unstored(&mut tenant);
        Ok(tenant)
    }

    pub async fn list(
        &self,
        page_size: u32,
        page_token: &str,
        state: Option<TenantState>,
    ) -> Result<TenantPage, AdminError> {
        let limit = match page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(TenantId::parse(page_token).map_err(|_| {
                ValidationError::new(
                    "page_token",
                    "is not a token from a previous ListTenants answer",
                )
            })?)
        };
        let first_page = after.is_none();
        let mut tenants = self.store.list_tenants(after, limit + 1, state).await?;
        for t in &mut tenants {
            self.broker.overlay_unstored(t);
        }
        let next_page_token = if tenants.len() > limit as usize {
            tenants.truncate(limit as usize);
            tenants.last().map(|t| t.id.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        // Warnings are about every tenant, not a page: the first page says
        // them, and a listing of 100,000 tenants does not read every
        // host's load a thousand times.
        let warnings = if first_page {
            self.capacity_warnings().await?
        } else {
            Vec::new()
        };
        Ok(TenantPage {
            tenants,
            next_page_token,
            warnings,
        })
    }

    pub async fn capacity_warnings(&self) -> Result<Vec<String>, AdminError> {
        let c = *self.capacity.read().unwrap_or_else(|p| p.into_inner());
        let loads = self.store.host_loads().await?;
        Ok(capacity::warnings(
            &loads,
            c.default_lifetime_secs,
            c.at_fraction,
            c.per_host_rps,
        ))
    }

    /// Makes updates and deletes wait for the other replicas.
    pub fn set_confirm(&self, confirm: ReplicaConfirm) {
        let _ = self.confirm.set(confirm);
    }

    async fn confirmed(&self, what: &str) {
        if let Some(c) = self.confirm.get() {
            c.after_write(what).await;
        }
    }

    pub async fn update(&self, input: UpdateTenantInput) -> Result<Tenant, AdminError> {
        let id = TenantId::parse(&input.tenant_id)?;
        let current = self
            .store
            .get_tenant(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound(id.to_string()))?;
        let mut changes = TenantChanges::default();
        if let Some(name) = input.display_name {
            validate_display_name(&name)?;
            changes.display_name = Some(name);
        }
        let base_url = match &input.pbx_base_url {
            Some(u) => {
                let parsed = self.base_url(u)?;
                changes.base_url = Some(parsed.clone());
                parsed
            }
            None => current.base_url.clone(),
        };
        let enabling = input.enabled == Some(true) && current.state == TenantState::Disabled;
        if input.enabled == Some(false) {
            changes.state = Some(TenantState::Disabled);
            changes.clear_job = true;
        }
        let now = self.now();
        let policy = self.broker.settings().policy.clone();
        let new_token = match input.trusted_app {
            Some((cid, secret)) => {
                let creds = AppCredentials::parse("trusted_app", &cid, &secret)?;
                if input.pbx_base_url.is_none() {
                    self.check_stored_url(&id, &base_url).await?;
                }
                // New credentials replace the old ones only once they work.
                let token = self.first_token(&base_url, &creds).await?;
                changes.trusted_app = Some(creds);
                Some(token)
            }
            None => None,
        };
        if let Some(token) = &new_token {
            changes.token = Some(token.clone());
            // Read before the fetch: the write is refused if another token
            // was stored since (see `TenantChanges::check_token_swap`).
            changes.replaces_token_expiring = current.token_expires_at;
            changes.clear_failures = true;
            if input.enabled != Some(false) {
                changes.state = Some(TenantState::Active);
                changes.renew_at = Some(policy.renew_at(token, self.broker.jitter()));
                changes.clear_job = false;
            }
        } else if enabling {
            if current.trusted_client_id.is_none() {
                changes.state = Some(TenantState::PendingAuthorization);
            } else {
                // Renew right away; the renewal sets the real state.
                changes.state = Some(TenantState::Active);
                changes.renew_at = Some(now);
                changes.clear_failures = true;
            }
        } else if changes.base_url.is_some() && current.state.is_renewing() {
            // A new address deserves a token from it soon.
            changes.renew_at = Some(now);
        }
        let updated = self.store.update_tenant(&id, changes, now).await?;
        self.broker.upsert_slot(CachedTenant {
            id: id.clone(),
            base_url: updated.base_url.clone(),
            state: updated.state,
            token: new_token,
        });
        tracing::info!(tenant = %id, state = %updated.state, "tenant updated");
        self.confirmed(&format!("UpdateTenant {id}")).await;
        Ok(updated)
    }

    /// New credentials are about to go to the stored base URL: only if the
    /// stored credentials prove that URL is the one they were sealed with
    /// (an edited database must not redirect the new secret either).
    async fn check_stored_url(&self, id: &TenantId, url: &PbxBaseUrl) -> Result<(), AdminError> {
        match self.store.verify_credentials(id).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_credential_fault() => Err(AdminError::FailedPrecondition(format!(
                "{e}. The new trusted_app would be sent to the stored pbx_base_url {}, which cannot be verified: give pbx_base_url in the same UpdateTenant; nothing was changed",
                url.as_str()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, tenant_id: &str) -> Result<(), AdminError> {
        let id = TenantId::parse(tenant_id)?;
        self.store.delete_tenant(&id, self.clock.now()).await?;
        self.broker.remove_slot(&id);
        tracing::info!(tenant = %id, "tenant deleted; its credentials and tokens were wiped");
        self.confirmed(&format!("DeleteTenant {id}")).await;
        Ok(())
    }

    /// A forced refresh. When it fails while a valid token is held, the
    /// answer says so: the token is still served (GetToken keeps working),
    /// only the refresh failed.
    pub async fn refresh(&self, tenant_id: &str) -> Result<Arc<AccessToken>, AdminError> {
        match self.broker.force_refresh(tenant_id).await {
            Ok(t) => Ok(t),
            Err(TokenError::Unavailable {
                tenant,
                reason,
                retry_at,
            }) => {
                let now = self.clock.now();
                let held = self
                    .broker
                    .watch(tenant_id)
                    .ok()
                    .and_then(|w| w.tokens.borrow().clone())
                    .filter(|t| t.valid_for(now, 0));
                match held {
                    Some(t) => Err(AdminError::Unavailable {
                        reason: format!(
                            "the refresh of tenant {tenant} failed: {reason}; the held token is still served (valid until {}){}",
                            t.expires_at,
                            retry_at
                                .map(|at| format!("; next attempt at {at}"))
                                .unwrap_or_default()
                        ),
                        retry_at,
                    }),
                    None => Err(TokenError::Unavailable {
                        tenant,
                        reason,
                        retry_at,
                    }
                    .into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The redirect URI registered with the public app: absolute http(s), no fragment.
fn validate_redirect_uri(s: &str) -> Result<String, ValidationError> {
    const FIELD: &str = "redirect_uri";
    if s.is_empty() {
        return Err(ValidationError::new(FIELD, "is required with public_app"));
    }
    if s.len() > 2048 {
        return Err(ValidationError::new(
            FIELD,
            "is longer than 2048 characters",
        ));
    }
    let url = url::Url::parse(s)
        .map_err(|e| ValidationError::new(FIELD, format!("{s:?} is not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(ValidationError::new(
            FIELD,
            "must be an http:// or https:// URL",
        ));
    }
    if url.fragment().is_some() {
        return Err(ValidationError::new(
            FIELD,
            "must not contain a fragment (#...)",
        ));
    }
    Ok(s.to_owned())
}
