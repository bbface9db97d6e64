//! Webhooks against the real binary: a receiver on loopback (axum) that
//! answers 503 while the daemon is killed with SIGKILL and restarted, then
//! 200; every stored event arrives, in order per tenant, signed over the
//! raw body. And the start-up refusals: a webhook_url without its secret
//! file, an http:// URL without `[pbx] allow_insecure_http`, a secret file
//! others may read. The secret never reaches the log.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use pbx_tokend::proto::admin_service_client::AdminServiceClient;
use pbx_tokend::proto::{
    AppCredentials, CreateTenantRequest, DeleteTenantRequest, UpdateTenantRequest,
    WatchTenantEventsRequest,
};
use serde_json::Value;
use tonic::transport::Channel;

use pbx_sim::RunningSim;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");
const SECRET: &str = "whsec-9f3a-do-not-log-me";

/// What the receiver saw: every request's raw body, signature and content
/// type, and whether it was answered 200. `accept` false: 503 to all;
/// tenants in `refuse` get 503, in `redirect` a 307 to `/elsewhere`.
#[derive(Default)]
struct Seen {
    accept: bool,
    refuse: BTreeSet<String>,
    redirect: BTreeSet<String>,
    requests: Vec<(Bytes, String, String, bool)>,
    elsewhere: usize,
}

type Receiver = Arc<Mutex<Seen>>;

