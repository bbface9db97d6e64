//! A PBX whose error answers echo the request (the simulator's echo fault:
//! the raw URL-encoded body, the bare decoded values, a PHP-style JSON
//! copy; 400/401 `invalid_client` and 500) must not get the request's
//! secrets into anything the daemon says or keeps: CreateTenant errors, a
//! renewal's `last_error`, RefreshTenant errors, CompleteAuthorization
//! errors, the audit log and the daemon's own log lines (the real binary,
//! JSON at trace level). Every check first proves, by asking the simulator
//! directly, that the echo really carries the secret, so none can pass
//! because nothing was echoed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pbx_sim::{EchoEndpoints, EchoFault, EchoForm, Faults, RunningSim};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::{
    self, AppCredentials, BeginAuthorizationRequest, CompleteAuthorizationRequest,
    CreateTenantRequest, GetTenantRequest, ListAuditEventsRequest, ListTenantsRequest,
    RefreshTenantRequest, UpdateTenantRequest,
};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

/// Space, `/`, `+`, `"`, `&`, `=` and a non-ASCII letter: the raw,
/// URL-encoded and JSON-escaped spellings all differ.
const ACTIVE_SECRET: &str = "ActiveCanary4Kq/Wz7b+\"Rt5m\"&ab=\u{fc} Yp3H";
const CREATE_SECRET: &str = "CreateCanary8Jd/Hx2c+\"Lw9n\"&cd=\u{fc} Vq6T";
const PUBLIC_SECRET: &str = "PublicCanary2Mf/Ns5e+\"Gk7r\"&ef=\u{fc} Zb4X";
const REDIRECT: &str = "https://crm.example.com/cb";
const STATUSES: [u16; 3] = [500, 400, 401];

/// Every spelling of `secret` an echo could carry, plus its alphanumeric
/// runs of four or more (a partly redacted secret is a leaked secret).
fn spellings(secret: &str) -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let json = serde_json::to_string(secret).unwrap();
    let mut out = vec![
        secret.to_owned(),
        form.clone(),
        form.replace('+', "%20"),
        json.trim_matches('"').to_owned(),
        php_json(secret),
    ];
    out.extend(
        secret
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|run| run.len() >= 4)
            .map(str::to_owned),
    );
    out
}

/// PHP `json_encode`'s spelling (what the simulator's JSON echo uses),
/// written out here independently: `/` escaped, non-ASCII as `\uXXXX`.
fn php_json(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' => "\\\"".to_owned(),
            '\\' => "\\\\".to_owned(),
            '/' => "\\/".to_owned(),
            c if c.is_ascii() => c.to_string(),
            c => format!("\\u{:04x}", c as u32),
        })
        .collect()
}

/// Fails when `text` holds any spelling of any of `secrets`.
fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        for s in spellings(secret) {
            assert!(
                !text.contains(&s),
                "{what} holds {s:?} (of {secret:?}): {text}"
            );
        }
    }
}

/// Fails unless the PBX text reached `text` and was redacted there.
fn assert_redacted(what: &str, text: &str, secrets: &[&str]) {
    assert_clean(what, text, secrets);
    assert!(
        text.contains("Rejected POST /oauth/token") && text.contains("[redacted]"),
        "{what} does not show the redacted echo: {text}"
    );
}

fn echo(status: u16, form: EchoForm) -> Faults {
    Faults {
        echo: Some(EchoFault {
            status,
            form,
            endpoints: EchoEndpoints::Token,
        }),
        ..Faults::default()
    }
}

