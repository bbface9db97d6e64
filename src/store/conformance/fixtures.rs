//! Sample values the conformance cases share: a keyring, times, tenants,
//! tokens, apps, a PBX user, and plain views of a flow and a tenant that
//! compare whole (secrets exposed, so "nothing changed" means nothing).
//! The SQLite backend's own unit tests use the same samples
//! (`store/sqlite/testutil.rs` re-exports them).

use std::sync::Arc;

use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, PbxUser, TenantId, TenantState};
use crate::secret::Secret;
use crate::store::{Flow, FlowStep, NewTenant, Store};

pub(crate) const T0: UnixMs = UnixMs(1_700_000_000_000);
pub(crate) const SECOND: i64 = 1_000;
pub(crate) const HOUR: i64 = 3_600_000;

/// The same key in every case, so a reopened store can read what it wrote.
pub(crate) fn keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[7; 32]))
}

/// A key the data was not sealed with.
pub(crate) fn other_keys() -> Arc<Keyring> {
    Arc::new(Keyring::from_key(&[8; 32]))
}

pub(crate) fn tid(s: &str) -> TenantId {
    TenantId::parse(s).expect("a valid test tenant id")
}

pub(crate) fn base_url(host: &str) -> PbxBaseUrl {
    PbxBaseUrl::from_trusted(&format!("https://{host}")).expect("a valid test base URL")
}

pub(crate) fn app(id: &str, secret: &str) -> AppCredentials {
    AppCredentials {
        client_id: id.to_owned(),
        client_secret: Secret::new(secret.to_owned()),
    }
}

/// A one-hour Bearer token issued at `issued_at`.
pub(crate) fn token(value: &str, issued_at: UnixMs) -> AccessToken {
    AccessToken {
        value: Secret::new(value.to_owned()),
        token_type: "Bearer".into(),
        issued_at,
        expires_at: issued_at.plus_ms(HOUR),
    }
}

/// A tenant on `pbx.example.com`. Renewing states come with a trusted app
/// (`app-<id>` / `secret-<id>`), a token `token-<id>` issued at T0 and a
/// job due 48 minutes later; others bare.
pub(crate) fn new_tenant(id: &str, state: TenantState) -> NewTenant {
    let renewing = state.is_renewing();
    NewTenant {
        id: tid(id),
        display_name: format!("Tenant {id}"),
        base_url: base_url("pbx.example.com"),
        state,
        trusted_app: renewing.then(|| app(&format!("app-{id}"), &format!("secret-{id}"))),
        public_app: None,
        token: renewing.then(|| token(&format!("token-{id}"), T0)),
        renew_at: renewing.then(|| T0.plus_ms(HOUR * 8 / 10)),
        now: T0,
    }
}

/// A tenant waiting for authorization, with its public app
/// (`pub-id` / `pub-secret`, redirect `https://crm/cb`).
pub(crate) fn pending_tenant(id: &str) -> NewTenant {
    let mut n = new_tenant(id, TenantState::PendingAuthorization);
    n.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
    n
}

pub(crate) fn user() -> PbxUser {
    PbxUser {
        id: 20,
        login: "client1".into(),
        client_id: 12,
        admin: true,
        dealer_id: None,
        extension_id: Some(100),
        extension_group_id: None,
    }
}

/// A state's SHA-256 stand-in.
pub(crate) fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

/// One flow with its secrets exposed: two views are equal only if every
/// stored field is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowView {
    pub step: FlowStep,
    pub state_expires_at: UnixMs,
    pub public_token: Option<(String, UnixMs, UnixMs)>,
    pub app_name: Option<String>,
    pub app: Option<(String, String)>,
    pub token: Option<(String, UnixMs, UnixMs)>,
    pub pbx_user: Option<PbxUser>,
    pub orphaned_apps: Vec<String>,
    pub error: Option<String>,
    pub updated_at: UnixMs,
}

impl From<Flow> for FlowView {
    fn from(f: Flow) -> Self {
        let tok = |t: Option<AccessToken>| {
            t.map(|t| (t.value.expose().clone(), t.issued_at, t.expires_at))
        };
        FlowView {
            step: f.step,
            state_expires_at: f.state_expires_at,
            public_token: tok(f.public_token),
            app_name: f.app_name,
            app: f
                .app
                .map(|a| (a.client_id, a.client_secret.expose().clone())),
            token: tok(f.token),
            pbx_user: f.pbx_user,
            orphaned_apps: f.orphaned_apps,
            error: f.error,
            updated_at: f.updated_at,
        }
    }
}

/// The tenant's flow as a view (`None`: no flow).
pub(crate) async fn flow_view(store: &Store, id: &TenantId) -> Option<FlowView> {
    store
        .flow_of(id)
        .await
        .expect("read the flow")
        .map(FlowView::from)
}

/// Everything stored about one tenant, secrets exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TenantView {
    pub state: TenantState,
    pub base_url: String,
    pub trusted: Option<(String, String)>,
    pub public: Option<(String, String, String)>,
    pub token: Option<(String, UnixMs, UnixMs)>,
    pub next_refresh_at: Option<UnixMs>,
    pub last_refresh_at: Option<UnixMs>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub pbx_user: Option<PbxUser>,
    pub updated_at: UnixMs,
    pub flow: Option<FlowView>,
}

pub(crate) async fn tenant_view(store: &Store, id: &TenantId) -> TenantView {
    let t = store
        .get_tenant(id)
        .await
        .expect("read the tenant")
        .expect("the tenant exists");
    let trusted = store
        .trusted_credentials(id)
        .await
        .expect("trusted credentials open")
        .map(|a| (a.client_id, a.client_secret.expose().clone()));
    let public = store
        .public_credentials(id)
        .await
        .expect("public credentials open")
        .map(|(a, r)| (a.client_id, a.client_secret.expose().clone(), r));
    let cached = store.load_cache().await.expect("load the cache");
    let token = cached
        .into_iter()
        .find(|c| &c.id == id)
        .and_then(|c| c.token)
        .map(|t| (t.value.expose().clone(), t.issued_at, t.expires_at));
    TenantView {
        state: t.state,
        base_url: t.base_url.as_str().to_owned(),
        trusted,
        public,
        token,
        next_refresh_at: t.next_refresh_at,
        last_refresh_at: t.last_refresh_at,
        consecutive_failures: t.consecutive_failures,
        last_error: t.last_error,
        pbx_user: t.pbx_user,
        updated_at: t.updated_at,
        flow: flow_view(store, id).await,
    }
}
