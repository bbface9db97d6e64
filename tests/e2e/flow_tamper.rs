//! An authorization flow interrupted after it holds secrets (issue 25, item
//! 5): the real binary is SIGKILLed right after step 1 (the PBX user's
//! token stored) or step 3 (the new trusted app's secret stored too), the
//! tenant's `pbx_base_url` is edited in the database file to point at a
//! second simulator, and the daemon restarted. Nothing reaches the second
//! simulator (its counters stay at 0), the flow and the tenant say which
//! column changed, and UpdateTenant with the right URL lets it finish.

use std::path::PathBuf;
use std::time::Duration;

use pbx_sim::{AppInfo, RunningSim};
use pbx_tokend::onboarding::CRASH_MARKER;
use pbx_tokend::proto::{self, AppCredentials, CreateTenantRequest};
use tonic::Code;

use crate::harness::*;
use crate::onboarding::REDIRECT;
use crate::onboarding_crash::Proc;

/// A daemon killed right after `step` of tenant "flow"'s authorization.
struct Killed {
    sim: RunningSim,
    public: AppInfo,
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl Killed {
    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("state").join("pbx-tokend.db")).unwrap()
    }
}

async fn killed_after(step: u8) -> Killed {
    let sim = sim_with_lifetime(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("state");
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n",
            state.display()
        ),
    )
    .unwrap();

    let first = Proc::start(&config, port, Some(step)).await;
    let public = sim.sim.add_public_app(None, None, REDIRECT).unwrap();
    first
        .admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: "flow".into(),
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
    let b = first
        .admin()
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: "flow".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let mut admin = first.admin();
    let call = tokio::spawn(async move {
        admin
            .complete_authorization(proto::CompleteAuthorizationRequest {
                state: b.state,
                tenant_id: String::new(),
                code,
            })
            .await
    });
    let marker = format!("{CRASH_MARKER}{step}");
    let logs = first.logs.clone();
    eventually(Duration::from_secs(10), "the crash hook to fire", || {
        let found = logs.lock().unwrap().iter().any(|l| l.contains(&marker));
        async move { found }
    })
    .await;
    first.kill();
    call.abort();
    Killed {
        sim,
        public,
        dir,
        config,
        port,
    }
}

async fn edited_url_after_step(step: u8) {
    let k = killed_after(step).await;
    let (sim, public, config, port) = (&k.sim, &k.public, &k.config, k.port);
    let evil = sim_with_lifetime(3600).await;
    let created_before = sim.sim.created_apps().len();
    let db = k.db();
    db.execute(
        "UPDATE tenants SET pbx_base_url = ?1 WHERE tenant_id = 'flow'",
        [&evil.base_url],
    )
    .unwrap();
    drop(db);

    let second = Proc::start(config, port, None).await;
    let err = second
        .admin()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            tenant_id: "flow".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let msg = err.message();
    assert!(msg.contains("pbx_base_url of tenant flow"), "{msg}");
    assert!(msg.contains("authorization flow"), "{msg}");
    assert!(msg.contains("changed outside pbx-tokend"), "{msg}");
    let tenant = second.tenant("flow").await;
    assert_eq!(
        tenant.state,
        proto::TenantState::PendingAuthorization as i32
    );
    assert!(
        tenant.last_error.contains("pbx_base_url of tenant flow"),
        "{}",
        tenant.last_error
    );
    // Nothing reached the edited URL: no token request, no API call (the
    // public token would have gone to POST /api/ver1.0/application/, the
    // new secret to /oauth/token), and the real PBX got nothing new either.
    let s = evil.sim.stats();
    assert_eq!(
        (s.token_requests_total, s.api_requests, s.authorize_requests),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(sim.sim.created_apps().len(), created_before);

    // The way out: the operator sets the right URL; the flow's values are
    // bound to it again and the flow completes without a new code.
    second
        .admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "flow".into(),
            pbx_base_url: Some(sim.base_url.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let t = second
        .admin()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            tenant_id: "flow".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    assert_eq!(sim.sim.created_apps().len(), 1);
    let s = evil.sim.stats();
    assert_eq!((s.token_requests_total, s.api_requests), (0, 0), "{s:?}");
    let logs = second.kill();
    assert!(!logs.contains(&public.client_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_url_after_the_code_exchange_sends_the_public_token_nowhere() {
    edited_url_after_step(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_url_after_the_new_app_is_stored_sends_its_secret_nowhere() {
    edited_url_after_step(3).await;
}

/// The new app's client id edited in the flow's row: its secret would go
/// out under another app's name. Refused with the column named; a new
/// BeginAuthorization replaces that flow and names its app for deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_app_client_id_sends_the_new_secret_nowhere() {
    let k = killed_after(3).await;
    let other = k.sim.sim.add_trusted_app(None, None).unwrap();
    k.db()
        .execute(
            "UPDATE onboarding_flows SET app_client_id = ?1 WHERE tenant_id = 'flow'",
            [&other.client_id],
        )
        .unwrap();
    let created = k.sim.sim.created_apps();
    assert_eq!(created.len(), 1);
    let before = k.sim.sim.stats().token_requests_total;

    let second = Proc::start(&k.config, k.port, None).await;
    let err = second
        .admin()
        .complete_authorization(proto::CompleteAuthorizationRequest {
            tenant_id: "flow".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("app_client_id of tenant flow"),
        "{}",
        err.message()
    );
    assert_eq!(k.sim.sim.token_requests_for(&other.client_id), 0);
    assert_eq!(k.sim.sim.token_requests_for(&created[0].1), 0);
    assert_eq!(k.sim.sim.stats().token_requests_total, before);
    // BeginAuthorization is the way out: the flow is ended unread, the app
    // it created named for deletion.
    second
        .admin()
        .begin_authorization(proto::BeginAuthorizationRequest {
            tenant_id: "flow".into(),
        })
        .await
        .unwrap();
    let tenant = second.tenant("flow").await;
    assert!(
        tenant.last_error.contains("app_client_id")
            && tenant.last_error.contains(created[0].0.as_str()),
        "{}",
        tenant.last_error
    );
    assert_eq!(k.sim.sim.stats().token_requests_total, before);
    let logs = second.kill();
    assert!(logs.contains(created[0].0.as_str()), "{logs}");
    assert!(!logs.contains(&k.public.client_secret));
}