async fn hook(
    State(seen): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let tenant = serde_json::from_slice::<Value>(&body).unwrap_or_default()["tenant_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().unwrap();
    let moved = seen.accept && seen.redirect.contains(&tenant);
    let accept = seen.accept && !seen.refuse.contains(&tenant) && !moved;
    seen.requests.push((
        body,
        header("x-pbx-tokend-signature"),
        header("content-type"),
        accept,
    ));
    if moved {
        (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, "/elsewhere")],
        )
            .into_response()
    } else if accept {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

async fn elsewhere(State(seen): State<Receiver>) -> StatusCode {
    seen.lock().unwrap().elsewhere += 1;
    StatusCode::OK
}

async fn receiver() -> (Receiver, std::net::SocketAddr) {
    let seen: Receiver = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/elsewhere", axum::routing::post(elsewhere))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, addr)
}

fn write_secret(dir: &Path, mode: u32) -> std::path::PathBuf {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn config(dir: &Path, port: u16, events: &str, insecure: bool) -> std::path::PathBuf {
    let path = dir.join("pbx-tokend.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n[pbx]\nallow_insecure_http = {insecure}\nallow_private_addresses = true\n[log]\nlevel = \"debug\"\n[events]\n{events}",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn admin(port: u16, child: &mut Child, state: &Path) -> AdminServiceClient<AuthChannel> {
    let (channel, key): (Channel, String) = connect_with_admin_key(port, child, state).await;
    AdminServiceClient::with_interceptor(channel, Bearer::new(Some(&key)))
}

async fn create(a: &mut AdminServiceClient<AuthChannel>, sim: &RunningSim, id: &str) {
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    a.create_tenant(CreateTenantRequest {
        tenant_id: id.into(),
        pbx_base_url: sim.base_url.clone(),
        trusted_app: Some(AppCredentials {
            client_id: app.client_id,
            client_secret: app.client_secret,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn delete(a: &mut AdminServiceClient<AuthChannel>, id: &str) {
    a.delete_tenant(DeleteTenantRequest {
        tenant_id: id.into(),
    })
    .await
    .unwrap();
}

async fn disable(a: &mut AdminServiceClient<AuthChannel>, id: &str) {
    a.update_tenant(UpdateTenantRequest {
        tenant_id: id.into(),
        enabled: Some(false),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Waits until the receiver saw more than `n` requests.
async fn requests_beyond(seen: &Receiver, n: usize) {
    eventually(Duration::from_secs(10), "a webhook request", || {
        let got = seen.lock().unwrap().requests.len();
        async move { got > n }
    })
    .await;
}

fn kill9(child: &mut Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_per_tenant_across_kill_9() {
    let sim = sim_with_lifetime(3600).await;
    let (seen, addr) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let secret = write_secret(dir.path(), 0o600);
    let port = free_port();
    let events = format!(
        "webhook_url = \"http://{addr}/hook\"\nwebhook_secret_file = \"{}\"\n",
        secret.display()
    );
    let config = config(dir.path(), port, &events, true);
    let log = dir.path().join("daemon.log");

    // Run 1: the receiver is down (503); events pile up, then SIGKILL.
    let mut child = spawn(&config, &log);
    let mut a = admin(port, &mut child, &state).await;
    for id in ["wh-a", "wh-b", "wh-c"] {
        create(&mut a, &sim, id).await;
    }
    disable(&mut a, "wh-a").await;
    requests_beyond(&seen, 0).await;
    kill9(&mut child);

    // Run 2: still down; more events after the restart, then SIGKILL again.
    let refused = seen.lock().unwrap().requests.len();
    let mut child = spawn(&config, &log);
    let mut a = admin(port, &mut child, &state).await;
    delete(&mut a, "wh-a").await;
    create(&mut a, &sim, "wh-d").await;
    requests_beyond(&seen, refused).await;
    kill9(&mut child);

    // Run 3: the receiver is back; everything stored is delivered.
    seen.lock().unwrap().accept = true;
    let mut child = spawn(&config, &log);
    let mut a = admin(port, &mut child, &state).await;
    delete(&mut a, "wh-b").await;
    let mut stream = a
        .watch_tenant_events(WatchTenantEventsRequest {
            tenant_pattern: String::new(),
            after_event_id: 0,
            stop_at_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut stored = BTreeMap::new();
    while let Some(e) = stream.message().await.unwrap() {
        stored.insert(e.event_id, e);
    }
    // 4 created, 1 updated + 1 state changed (disabled), 2 deleted.
    assert_eq!(stored.len(), 8, "{stored:?}");
    let want: BTreeSet<i64> = stored.keys().copied().collect();
    eventually(
        Duration::from_secs(30),
        "every stored event delivered",
        || {
            let got: BTreeSet<i64> = seen
                .lock()
                .unwrap()
                .requests
                .iter()
                .filter(|r| r.3)
                .map(|r| {
                    serde_json::from_slice::<Value>(&r.0).unwrap()["event_id"]
                        .as_i64()
                        .unwrap()
                })
                .collect();
            let done = want.is_subset(&got);
            async move { done }
        },
    )
    .await;

    let requests = std::mem::take(&mut seen.lock().unwrap().requests);
    // Both runs before the last tried and were refused: the rows outlived
    // two SIGKILLs.
    assert!(requests.iter().filter(|r| !r.3).count() >= 2);
    let mut per_tenant: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (raw, sig, ctype, accepted) in &requests {
        // Every request, refused ones too, is signed over its raw bytes.
        let mut mac =
            <Hmac<sha2_hmac::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(raw);
        let want_sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            sig,
            &want_sig,
            "signature of {}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(ctype, "application/json");
        let v: Value = serde_json::from_slice(raw).unwrap();
        let id = v["event_id"].as_i64().unwrap();
        let e = &stored[&id];
        assert_eq!(v["tenant_id"], e.tenant_id.as_str());
        let kind = pbx_tokend::proto::TenantEventKind::try_from(e.kind).unwrap();
        assert_eq!(v["kind"], kind.as_str_name());
        let state = pbx_tokend::proto::TenantState::try_from(e.state).unwrap();
        assert_eq!(v["state"], state.as_str_name());
        let at = v["at"].as_str().unwrap();
        assert!(at.ends_with('Z') && at.len() == 24, "{at}");
        if *accepted {
            per_tenant.entry(e.tenant_id.clone()).or_default().push(id);
        }
    }
    for (tenant, ids) in &per_tenant {
        assert!(
            ids.windows(2).all(|w| w[0] <= w[1]),
            "{tenant}'s events arrived out of order: {ids:?}"
        );
    }
    let kinds: BTreeSet<String> = requests
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.0).unwrap()["kind"].to_string())
        .collect();
    for k in [
        "TENANT_EVENT_KIND_CREATED",
        "TENANT_EVENT_KIND_UPDATED",
        "TENANT_EVENT_KIND_STATE_CHANGED",
        "TENANT_EVENT_KIND_DELETED",
    ] {
        assert!(
            kinds.contains(&format!("{k:?}")),
            "{k} missing from {kinds:?}"
        );
    }

    child.kill().unwrap();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("webhook delivery"), "{logs}");
    assert!(!logs.contains(SECRET), "the webhook secret reached the log");
}

/// Runs the daemon with `events` and returns its exit code and stderr
/// (it must refuse to start, well within 20 s).
fn refused(events: &str, insecure: bool, dir: &Path) -> (Option<i32>, String) {
    let config = config(dir, free_port(), events, insecure);
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_is_refused_naming_the_webhook_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = "webhook_url = \"https://crm.example.com/hook\"\n";
    let (code, err) = refused(url, true, dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("events.webhook_secret_file"), "{err}");

    let secret = write_secret(dir.path(), 0o600);
    let events = format!(
        "webhook_url = \"http://crm.example.com/hook\"\nwebhook_secret_file = \"{}\"\n",
        secret.display()
    );
    let (code, err) = refused(&events, false, dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("events.webhook_url"), "{err}");
    assert!(err.contains("allow_insecure_http"), "{err}");

    // A key others may read is refused at start, without printing it.
    let secret = write_secret(dir.path(), 0o644);
    let events = format!("{url}webhook_secret_file = \"{}\"\n", secret.display());
    let (code, err) = refused(&events, true, dir.path());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("events.webhook_secret_file"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
}

/// Ids of the events the receiver answered 200 for `tenant`, in order.
fn accepted(seen: &Receiver, tenant: &str) -> Vec<i64> {
    seen.lock()
        .unwrap()
        .requests
        .iter()
        .filter(|r| r.3)
        .map(|r| serde_json::from_slice::<Value>(&r.0).unwrap())
        .filter(|v| v["tenant_id"] == tenant)
        .map(|v| v["event_id"].as_i64().unwrap())
        .collect()
}

/// Ids of every event the receiver was sent for `tenant`, answered or not.
fn sent(seen: &Receiver, tenant: &str) -> BTreeSet<i64> {
    seen.lock()
        .unwrap()
        .requests
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.0).unwrap())
        .filter(|v| v["tenant_id"] == tenant)
        .map(|v| v["event_id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tenant_holds_up_only_itself_and_redirects_are_not_followed() {
    let sim = sim_with_lifetime(3600).await;
    let (seen, addr) = receiver().await;
    {
        let mut s = seen.lock().unwrap();
        s.accept = true;
        s.refuse.insert("stuck".into());
        s.redirect.insert("moved".into());
    }
    let secrets = tempfile::tempdir().unwrap();
    let secret = write_secret(secrets.path(), 0o600);
    let d = TestDaemon::start(|c| {
        c.events.webhook_url = format!("http://{addr}/hook");
        c.events.webhook_secret_file = Some(secret.clone());
        c.metrics.listen = Some("127.0.0.1:0".into());
    })
    .await;
    let metrics_at = d.daemon.as_ref().unwrap().metrics_addr().unwrap();
    for t in ["stuck", "moved", "fine"] {
        d.add_tenant(&sim, t).await;
    }
    let mut a = d.admin();
    for t in ["stuck", "moved", "fine"] {
        disable(&mut a, t).await;
    }
    // "fine" gets all three (created, updated, state changed), in order,
    // while the other two keep failing on their first event.
    eventually(Duration::from_secs(10), "fine's events delivered", || {
        let n = accepted(&seen, "fine").len();
        async move { n >= 3 }
    })
    .await;
    let fine = accepted(&seen, "fine");
    assert!(fine.windows(2).all(|w| w[0] < w[1]), "{fine:?}");
    // The failing tenants were tried, and never past their first event.
    eventually(Duration::from_secs(10), "the failing tenants tried", || {
        let tried = !sent(&seen, "stuck").is_empty() && !sent(&seen, "moved").is_empty();
        async move { tried }
    })
    .await;
    assert_eq!(
        sent(&seen, "stuck").len(),
        1,
        "stuck's later events were sent early"
    );
    assert_eq!(
        sent(&seen, "moved").len(),
        1,
        "moved's later events were sent early"
    );
    assert!(accepted(&seen, "stuck").is_empty());
    assert_eq!(seen.lock().unwrap().elsewhere, 0, "a redirect was followed");
    // The operator sees it: failures counted, the held-up events waiting.
    eventually(Duration::from_secs(10), "webhook metrics", || async move {
        let text = reqwest::get(format!("http://{metrics_at}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
                .unwrap_or(-1.0)
        };
        value("pbx_tokend_webhook_deliveries_total{outcome=\"failed\"}") >= 2.0
            && value("pbx_tokend_webhook_deliveries_total{outcome=\"delivered\"}") >= 3.0
            && value("pbx_tokend_webhook_outbox_depth") == 6.0
    })
    .await;
    // Once the receiver takes them, the held-up events follow in order.
    {
        let mut s = seen.lock().unwrap();
        s.refuse.clear();
        s.redirect.clear();
    }
    eventually(Duration::from_secs(15), "held-up events delivered", || {
        let n = accepted(&seen, "stuck")
            .len()
            .min(accepted(&seen, "moved").len());
        async move { n >= 3 }
    })
    .await;
    for t in ["stuck", "moved"] {
        let ids = accepted(&seen, t);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{t}: {ids:?}");
    }
}
