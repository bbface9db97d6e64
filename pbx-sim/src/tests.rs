//! Tests of the simulator's OAuth and REST behaviour over real HTTP on
//! loopback: grants, client errors, the full onboarding flow, codes.

use std::sync::Arc;
use std::time::Duration;

use reqwest::redirect::Policy;
use serde_json::Value;

use super::*;
use crate::clock::{ManualClock, UnixMs};

pub(super) struct Env {
    pub run: RunningSim,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
}

impl Env {
    pub fn sim(&self) -> &Simulator {
        &self.run.sim
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.run.base_url, path)
    }
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .form(form)
            .send()
            .await
            .unwrap()
    }
    pub async fn cc(&self, id: &str, secret: &str) -> reqwest::Response {
        self.post_form(
            "/oauth/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
            ],
        )
        .await
    }
    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }
}

pub(super) async fn env(cfg: SimConfig) -> Env {
    let clock = Arc::new(ManualClock::new(UnixMs(1_700_000_000_000)));
    let sim = Simulator::with_clock(cfg, clock.clone());
    let run = sim.start().await.unwrap();
    let http = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    Env { run, clock, http }
}

async fn body(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn client_credentials_happy_path_and_gzip() {
    let e = env(SimConfig::default()).await;
    e.sim().add_trusted_app(Some("app-1"), Some("s1")).unwrap();
    let resp = e.cc("app-1", "s1").await;
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let (status, v) = body(resp).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert!(v.get("refresh_token").is_none());
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(token.len(), 30);
    assert!(e.sim().issued_token_valid(token));
    e.advance(3601);
    assert!(!e.sim().issued_token_valid(token));

    // Without reqwest's transparent decoding: the body really is gzip.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "app-1"),
        ("client_secret", "s1"),
    ];
    let resp = raw
        .post(e.url("/oauth/token"))
        .header("accept-encoding", "gzip")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let bytes = resp.bytes().await.unwrap();
    let mut s = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut s).unwrap();
    assert!(s.contains("access_token"));
    let resp = raw
        .post(e.url("/oauth/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("content-encoding").is_none());

    let st = e.sim().stats();
    assert_eq!(st.token_requests_total, 3);
    assert_eq!(st.token_requests_by_grant_type["client_credentials"], 3);
    assert_eq!(st.requests_without_gzip, 1);
    assert_eq!(st.tokens_issued, 3);
    assert_eq!(e.sim().token_requests_for("app-1"), 3);
    assert_eq!(e.sim().token_requests_for("other"), 0);
    // The second and third request of app-1 followed the one before it.
    assert_eq!(st.token_requests_repeated_within_s[&1800], 2);
    assert_eq!(st.token_requests_repeated_within_s[&30], 2);
    e.sim().reset_stats();
    assert_eq!(e.sim().stats(), SimStats::default());
}

#[tokio::test]
async fn client_errors() {
    let e = env(SimConfig::default()).await;
    let app = e.sim().add_trusted_app(None, None).unwrap();
    assert_eq!(app.client_id.len(), 32);
    assert!(app.client_id.chars().all(|c| c.is_ascii_hexdigit()));

    let (status, v) = body(e.cc(&app.client_id, "wrong").await).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(v["error_description"].is_string());
    let (status, v) = body(e.cc("nobody", "x").await).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));

    let (_, v) = body(e.cc(&app.client_id, &app.client_secret).await).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    e.sim().revoke_client(&app.client_id).unwrap();
    let (status, v) = body(e.cc(&app.client_id, &app.client_secret).await).await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(!e.sim().issued_token_valid(&token));

    let (status, v) = body(e.post_form("/oauth/token", &[("client_id", "x")]).await).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, v) = body(
        e.post_form("/oauth/token", &[("grant_type", "password")])
            .await,
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    // JSON instead of a form is refused with a clear description.
    let resp = e
        .http
        .post(e.url("/oauth/token"))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    let (status, v) = body(resp).await;
    assert_eq!(status, 400);
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("x-www-form-urlencoded"));
    // HTTP Basic client authentication works too.
    let ok = e.sim().add_trusted_app(Some("b"), Some("bs")).unwrap();
    let resp = e
        .http
        .post(e.url("/oauth/token"))
        .basic_auth(&ok.client_id, Some(&ok.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

const CB: &str = "https://crm.example/cb";

fn query_param(location: &str, key: &str) -> Option<String> {
    let u = url::Url::parse(location).unwrap();
    u.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

async fn exchange(e: &Env, code: &str, redirect: &str) -> (u16, Value) {
    body(
        e.post_form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect),
                ("client_id", "pub"),
                ("client_secret", "pubsecret"),
            ],
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn full_onboarding_flow() {
    let e = env(SimConfig::default()).await;
    e.sim()
        .add_public_app(Some("pub"), Some("pubsecret"), CB)
        .unwrap();
    let q = format!(
        "/oauth/authorize?response_type=code&client_id=pub&redirect_uri={}&scope=all&state=st1",
        url::form_urlencoded::byte_serialize(CB.as_bytes()).collect::<String>()
    );
    let page = e.http.get(e.url(&q)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Allow") && html.contains("Deny"), "{html}");

    let form = [
        ("decision", "allow"),
        ("client_id", "pub"),
        ("redirect_uri", CB),
        ("state", "st1"),
    ];
    let resp = e.post_form("/oauth/authorize", &form).await;
    assert_eq!(resp.status(), 302);
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with("https://crm.example/cb?"), "{loc}");
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st1"));
    let code = query_param(&loc, "code").unwrap();
    assert_eq!(code.len(), 30);

    let (status, v) = exchange(&e, &code, CB).await;
    assert_eq!(status, 200, "{v}");
    let public_token = v["access_token"].as_str().unwrap().to_owned();
    let refresh = v["refresh_token"].as_str().unwrap().to_owned();

    let api = |path: &str| e.url(path);
    let resp = e
        .http
        .post(api("/api/ver1.0/application/"))
        .bearer_auth(&public_token)
        .json(&serde_json::json!({"name": "crm-tenant-1", "type": "trusted"}))
        .send()
        .await
        .unwrap();
    let (status, app) = body(resp).await;
    assert_eq!(status, 201, "{app}");
    let id = app["client_id"].as_str().unwrap();
    let secret = app["client_secret"].as_str().unwrap();
    assert_eq!((id.len(), secret.len()), (32, 32));
    assert_eq!(
        e.sim().created_apps(),
        vec![("crm-tenant-1".to_owned(), id.to_owned())]
    );

    let (status, v) = body(e.cc(id, secret).await).await;
    assert_eq!(status, 200);
    let trusted_token = v["access_token"].as_str().unwrap();
    let user_of = |t: String| {
        let req = e.http.get(api("/api/ver1.0/user/")).bearer_auth(t);
        async move { body(req.send().await.unwrap()).await }
    };
    let (s1, u1) = user_of(trusted_token.to_owned()).await;
    let (s2, u2) = user_of(public_token.clone()).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(u1, u2);
    assert_eq!(u1["login"], "client1");
    assert_eq!(u1["id"], 20);
    assert_eq!(u1["client_id"], 12);
    assert!(u1["dealer_id"].is_null() && u1.get("timezone").is_some());

    // Refresh: a new pair, the old refresh token is spent.
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "pub"),
        ("client_secret", "pubsecret"),
    ];
    let (status, v) = body(e.post_form("/oauth/token", &refresh_form).await).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["refresh_token"].as_str().unwrap(), refresh);
    let (status, v) = body(e.post_form("/oauth/token", &refresh_form).await).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(e.sim().stats().apps_created_via_api, 1);
}

