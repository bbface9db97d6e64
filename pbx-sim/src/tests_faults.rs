//! Tests of fault injection, provider limits, statistics and the control
//! API, over real HTTP on loopback.

use serde_json::Value;

use super::tests::{env, Env};
use super::*;

async fn trusted(e: &Env) {
    e.sim().add_trusted_app(Some("a"), Some("s")).unwrap();
}

fn faults(f: impl FnOnce(&mut Faults)) -> Faults {
    let mut x = Faults::default();
    f(&mut x);
    x
}

#[tokio::test]
async fn malformed_answers() {
    let e = env(SimConfig::default()).await;
    trusted(&e).await;
    for m in Malformed::ALL {
        e.sim().set_faults(faults(|f| f.malformed = Some(m)));
        let resp = e.cc("a", "s").await;
        assert_eq!(resp.status(), 200, "{m:?}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let text = resp.text().await.unwrap();
        let json: Option<Value> = serde_json::from_str(&text).ok();
        match m {
            Malformed::Html => assert!(ct.starts_with("text/html") && text.contains("<html")),
            Malformed::EmptyBody => assert!(text.is_empty()),
            Malformed::NotJson => assert!(json.is_none() && !text.is_empty()),
            Malformed::MissingAccessToken => {
                assert!(json.unwrap().get("access_token").is_none())
            }
            Malformed::NegativeExpiresIn => assert_eq!(json.unwrap()["expires_in"], -5),
            Malformed::NonBearerType => assert_eq!(json.unwrap()["token_type"], "mac"),
            Malformed::OmitExpiresIn => {
                let v = json.unwrap();
                assert!(v.get("expires_in").is_none() && v["access_token"].is_string());
            }
            Malformed::AbsurdExpiresIn => {
                assert_eq!(json.unwrap()["expires_in"], 1_000_000_000_000_u64)
            }
        }
    }
    // The configured omission, without a fault.
    e.sim().clear_faults();
    e.sim().update_config(&ConfigUpdate {
        omit_expires_in: Some(true),
        ..ConfigUpdate::default()
    });
    let v: Value = e.cc("a", "s").await.json().await.unwrap();
    assert!(v.get("expires_in").is_none());
}

#[tokio::test]
async fn throttle_outage_error_rate_and_fail_next() {
    let e = env(SimConfig::default()).await;
    trusted(&e).await;
    e.sim()
        .set_faults(faults(|f| f.throttle_for_secs = Some(30)));
    let resp = e.cc("a", "s").await;
    assert_eq!(resp.status(), 429);
    let h = resp.headers();
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert_eq!(h["x-ratelimit-reset"], "30");
    assert_eq!(h["retry-after"], "30");
    assert!(h.contains_key("x-ratelimit-limit"));
    e.advance(12);
    let resp = e.http.get(e.url("/api/ver1.0/user/")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["x-ratelimit-reset"], "18");
    e.advance(18);
    assert_eq!(e.cc("a", "s").await.status(), 200);

    e.sim().set_faults(faults(|f| f.outage = true));
    assert_eq!(e.cc("a", "s").await.status(), 503);
    let r = e.http.get(e.url("/api/ver1.0/user/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = e.http.get(e.url("/oauth/authorize")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // The control API keeps working during an outage.
    let r = e.http.get(e.url("/_sim/stats")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    e.sim().set_faults(faults(|f| f.error_rate = 1.0));
    assert_eq!(e.cc("a", "s").await.status(), 503);

    e.sim().set_faults(faults(|f| {
        f.fail_next = 2;
        f.fail_status = 401;
    }));
    let (s1, s2, s3) = (
        e.cc("a", "s").await.status(),
        e.cc("a", "s").await.status(),
        e.cc("a", "s").await.status(),
    );
    assert_eq!((s1.as_u16(), s2.as_u16(), s3.as_u16()), (401, 401, 200));
    assert_eq!(e.sim().faults().fail_next, 0);

    // Restricted to one grant type, other grants pass and are not counted.
    e.sim().set_faults(faults(|f| {
        f.fail_next = 1;
        f.fail_status = 503;
        f.fail_grant_type = Some("authorization_code".into());
    }));
    assert_eq!(e.cc("a", "s").await.status(), 200);
    assert_eq!(e.sim().faults().fail_next, 1);

    let st = e.sim().stats();
    assert_eq!(st.responses_429, 2);
    assert_eq!(st.responses_503, 4);
    assert_eq!(st.token_responses_by_status[&401], 2);
}

#[tokio::test]
async fn peaks_and_enforced_limits() {
    let e = env(SimConfig::default()).await;
    trusted(&e).await;
    for _ in 0..5 {
        assert_eq!(e.cc("a", "s").await.status(), 200);
    }
    assert!(e.sim().stats().max_token_requests_in_any_1s_window >= 5);

    e.sim().reset_stats();
    e.sim().set_faults(faults(|f| f.latency_ms = 150));
    let burst = futures::future::join_all((0..4).map(|_| e.cc("a", "s"))).await;
    assert!(burst.iter().all(|r| r.status() == 200));
    let st = e.sim().stats();
    assert_eq!(st.max_concurrent_token_requests, 4);
    assert_eq!(st.token_requests_total, 4);

    // Provider limits: 2 in flight.
    e.sim().update_config(&ConfigUpdate {
        oauth_max_concurrent: Some(Some(2)),
        ..ConfigUpdate::default()
    });
    let burst = futures::future::join_all((0..4).map(|_| e.cc("a", "s"))).await;
    let refused = burst.iter().filter(|r| r.status() == 429).count();
    assert_eq!(refused, 2);

    // Provider limits: 3 per sliding second.
    e.sim().clear_faults();
    e.sim().update_config(&ConfigUpdate {
        oauth_max_concurrent: Some(None),
        oauth_rate_limit_per_sec: Some(Some(3)),
        ..ConfigUpdate::default()
    });
    let mut refused = Vec::new();
    for _ in 0..5 {
        let r = e.cc("a", "s").await;
        if r.status() == 429 {
            refused.push(r);
        }
    }
    assert!(!refused.is_empty());
    assert_eq!(refused[0].headers()["retry-after"], "1");
    assert_eq!(refused[0].headers()["x-ratelimit-limit"], "3");
}

#[tokio::test]
async fn control_api_over_http() {
    let e = env(SimConfig::default()).await;
    let post = |path: &str, v: Value| {
        let req = e.http.post(e.url(path)).json(&v);
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = post("/_sim/apps/trusted", serde_json::json!({})).await;
    assert_eq!(s, 201);
    let (id, secret) = (
        v["client_id"].as_str().unwrap().to_owned(),
        v["client_secret"].as_str().unwrap().to_owned(),
    );
    let (s, _) = post("/_sim/apps/trusted", serde_json::json!({"client_id": id})).await;
    assert_eq!(s, 409);
    let (s, _) = post(
        "/_sim/apps/public",
        serde_json::json!({"client_id": "p", "client_secret": "q", "redirect_uri": "https://x.example/cb"}),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(e.cc(&id, &secret).await.status(), 200);

    let r = e
        .http
        .put(e.url("/_sim/faults"))
        .json(&serde_json::json!({"outage": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.cc(&id, &secret).await.status(), 503);
    let r = e
        .http
        .put(e.url("/_sim/faults"))
        .json(&serde_json::json!({"bogus": 1}))
        .send();
    assert_eq!(r.await.unwrap().status(), 400);
    let r = e
        .http
        .put(e.url("/_sim/faults"))
        .json(&serde_json::json!({}))
        .send();
    assert_eq!(r.await.unwrap().status(), 200);

    let r = e
        .http
        .put(e.url("/_sim/config"))
        .json(&serde_json::json!({"token_lifetime_secs": 5}));
    assert_eq!(r.send().await.unwrap().status(), 200);
    let v: Value = e.cc(&id, &secret).await.json().await.unwrap();
    assert_eq!(v["expires_in"], 5);
    let token = v["access_token"].as_str().unwrap().to_owned();
    let (_, v) = post("/_sim/token_valid", serde_json::json!({ "token": token })).await;
    assert_eq!(v["valid"], true);

    let (s, _) = post("/_sim/revoke", serde_json::json!({"client_id": id})).await;
    assert_eq!(s, 200);
    assert_eq!(e.cc(&id, &secret).await.status(), 401);
    let (s, _) = post("/_sim/revoke", serde_json::json!({"client_id": "nope"})).await;
    assert_eq!(s, 404);

    let v: Value = e
        .http
        .get(e.url("/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["token_requests_total"], 4);
    assert_eq!(v["responses_503"], 1);
    let (s, v) = post("/_sim/reset_stats", serde_json::json!({})).await;
    assert_eq!((s, &v["token_requests_total"]), (200, &Value::from(0)));
    let r = e.http.get(e.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    e.run.stop().await.unwrap();
}
