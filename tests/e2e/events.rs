//! Tenant events end to end: AdminService.WatchTenantEvents and
//! `pbx-tokenctl events` against the real daemon and the simulator. A
//! tenant whose credentials the PBX rejects once (a 401 from the
//! simulator) and then accepts again gives CREATED, STATE_CHANGED
//! (ACTIVE -> CREDENTIALS_REJECTED) and STATE_CHANGED (-> ACTIVE) in order;
//! a client that drops the stream and resumes after the last id misses
//! nothing and sees nothing twice; patterns filter; a READER key, a bad
//! glob and a negative cursor are refused; the stream ends at shutdown; the
//! CLI lists, follows and resumes across a daemon restart.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pbx_sim::Faults;
use pbx_tokend::proto::{
    ClientRole, TenantEvent, TenantEventKind, TenantState, WatchTenantEventsRequest,
};
use serde_json::Value;
use tonic::{Code, Streaming};

use crate::harness::*;

const CTL: &str = env!("CARGO_BIN_EXE_pbx-tokenctl");

fn watch_req(pattern: &str, after: i64, stop_at_end: bool) -> WatchTenantEventsRequest {
    WatchTenantEventsRequest {
        tenant_pattern: pattern.into(),
        after_event_id: after,
        stop_at_end,
    }
}

async fn open(d: &TestDaemon, pattern: &str, after: i64) -> Streaming<TenantEvent> {
    d.admin()
        .watch_tenant_events(watch_req(pattern, after, false))
        .await
        .unwrap()
        .into_inner()
}

async fn next(s: &mut Streaming<TenantEvent>) -> TenantEvent {
    tokio::time::timeout(Duration::from_secs(15), s.message())
        .await
        .expect("an event within 15 s")
        .unwrap()
        .expect("the stream is open")
}

/// Every stored event matching `pattern` (a listing: the stream ends).
async fn list(d: &TestDaemon, pattern: &str, after: i64) -> Vec<TenantEvent> {
    let mut s = d
        .admin()
        .watch_tenant_events(watch_req(pattern, after, true))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        out.push(e);
    }
    out
}