#[tokio::test]
async fn codes_are_single_use_bound_and_expire() {
    let e = env(SimConfig::default()).await;
    e.sim()
        .add_public_app(Some("pub"), Some("pubsecret"), CB)
        .unwrap();
    let code = e.sim().approve("pub", CB).unwrap();
    let (status, v) = exchange(&e, &code, "https://other.example/cb").await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("redirect"));
    assert_eq!(exchange(&e, &code, CB).await.0, 200);
    let (status, v) = exchange(&e, &code, CB).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));

    let code = e.sim().approve("pub", CB).unwrap();
    e.advance(61);
    let (status, v) = exchange(&e, &code, CB).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    assert!(v["error_description"].as_str().unwrap().contains("expired"));

    // The control API approves too.
    let resp = e
        .http
        .post(e.url("/_sim/approve"))
        .json(&serde_json::json!({"client_id": "pub", "redirect_uri": CB}))
        .send()
        .await
        .unwrap();
    let (status, v) = body(resp).await;
    assert_eq!(status, 200);
    assert_eq!(exchange(&e, v["code"].as_str().unwrap(), CB).await.0, 200);

    assert!(matches!(
        e.sim().approve("pub", "https://evil.example/"),
        Err(SimError::RedirectMismatch { .. })
    ));
    // Deny redirects with access_denied; bad requests get a 400 page.
    let deny = [
        ("decision", "deny"),
        ("client_id", "pub"),
        ("redirect_uri", CB),
        ("state", "s"),
    ];
    let resp = e.post_form("/oauth/authorize", &deny).await;
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(query_param(&loc, "error").as_deref(), Some("access_denied"));
    for q in [
        "response_type=token&client_id=pub&scope=all&redirect_uri=https%3A%2F%2Fcrm.example%2Fcb",
        "response_type=code&client_id=pub&scope=read&redirect_uri=https%3A%2F%2Fcrm.example%2Fcb",
        "response_type=code&client_id=nobody&scope=all&redirect_uri=https%3A%2F%2Fcrm.example%2Fcb",
        "response_type=code&client_id=pub&scope=all&redirect_uri=https%3A%2F%2Fevil.example",
    ] {
        let resp = e
            .http
            .get(e.url(&format!("/oauth/authorize?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{q}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
}

#[tokio::test]
async fn rest_api_errors_and_shapes() {
    let e = env(SimConfig::default()).await;
    e.sim()
        .add_public_app(Some("pub"), Some("pubsecret"), CB)
        .unwrap();
    let code = e.sim().approve_as("pub", CB, Some("alice")).unwrap();
    let (_, v) = exchange(&e, &code, CB).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    let create = |t: Option<&str>, body: Value| {
        let mut req = e.http.post(e.url("/api/ver1.0/application/")).json(&body);
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move { body_of(req.send().await.unwrap()).await }
    };
    async fn body_of(r: reqwest::Response) -> (u16, Value) {
        body(r).await
    }
    let good = serde_json::json!({"name": "n", "type": "trusted"});
    let (s, v) = create(None, good.clone()).await;
    assert_eq!(s, 401);
    assert!(v["message"].is_string());
    assert_eq!(create(Some("bogus"), good.clone()).await.0, 401);
    let (s, v) = create(
        Some(&token),
        serde_json::json!({"name": "n", "type": "public"}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("trusted"));

    e.sim().set_faults(Faults {
        app_response_shape: AppResponseShape::IdSecret,
        ..Faults::default()
    });
    let (s, v) = create(Some(&token), good.clone()).await;
    assert_eq!(s, 201);
    assert!(v["id"].is_string() && v["secret"].is_string() && v.get("client_id").is_none());
    e.sim().set_faults(Faults {
        app_response_shape: AppResponseShape::Unknown,
        ..Faults::default()
    });
    let (s, v) = create(Some(&token), good.clone()).await;
    assert_eq!(s, 201);
    assert!(v.get("id").is_none() && v.get("client_id").is_none());
    e.sim().set_faults(Faults {
        forbid_app_creation: true,
        wrap_user_in_array: true,
        ..Faults::default()
    });
    let (s, v) = create(Some(&token), good.clone()).await;
    assert_eq!(s, 403);
    assert!(v["message"].is_string());
    assert_eq!(e.sim().created_apps().len(), 2);
    let resp = e
        .http
        .get(e.url("/api/ver1.0/user/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (s, v) = body(resp).await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["login"], "alice");

    e.advance(3600);
    e.sim().clear_faults();
    assert_eq!(create(Some(&token), good).await.0, 401);
}

#[tokio::test]
async fn hundred_thousand_apps_are_cheap() {
    let sim = Simulator::new(SimConfig::default());
    let t = std::time::Instant::now();
    for i in 1..=100_000 {
        let id = format!("app-{i:06}");
        let secret = format!("secret-{i:06}");
        sim.add_trusted_app(Some(&id), Some(&secret)).unwrap();
    }
    assert_eq!(sim.app_count(), 100_000);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(matches!(
        sim.add_trusted_app(Some("app-000001"), None),
        Err(SimError::DuplicateClient(_))
    ));
}
