//! Onboarding through the authorization dialog, against the simulator:
//! the full flow (CompleteAuthorization, the callback listener, the CLI),
//! denial, replayed / expired / superseded states, a reused code, a
//! redirect URI mismatch, 403 on app creation, an unknown app answer, and
//! re-authorization of an ACTIVE tenant. Crash tests: `onboarding_crash.rs`.

use pbx_sim::{AppInfo, AppResponseShape, Faults, RunningSim};
use pbx_tokend::proto::{
    self, AppCredentials, BeginAuthorizationRequest, BeginAuthorizationResponse,
    CompleteAuthorizationRequest, CreateTenantRequest,
};
use tonic::Code;

use crate::harness::*;

pub const REDIRECT: &str = "https://crm.example.com/oauth/callback";

/// Registers `tenant` with a new public app of `sim` (PENDING_AUTHORIZATION).
pub async fn add_pending(
    d: &TestDaemon,
    sim: &RunningSim,
    tenant: &str,
    redirect: &str,
) -> AppInfo {
    let public = sim.sim.add_public_app(None, None, redirect).unwrap();
    let t = d
        .admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: tenant.into(),
            display_name: format!("Tenant {tenant}"),
            pbx_base_url: sim.base_url.clone(),
            public_app: Some(AppCredentials {
                client_id: public.client_id.clone(),
                client_secret: public.client_secret.clone(),
            }),
            redirect_uri: redirect.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, proto::TenantState::PendingAuthorization as i32);
    public
}

