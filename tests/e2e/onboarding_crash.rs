//! The real `pbx-tokend` binary SIGKILLed after each of the six onboarding
//! steps, then restarted: the flow resumes by itself and completes, with
//! exactly one trusted app in use, and an app that may exist without its
//! answer stored named on the tenant and in the log. The test hook
//! `PBX_TOKEND_TEST_CRASH_AFTER_STEP=N` parks the flow right after step N so
//! the kill lands exactly there (see src/onboarding/crash_hook.rs).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbx_tokend::onboarding::{CRASH_HOOK_VAR, CRASH_MARKER};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::{self, AppCredentials, CreateTenantRequest};
use tonic::transport::Channel;

use crate::harness::*;
use crate::onboarding::REDIRECT;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// One run of the binary, its stderr collected line by line (also used
/// by `flow_tamper`).
pub(crate) struct Proc {
    child: Child,
    pub(crate) logs: Arc<Mutex<Vec<String>>>,
    channel: Channel,
    /// The daemon's bootstrap admin key.
    key: String,
}

impl Proc {
    pub(crate) async fn start(
        config: &std::path::Path,
        port: u16,
        crash_after: Option<u8>,
    ) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["--config", config.to_str().unwrap()])
            .env_remove(CRASH_HOOK_VAR)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(n) = crash_after {
            cmd.env(CRASH_HOOK_VAR, n.to_string());
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let channel = match try_connect_when_listening(port, &mut child).await {
            Ok(channel) => channel,
            Err(why) => panic!("{why}; logs: {logs:?}"),
        };
        let state_dir = config.parent().unwrap().join("state");
        let key = wait_for_admin_key(&state_dir, &channel).await;
        Proc {
            child,
            logs,
            channel,
            key,
        }
    }

    pub(crate) fn admin(&self) -> AdminClient {
        AdminServiceClient::with_interceptor(self.channel.clone(), Bearer::new(Some(&self.key)))
    }

    fn tokens(&self) -> TokenClient {
        TokenServiceClient::with_interceptor(self.channel.clone(), Bearer::new(Some(&self.key)))
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub(crate) async fn tenant(&self, id: &str) -> proto::Tenant {
        self.admin()
            .get_tenant(proto::GetTenantRequest {
                tenant_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub(crate) fn kill(mut self) -> String {
        // Child::kill is SIGKILL on Unix: no shutdown code runs.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.logs()
    }
}

async fn killed_after_step(step: u8) {
    let sim = sim_with_lifetime(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();

    let first = Proc::start(&config, port, Some(step)).await;
    let public = sim.sim.add_public_app(None, None, REDIRECT).unwrap();
    first
        .admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: "crash".into(),
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
            tenant_id: "crash".into(),
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

    let second = Proc::start(&config, port, None).await;
    let mut tenant = second.tenant("crash").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tenant.state != proto::TenantState::Active as i32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "step {step}: not resumed: {tenant:?}\n{}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        tenant = second.tenant("crash").await;
    }
    let created = sim.sim.created_apps();
    // A second app only when the first one's answer was never stored.
    assert_eq!(
        created.len(),
        if step == 2 { 2 } else { 1 },
        "step {step}: {created:?}"
    );
    assert_eq!(
        tenant.trusted_client_id,
        created.last().unwrap().1,
        "step {step}"
    );
    let token = second
        .tokens()
        .get_token(proto::GetTokenRequest {
            tenant_id: "crash".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sim.sim.issued_token_valid(&token.access_token));
    assert!(tenant.pbx_user.is_some());
    let logs = second.kill();
    if step == 2 {
        // The app that may exist without its answer is named for the operator.
        let lost = &created[0].0;
        assert!(
            tenant.last_error.contains(lost.as_str()),
            "{}",
            tenant.last_error
        );
        assert!(logs.contains(lost.as_str()), "{logs}");
    } else {
        assert!(
            tenant.last_error.is_empty(),
            "step {step}: {}",
            tenant.last_error
        );
    }
    assert!(!logs.contains(&public.client_secret) && !logs.contains(&token.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_1_code_exchanged() {
    killed_after_step(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_2_app_created_answer_not_stored() {
    killed_after_step(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_3_app_stored() {
    killed_after_step(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_4_first_token() {
    killed_after_step(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_5_user_verified() {
    killed_after_step(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_step_6_activated() {
    killed_after_step(6).await;
}