fn shape(e: &TenantEvent) -> (String, i32, i32, i32) {
    (e.tenant_id.clone(), e.kind, e.previous_state, e.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_and_the_recovery_stream_in_order_and_resume_without_loss() {
    let sim = sim_with_lifetime(2).await;
    let mut d = TestDaemon::start(|c| {
        c.refresh.rejected_retry_seconds = 1;
        c.metrics.listen = Some("127.0.0.1:0".into());
    })
    .await;
    let mut stream = open(&d, "acme", 0).await;
    d.add_tenant(&sim, "acme").await;
    // The next token request (the renewal at ~80 % of 2 s) is refused with
    // 401: credentials rejected; the retry a second later succeeds.
    sim.sim.set_faults(Faults {
        fail_next: 1,
        fail_status: 401,
        fail_grant_type: Some("client_credentials".into()),
        ..Default::default()
    });
    let created = next(&mut stream).await;
    assert_eq!(
        shape(&created),
        (
            "acme".into(),
            TenantEventKind::Created as i32,
            0,
            TenantState::Active as i32
        )
    );
    assert!(created.at.is_some() && !created.message.is_empty());
    let rejected = next(&mut stream).await;
    assert_eq!(
        shape(&rejected),
        (
            "acme".into(),
            TenantEventKind::StateChanged as i32,
            TenantState::Active as i32,
            TenantState::CredentialsRejected as i32
        )
    );
    assert!(rejected.event_id > created.event_id);
    assert!(
        rejected.message.contains("rejected"),
        "{}",
        rejected.message
    );
    // Drop the stream; resume after the last id seen.
    drop(stream);
    let mut stream = open(&d, "acme", rejected.event_id).await;
    let recovered = next(&mut stream).await;
    assert_eq!(
        shape(&recovered),
        (
            "acme".into(),
            TenantEventKind::StateChanged as i32,
            TenantState::CredentialsRejected as i32,
            TenantState::Active as i32
        )
    );
    assert!(recovered.event_id > rejected.event_id);
    // Renewals that keep the tenant ACTIVE write nothing: the stored log
    // is exactly these three.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stored = list(&d, "", 0).await;
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![created.event_id, rejected.event_id, recovered.event_id]
    );

    // Counted by kind in the metrics.
    let metrics = d.daemon.as_ref().unwrap().metrics_addr().unwrap();
    eventually(Duration::from_secs(10), "events counted", || async {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("pbx_tokend_tenant_events_total{kind=\"state_changed\"} 2")
            && text.contains("pbx_tokend_tenant_events_total{kind=\"created\"} 1")
    })
    .await;

    // Pattern filtering: only matching tenants, live and stored.
    d.add_tenant(&sim, "other").await;
    d.add_tenant(&sim, "acme-2").await;
    let mut acmes = open(&d, "acme*", recovered.event_id).await;
    let e = next(&mut acmes).await;
    assert_eq!(
        (e.tenant_id.as_str(), e.kind),
        ("acme-2", TenantEventKind::Created as i32)
    );
    let mine: Vec<String> = list(&d, "acme*", 0)
        .await
        .into_iter()
        .map(|e| e.tenant_id)
        .collect();
    assert_eq!(mine, vec!["acme", "acme", "acme", "acme-2"]);
    assert_eq!(list(&d, "", 0).await.len(), 5);

    // Refusals: a READER key, a bad glob, a negative cursor.
    let (_, reader) = d.create_client("reader", ClientRole::Reader, &["*"]).await;
    let e = d
        .admin_with_key(Some(&reader))
        .watch_tenant_events(watch_req("", 0, true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = d
        .admin()
        .watch_tenant_events(watch_req("acme/*", 0, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("tenant_pattern"), "{}", e.message());
    let e = d
        .admin()
        .watch_tenant_events(watch_req("", -1, false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("after_event_id"), "{}", e.message());

    // A shutdown ends open streams cleanly (OK, no error).
    d.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), acmes.message())
        .await
        .expect("the stream ends at shutdown");
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// The next JSON line the CLI printed.
async fn read(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a line within 20 s")
        .expect("pbx-tokenctl still running");
    serde_json::from_str::<Value>(&line).unwrap()
}

/// `pbx-tokenctl events`: the listing exits after the stored events;
/// `--follow` prints new ones and, across a daemon restart, reconnects
/// after the last one seen (no gap, no repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenctl_events_lists_follows_and_resumes_across_a_restart() {
    let sim = sim_with_lifetime(3600).await;
    let port = free_port();
    let d = TestDaemon::start(|c| c.grpc.listen = format!("127.0.0.1:{port}")).await;
    d.add_tenant(&sim, "a1").await;
    d.add_tenant(&sim, "b1").await;
    let ctl = |args: &[&str]| {
        let mut c = Command::new(CTL);
        c.arg("--endpoint")
            .arg(d.endpoint())
            .args(args)
            .env("PBX_TOKEND_API_KEY", &d.admin_key)
            .env_remove("PBX_TOKEND_ENDPOINT")
            .env_remove("PBX_TOKEND_SOCKET")
            .env_remove("STATE_DIRECTORY");
        c
    };

    let mut listing = ctl(&["events", "--tenant", "a*"]);
    let out = tokio::task::spawn_blocking(move || listing.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].contains("  a1  created  active  "), "{text}");

    let mut follow = ctl(&["events", "--follow", "--json"]);
    let mut child = follow
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = read(&mut rx).await;
    let second = read(&mut rx).await;
    assert_eq!(
        (first["tenant_id"].as_str(), second["tenant_id"].as_str()),
        (Some("a1"), Some("b1"))
    );
    assert_eq!(first["kind"], "created");

    // The daemon restarts on the same port; the CLI reconnects after b1.
    let d = d.restart().await;
    d.add_tenant(&sim, "c1").await;
    let third = read(&mut rx).await;
    assert_eq!(third["tenant_id"], "c1");
    assert_eq!(third["kind"], "created");
    assert!(third["event_id"].as_i64() > second["event_id"].as_i64());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rx.try_recv().is_err(), "nothing printed twice");
}