pub async fn begin(d: &TestDaemon, tenant: &str) -> BeginAuthorizationResponse {
    d.admin()
        .begin_authorization(BeginAuthorizationRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn complete(
    d: &TestDaemon,
    state: &str,
    tenant: &str,
    code: &str,
) -> Result<proto::Tenant, tonic::Status> {
    d.admin()
        .complete_authorization(CompleteAuthorizationRequest {
            state: state.into(),
            tenant_id: tenant.into(),
            code: code.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn assert_code(r: Result<proto::Tenant, tonic::Status>, code: Code, needle: &str) -> String {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} lacks {needle:?}",
                s.message()
            );
            s.message().to_owned()
        }
        Ok(t) => panic!("expected {code:?}, got tenant in state {}", t.state),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_via_complete_authorization() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    let err = d.get_token("acme").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let b = begin(&d, "acme").await;
    let expected = format!(
        "{}/oauth/authorize?response_type=code&client_id={}&redirect_uri=https%3A%2F%2Fcrm.example.com%2Foauth%2Fcallback&scope=all&state={}",
        sim.base_url, public.client_id, b.state
    );
    assert_eq!(b.authorization_url, expected);
    assert!(b.state.len() >= 22, "state too short for 128 bits");
    let ttl = ts_ms(&b.expires_at) - now_ms();
    assert!((590_000..=600_000).contains(&ttl), "{ttl}");

    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let t = complete(&d, &b.state, "", &code).await.unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    let created = sim.sim.created_apps();
    assert_eq!(created.len(), 1);
    assert!(
        created[0].0.starts_with("pbx-tokend acme "),
        "{}",
        created[0].0
    );
    assert_eq!(t.trusted_client_id, created[0].1);
    assert!(t.pbx_user.as_ref().is_some_and(|u| !u.login.is_empty()));
    assert!(t.next_refresh_at.is_some() && t.token_expires_at.is_some());
    assert!(t.last_error.is_empty(), "{}", t.last_error);

    let token = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&token.access_token));
    assert_eq!(sim.sim.token_requests_for(&created[0].1), 1);

    // Single use: the same state again does nothing.
    assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::FailedPrecondition,
        "already used",
    );
    assert_eq!(sim.sim.created_apps().len(), 1);

    // Only the state's hash is stored.
    let db = std::fs::read(d.config.database_path()).unwrap();
    let wal = std::fs::read(d.config.state_dir.join("pbx-tokend.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes
            .windows(b.state.len())
            .any(|w| w == b.state.as_bytes()));
    }

    let d = d.restart().await;
    assert_eq!(
        d.tenant("acme").await.state,
        proto::TenantState::Active as i32
    );
    assert_eq!(
        d.get_token("acme").await.unwrap().access_token,
        token.access_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_expire_are_single_use_and_superseded() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.onboarding.state_ttl_seconds = 1).await;
    let public = add_pending(&d, &sim, "late", REDIRECT).await;
    let old = begin(&d, "late").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    assert_code(
        complete(&d, &old.state, "", &code).await,
        Code::FailedPrecondition,
        "expired",
    );
    // Nothing happened: no code sent, no app, still pending.
    assert_eq!(sim.sim.token_requests_for(&public.client_id), 0);
    assert!(sim.sim.created_apps().is_empty());
    assert_eq!(
        d.tenant("late").await.state,
        proto::TenantState::PendingAuthorization as i32
    );

    // A new state supersedes the old one; the unused code still works.
    let a = begin(&d, "late").await;
    let b = begin(&d, "late").await;
    assert_code(
        complete(&d, &a.state, "", &code).await,
        Code::FailedPrecondition,
        "not known",
    );
    let t = complete(&d, &b.state, "", &code).await.unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);

    // Bad input is INVALID_ARGUMENT, an unknown tenant NOT_FOUND.
    assert_code(
        complete(&d, "", "", "x").await,
        Code::InvalidArgument,
        "state or tenant_id",
    );
    assert_code(
        complete(&d, "a b", "", "x").await,
        Code::InvalidArgument,
        "state",
    );
    assert_code(
        complete(&d, "", "nobody", "x").await,
        Code::NotFound,
        "nobody",
    );
    let err = d
        .admin()
        .begin_authorization(BeginAuthorizationRequest {
            tenant_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_code_and_redirect_mismatch() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    let b = begin(&d, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    complete(&d, &b.state, "", &code).await.unwrap();
    let first_app = d.tenant("acme").await.trusted_client_id;
    let token = d.get_token("acme").await.unwrap();

    // Re-authorization with the used code: refused, the tenant is untouched.
    let again = begin(&d, "acme").await;
    let msg = assert_code(
        complete(&d, &again.state, "", &code).await,
        Code::FailedPrecondition,
        "expired or was already used",
    );
    assert!(msg.contains("open the authorization URL again"), "{msg}");
    let t = d.tenant("acme").await;
    assert_eq!(t.state, proto::TenantState::Active as i32);
    assert_eq!(t.trusted_client_id, first_app);
    assert_eq!(
        d.get_token("acme").await.unwrap().access_token,
        token.access_token
    );
    // A bad code does not consume the state: a fresh code completes it.
    let fresh = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let t = complete(&d, &again.state, "", &fresh).await.unwrap();
    assert_ne!(t.trusted_client_id, first_app);

    // The public app is registered at the PBX with another redirect URI.
    let other = "https://other.example.com/cb";
    let public = sim.sim.add_public_app(None, None, other).unwrap();
    d.admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: "mismatch".into(),
            pbx_base_url: sim.base_url.clone(),
            public_app: Some(AppCredentials {
                client_id: public.client_id.clone(),
                client_secret: public.client_secret.clone(),
            }),
            redirect_uri: REDIRECT.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = begin(&d, "mismatch").await;
    let code = sim.sim.approve(&public.client_id, other).unwrap();
    assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::FailedPrecondition,
        "redirect URI does not match",
    );
    let t = d.tenant("mismatch").await;
    assert!(t.last_error.contains("redirect"), "{}", t.last_error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_app_creation_ends_the_flow() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    sim.sim.set_faults(Faults {
        forbid_app_creation: true,
        ..Faults::default()
    });
    let b = begin(&d, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let msg = assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::FailedPrecondition,
        "may not create applications",
    );
    assert!(msg.contains("403") && msg.contains("UpdateTenant"), "{msg}");
    let t = d.tenant("acme").await;
    assert_eq!(t.state, proto::TenantState::PendingAuthorization as i32);
    assert!(t.last_error.contains("may not create applications"));
    assert!(sim.sim.created_apps().is_empty());
    // The state is consumed: the flow failed.
    assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::FailedPrecondition,
        "failed",
    );
    assert_code(
        complete(&d, "", "acme", "").await,
        Code::FailedPrecondition,
        "BeginAuthorization",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_application_answer_is_named_and_resumable() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    sim.sim.set_faults(Faults {
        app_response_shape: AppResponseShape::Unknown,
        ..Faults::default()
    });
    let b = begin(&d, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let msg = assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::FailedPrecondition,
        "app_key, app_password",
    );
    let (lost_name, lost_id) = sim.sim.created_apps()[0].clone();
    assert!(msg.contains(&lost_name), "{msg}");
    assert!(
        !msg.contains(&lost_id),
        "the answer's values must not show: {msg}"
    );
    assert!(d.tenant("acme").await.last_error.contains(&lost_name));

    // A restart does not try again by itself (that would leave one more
    // unreadable app in the PBX at every start).
    let d = d.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(sim.sim.created_apps().len(), 1);

    // Resumable without a new code, by tenant or by state.
    sim.sim.clear_faults();
    let t = complete(&d, "", "acme", "").await.unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    let created = sim.sim.created_apps();
    assert_eq!(created.len(), 2);
    assert_eq!(t.trusted_client_id, created[1].1);
    // The app whose answer was unreadable is named for the operator.
    assert!(t.last_error.contains(&lost_name), "{}", t.last_error);
    let token = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&token.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthorization_serves_the_old_token_until_the_new_app_works() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let public = add_pending(&d, &sim, "acme", REDIRECT).await;
    let b = begin(&d, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let first = complete(&d, &b.state, "", &code).await.unwrap();
    let old_token = d.get_token("acme").await.unwrap();
    let mut watch = d
        .tokens()
        .watch_token(proto::WatchTokenRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().access_token,
        old_token.access_token
    );

    // The new app's first token fails: it is stored, not used.
    sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: 503,
        fail_grant_type: Some("client_credentials".into()),
        ..Faults::default()
    });
    let b = begin(&d, "acme").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let msg = assert_code(
        complete(&d, &b.state, "", &code).await,
        Code::Unavailable,
        "is stored",
    );
    let new_app = sim.sim.created_apps()[1].1.clone();
    assert!(msg.contains(&new_app), "{msg}");
    let t = d.tenant("acme").await;
    assert_eq!(t.state, proto::TenantState::Active as i32);
    assert_eq!(t.trusted_client_id, first.trusted_client_id);
    assert_eq!(
        d.get_token("acme").await.unwrap().access_token,
        old_token.access_token
    );
    // The stored app is not thrown away by a new BeginAuthorization.
    let err = d
        .admin()
        .begin_authorization(BeginAuthorizationRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&new_app), "{}", err.message());

    // Resumed: credentials and token are replaced together.
    let t = complete(&d, &b.state, "", "").await.unwrap();
    assert_eq!(t.trusted_client_id, new_app);
    assert_eq!(sim.sim.created_apps().len(), 2);
    let new_token = d.get_token("acme").await.unwrap();
    assert_ne!(new_token.access_token, old_token.access_token);
    assert!(sim.sim.issued_token_valid(&new_token.access_token));
    assert_eq!(
        watch.message().await.unwrap().unwrap().access_token,
        new_token.access_token
    );
    // Renewals use the new app from now on.
    let before = sim.sim.token_requests_for(&new_app);
    d.admin()
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap();
    assert_eq!(sim.sim.token_requests_for(&new_app), before + 1);
}

/// Regression (kill -9 campaign): with tokens shorter than the 5 s margin
/// step 5 wanted, every new token was "too old" at once and the flow
/// fetched tokens in a loop forever. A 5-second token now completes it
/// with exactly one first-token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_completes_with_five_second_tokens() {
    let sim = sim_with_lifetime(5).await;
    let d = TestDaemon::start(|c| c.token.default_min_valid_seconds = 1).await;
    let public = add_pending(&d, &sim, "brief", REDIRECT).await;
    let b = begin(&d, "brief").await;
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let call = complete(&d, &b.state, "", &code);
    let t = tokio::time::timeout(std::time::Duration::from_secs(5), call)
        .await
        .expect("the flow must not loop")
        .unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    let created = sim.sim.created_apps();
    assert_eq!(created.len(), 1);
    assert_eq!(sim.sim.token_requests_for(&created[0].1), 1);
}
