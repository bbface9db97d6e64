//! Onboarding with a browser: the PBX's consent page redirects to the
//! daemon's callback listener (`[callback] listen`), which completes the
//! flow or records the denial and shows a plain page. And with the CLI:
//! `tenant add --public-client-id`, `auth begin`, `auth complete`.

use std::process::Command;

use pbx_sim::RunningSim;
use pbx_tokend::proto;
use tonic::Code;

use crate::harness::*;
use crate::onboarding::{add_pending, begin, complete, REDIRECT};

/// Audit events written by the callback listener, oldest first.
async fn callback_audit(d: &TestDaemon) -> Vec<proto::AuditEvent> {
    let mut events = d
        .admin()
        .list_audit_events(proto::ListAuditEventsRequest {
            client_id: "oauth-callback".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events.reverse();
    events
}

async fn with_callback() -> (TestDaemon, String) {
    let d = TestDaemon::start(|c| c.callback.listen = Some("127.0.0.1:0".into())).await;
    let addr = d.daemon.as_ref().unwrap().callback_addr().unwrap();
    (d, format!("http://{addr}/oauth/callback"))
}

/// What the PBX user's browser does: open the URL, then click a button on
/// the consent page; redirects are followed to the callback.
pub(crate) async fn decide(
    sim: &RunningSim,
    url: &str,
    client_id: &str,
    redirect: &str,
    state: &str,
    decision: &str,
) -> (u16, String) {
    let http = reqwest::Client::new();
    let consent = http.get(url).send().await.unwrap();
    assert_eq!(consent.status(), 200);
    assert!(consent.text().await.unwrap().contains("Allow"));
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect)
        .append_pair("state", state)
        .append_pair("login", "alice")
        .append_pair("decision", decision)
        .finish();
    let resp = http
        .post(format!("{}/oauth/authorize", sim.base_url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert!(
        resp.url().path().ends_with("/oauth/callback"),
        "{}",
        resp.url()
    );
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_via_the_callback_listener() {
    let sim = sim_with_lifetime(3600).await;
    let (d, redirect) = with_callback().await;
    let public = add_pending(&d, &sim, "web", &redirect).await;
    let b = begin(&d, "web").await;
    let (status, page) = decide(
        &sim,
        &b.authorization_url,
        &public.client_id,
        &redirect,
        &b.state,
        "allow",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Connected") && page.contains("alice"),
        "{page}"
    );
    let t = d.tenant("web").await;
    assert_eq!(t.state, proto::TenantState::Active as i32);
    assert_eq!(t.pbx_user.unwrap().login, "alice");
    assert_eq!(t.trusted_client_id, sim.sim.created_apps()[0].1);
    d.get_token("web").await.unwrap();

    // The same link again: nothing happens, the page says why.
    let again = format!("{redirect}?code=whatever&state={}", b.state);
    let resp = reqwest::get(&again).await.unwrap();
    assert_eq!(resp.status(), 409);
    assert!(resp.text().await.unwrap().contains("already used"));
    assert_eq!(sim.sim.created_apps().len(), 1);

    // Both completions audited as CompleteAuthorization would be.
    let events = callback_audit(&d).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].action, "authorization.complete");
    assert_eq!(
        (events[0].tenant_id.as_str(), events[0].outcome.as_str()),
        ("web", "ok")
    );
    assert_eq!(events[1].outcome, "FAILED_PRECONDITION");
    assert!(events[1].detail.contains("already used"), "{events:?}");
    assert!(!events.iter().any(|e| e.detail.contains(&b.state)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_denies_access() {
    let sim = sim_with_lifetime(3600).await;
    let (d, redirect) = with_callback().await;
    let public = add_pending(&d, &sim, "no", &redirect).await;
    let b = begin(&d, "no").await;
    let (status, page) = decide(
        &sim,
        &b.authorization_url,
        &public.client_id,
        &redirect,
        &b.state,
        "deny",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Access not granted") && page.contains("denied access"),
        "{page}"
    );
    let t = d.tenant("no").await;
    assert_eq!(t.state, proto::TenantState::PendingAuthorization as i32);
    assert!(t.last_error.contains("denied access"), "{}", t.last_error);
    let events = callback_audit(&d).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].action, "authorization.complete");
    assert_eq!(events[0].tenant_id, "no");
    assert_eq!(events[0].outcome, "PERMISSION_DENIED");
    assert!(events[0].detail.contains("denied access"), "{events:?}");
    assert!(sim.sim.created_apps().is_empty());
    // The denied state is used up, even with a good code.
    let code = sim.sim.approve(&public.client_id, &redirect).unwrap();
    let err = complete(&d, &b.state, "", &code).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("denied access"), "{}", err.message());
    // A new authorization still works.
    let b = begin(&d, "no").await;
    let t = complete(&d, &b.state, "", &code).await.unwrap();
    assert_eq!(t.state, proto::TenantState::Active as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_pages_escape_and_refuse_bad_links() {
    let (_d, redirect) = with_callback().await;
    let cases = [
        ("", 400, "no state"),
        ("?code=abc", 400, "no state"),
        ("?state=abcdef", 400, "neither a code"),
        (
            "?state=%3Cscript%3Ealert(1)%3C/script%3E&code=x",
            400,
            "state",
        ),
        (
            "?state=unknownstate&error=%3Cb%3Ex%3C/b%3E",
            409,
            "not known",
        ),
        ("?state=unknownstate&code=c", 409, "not known"),
    ];
    for (query, status, needle) in cases {
        let resp = reqwest::get(format!("{redirect}{query}")).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{query}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/html; charset=utf-8"
        );
        let page = resp.text().await.unwrap();
        assert!(page.contains(needle), "{query}: {page}");
        assert!(!page.contains("<script") && !page.contains("<b>"), "{page}");
    }
    let other = redirect.replace("/oauth/callback", "/elsewhere");
    assert_eq!(reqwest::get(other).await.unwrap().status(), 404);
}

fn tokenctl(endpoint: &str, key: &str, dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pbx-tokenctl"))
        .args(["--endpoint", endpoint, "--json"])
        .env("PBX_TOKEND_API_KEY", key)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_onboards_a_tenant() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|_| {}).await;
    let endpoint = format!("http://{}", d.daemon.as_ref().unwrap().local_addr());
    let public = sim.sim.add_public_app(None, None, REDIRECT).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("public.secret");
    std::fs::write(&secret, format!("{}\n", public.client_secret)).unwrap();
    let (base, cid, secret_path) = (
        sim.base_url.clone(),
        public.client_id.clone(),
        secret.to_str().unwrap().to_owned(),
    );
    let run = |args: Vec<String>| {
        let endpoint = endpoint.clone();
        let key = d.admin_key.clone();
        let dir = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokenctl(&endpoint, &key, &dir, &args)
        })
    };
    let t = run(vec![
        "tenant".into(),
        "add".into(),
        "cli".into(),
        "--base-url".into(),
        base,
        "--public-client-id".into(),
        cid,
        "--public-client-secret-file".into(),
        secret_path,
        "--redirect-uri".into(),
        REDIRECT.into(),
    ])
    .await
    .unwrap();
    assert!(
        t["state"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("pending_authorization"),
        "{t}"
    );
    let b = run(vec!["auth".into(), "begin".into(), "cli".into()])
        .await
        .unwrap();
    let state = b["state"].as_str().unwrap().to_owned();
    assert!(b["authorization_url"].as_str().unwrap().contains(&state));
    let code = sim.sim.approve(&public.client_id, REDIRECT).unwrap();
    let t = run(vec![
        "auth".into(),
        "complete".into(),
        "--state".into(),
        state,
        "--code".into(),
        code,
    ])
    .await
    .unwrap();
    assert!(
        t["state"].as_str().unwrap().eq_ignore_ascii_case("active"),
        "{t}"
    );
    assert_eq!(t["trusted_client_id"], sim.sim.created_apps()[0].1.as_str());
}