/// Posts `form` to the simulator's token endpoint as the daemon does and
/// asserts the error answer echoes every one of `secrets` (in the form's
/// spelling, read from the answer's JSON).
async fn proves_echo(sim: &RunningSim, form: &[(&str, &str)], secrets: &[&str]) {
    let resp = reqwest::Client::new()
        .post(format!("{}/oauth/token", sim.base_url))
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(resp.status().as_u16() >= 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    let text = v["error_description"]
        .as_str()
        .or(v["message"].as_str())
        .unwrap()
        .to_owned();
    for secret in secrets {
        assert!(
            spellings(secret)[..5]
                .iter()
                .any(|s| text.contains(s.as_str())),
            "the simulator did not echo {secret:?}: {text}"
        );
    }
}

/// The daemon binary; killed if the test ends without stopping it.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status_text(s: &tonic::Status) -> String {
    format!("{s:?} {}", s.message())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_never_reach_errors_audit_or_logs() {
    let sim = sim_with_lifetime(3).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = true\nallow_private_addresses = true\nrequest_timeout_ms = 1000\n[log]\nformat = \"json\"\nlevel = \"trace\"\n[refresh]\nbackoff_initial_ms = 100\nbackoff_max_ms = 300\n",
            state.display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut daemon = Daemon(Some(
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    ));
    let child = daemon.0.as_mut().expect("the daemon was just started");
    let (channel, admin_key) = connect_with_admin_key(port, child, &state).await;
    let admin =
        || AdminServiceClient::with_interceptor(channel.clone(), Bearer::new(Some(&admin_key)));
    let get_tenant = |id: &'static str| {
        let mut a = admin();
        async move {
            a.get_tenant(GetTenantRequest {
                tenant_id: id.into(),
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let app = |id: &str, secret: &str| AppCredentials {
        client_id: id.into(),
        client_secret: secret.into(),
    };

    // A healthy start: one ACTIVE tenant, one waiting for authorization.
    sim.sim
        .add_trusted_app(Some("echo-active"), Some(ACTIVE_SECRET))
        .unwrap();
    sim.sim
        .add_trusted_app(Some("echo-create"), Some(CREATE_SECRET))
        .unwrap();
    sim.sim
        .add_public_app(Some("echo-public"), Some(PUBLIC_SECRET), REDIRECT)
        .unwrap();
    let t = admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: "acme".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(app("echo-active", ACTIVE_SECRET)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    let t = admin()
        .create_tenant(CreateTenantRequest {
            tenant_id: "pending".into(),
            pbx_base_url: sim.base_url.clone(),
            public_app: Some(app("echo-public", PUBLIC_SECRET)),
            redirect_uri: REDIRECT.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.state, proto::TenantState::PendingAuthorization as i32);
    let all_secrets = [ACTIVE_SECRET, CREATE_SECRET, PUBLIC_SECRET];
    let cc = |id: &'static str, secret: &'static str| {
        [
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ]
    };

    // (c) The scheduled renewal of the ACTIVE tenant meets the echo.
    sim.sim.set_faults(echo(500, EchoForm::Values));
    proves_echo(&sim, &cc("echo-active", ACTIVE_SECRET), &[ACTIVE_SECRET]).await;
    eventually(
        Duration::from_secs(10),
        "a renewal to meet the echo",
        || async { get_tenant("acme").await.last_error.contains("Rejected") },
    )
    .await;
    let last = get_tenant("acme").await.last_error;
    assert_redacted("acme's last_error after a renewal", &last, &all_secrets);

    // (c) RefreshTenant, every form and status; then last_error again.
    for status in STATUSES {
        for form in EchoForm::ALL {
            let what = format!("RefreshTenant under echo {status} {form:?}");
            if status != 500 {
                // A rejection parks the tenant: give it its credentials
                // back (verified with a healthy PBX) so this refresh runs.
                sim.sim.clear_faults();
                admin()
                    .update_tenant(UpdateTenantRequest {
                        tenant_id: "acme".into(),
                        trusted_app: Some(app("echo-active", ACTIVE_SECRET)),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
            sim.sim.set_faults(echo(status, form));
            proves_echo(&sim, &cc("echo-active", ACTIVE_SECRET), &[ACTIVE_SECRET]).await;
            let err = admin()
                .refresh_tenant(RefreshTenantRequest {
                    tenant_id: "acme".into(),
                })
                .await
                .unwrap_err();
            // A rejection answers with the tenant's new state, not the
            // PBX's words; those are in last_error.
            if status == 500 {
                assert_redacted(&what, &status_text(&err), &all_secrets);
            } else {
                assert_clean(&what, &status_text(&err), &all_secrets);
            }
            let last = get_tenant("acme").await.last_error;
            assert_redacted(&format!("last_error after {what}"), &last, &all_secrets);
        }
    }

    // (a) CreateTenant with a trusted app whose first token meets the echo.
    for status in STATUSES {
        for form in EchoForm::ALL {
            sim.sim.set_faults(echo(status, form));
            proves_echo(&sim, &cc("echo-create", CREATE_SECRET), &[CREATE_SECRET]).await;
            let err = admin()
                .create_tenant(CreateTenantRequest {
                    tenant_id: "beta".into(),
                    pbx_base_url: sim.base_url.clone(),
                    trusted_app: Some(app("echo-create", CREATE_SECRET)),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            let what = format!("CreateTenant under echo {status} {form:?}");
            assert_redacted(&what, &status_text(&err), &all_secrets);
        }
    }

    // (d) The code exchange of an authorization flow meets the echo: the
    // flow stays open, so one state and code serve every attempt (the
    // echo answers before the simulator would consume the code).
    sim.sim.clear_faults();
    let begun = admin()
        .begin_authorization(BeginAuthorizationRequest {
            tenant_id: "pending".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let code = sim.sim.approve("echo-public", REDIRECT).unwrap();
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", "echo-public"),
        ("client_secret", PUBLIC_SECRET),
    ];
    let flow_secrets = [ACTIVE_SECRET, CREATE_SECRET, PUBLIC_SECRET, code.as_str()];
    for status in STATUSES {
        for form in EchoForm::ALL {
            let what = format!("CompleteAuthorization under echo {status} {form:?}");
            sim.sim.set_faults(echo(status, form));
            proves_echo(&sim, &exchange, &[PUBLIC_SECRET, &code]).await;
            let err = admin()
                .complete_authorization(CompleteAuthorizationRequest {
                    state: begun.state.clone(),
                    tenant_id: String::new(),
                    code: code.clone(),
                })
                .await
                .unwrap_err();
            assert_redacted(&what, &status_text(&err), &flow_secrets);
            let last = get_tenant("pending").await.last_error;
            assert_clean(&format!("last_error after {what}"), &last, &flow_secrets);
        }
    }
    let last = get_tenant("pending").await.last_error;
    assert_redacted("pending's last_error", &last, &flow_secrets);

    // (b) What an operator reads, then the daemon's own log.
    sim.sim.clear_faults();
    let audit = admin()
        .list_audit_events(ListAuditEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let audit = format!("{audit:?}");
    assert!(audit.contains("[redacted]"), "{audit}");
    assert_clean("the audit log", &audit, &flow_secrets);
    let listing = admin()
        .list_tenants(ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_clean("the tenant listing", &format!("{listing:?}"), &flow_secrets);

    let child = daemon.0.take().unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut child = child;
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || child.wait().unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(status.success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.contains("Rejected POST /oauth/token"), "{logs}");
    assert!(logs.contains("[redacted]"), "{logs}");
    for (n, line) in logs.lines().enumerate() {
        assert_clean(&format!("log line {}", n + 1), line, &flow_secrets);
    }
}
