//! Tests of the echo fault over real HTTP on loopback: every form on the
//! token endpoint and the REST endpoints really carries the request's
//! secrets back, in the shape of the provider's errors.

use serde_json::Value;

use super::echo::php_json_string;
use super::tests::{env, Env};
use super::*;

/// Space, `/`, `+`, `"`, `&`, `=` and a non-ASCII letter: every spelling
/// differs from the raw one.
const SECRET: &str = "Echo/Sec+\"ret\"&k=\u{fc} 42";

fn echo(status: u16, form: EchoForm, endpoints: EchoEndpoints) -> Faults {
    Faults {
        echo: Some(EchoFault {
            status,
            form,
            endpoints,
        }),
        ..Faults::default()
    }
}

async fn json(resp: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap())
}

fn url_encoded(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn php_json_spelling() {
    assert_eq!(
        php_json_string(SECRET),
        "\"Echo\\/Sec+\\\"ret\\\"&k=\\u00fc 42\""
    );
    assert_eq!(php_json_string("\u{1F600}"), "\"\\ud83d\\ude00\"");
}

#[tokio::test]
async fn token_endpoint_echoes_the_request_in_every_form_and_status() {
    let e = env(SimConfig::default()).await;
    e.sim()
        .add_trusted_app(Some("app-e"), Some(SECRET))
        .unwrap();
    for form in EchoForm::ALL {
        for status in [400, 401, 500] {
            e.sim().set_faults(echo(status, form, EchoEndpoints::Token));
            let (s, h, v) = json(e.cc("app-e", SECRET).await).await;
            assert_eq!(s, status, "{form:?}");
            let text = if status == 500 {
                assert!(v.get("error").is_none(), "{v}");
                v["message"].as_str().unwrap().to_owned()
            } else {
                assert_eq!(v["error"], "invalid_client");
                assert_eq!(h["cache-control"], "no-store");
                v["error_description"].as_str().unwrap().to_owned()
            };
            assert_eq!(h.contains_key("www-authenticate"), status == 401);
            assert!(text.starts_with("Rejected POST /oauth/token:"), "{text}");
            let spelled = match form {
                EchoForm::Raw => format!("client_secret={}", url_encoded(SECRET)),
                EchoForm::Values => format!("client_credentials app-e {SECRET}"),
                EchoForm::Json => format!("\"client_secret\":{}", php_json_string(SECRET)),
            };
            assert!(text.contains(&spelled), "{form:?} {status}: {text}");
        }
    }
    // Nothing was granted; the echo answered before the provider's logic.
    assert_eq!(e.sim().stats().tokens_issued, 0);
    e.sim().clear_faults();
    assert_eq!(e.cc("app-e", SECRET).await.status(), 200);
}

#[tokio::test]
async fn api_endpoints_echo_the_bearer_token_and_body() {
    let e = env(SimConfig::default()).await;
    e.sim().add_trusted_app(Some("app-a"), Some("s-a")).unwrap();
    let (_, _, v) = json(e.cc("app-a", "s-a").await).await;
    let token = v["access_token"].as_str().unwrap().to_owned();
    // Token-only echo leaves the API alone.
    e.sim()
        .set_faults(echo(401, EchoForm::Raw, EchoEndpoints::Token));
    let user = || {
        e.http
            .get(e.url("/api/ver1.0/user/"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(user().await.unwrap().status(), 200);

    e.sim()
        .set_faults(echo(401, EchoForm::Raw, EchoEndpoints::Api));
    let (s, h, v) = json(user().await.unwrap()).await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let text = v["message"].as_str().unwrap();
    assert!(
        text.contains(&format!("[Authorization: Bearer {token}]")),
        "{text}"
    );
    // The token endpoint is left alone by an API-only echo.
    assert_eq!(e.cc("app-a", "s-a").await.status(), 200);

    e.sim()
        .set_faults(echo(500, EchoForm::Json, EchoEndpoints::All));
    let resp = e
        .http
        .post(e.url("/api/ver1.0/application/"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "n/ü", "type": "trusted"}))
        .send()
        .await
        .unwrap();
    let (s, _, v) = json(resp).await;
    assert_eq!(s, 500);
    let text = v["message"].as_str().unwrap();
    assert!(
        text.contains(&format!(
            "\"authorization\":{}",
            php_json_string(&format!("Bearer {token}"))
        )),
        "{text}"
    );
    assert!(text.contains("\"name\":\"n\\/\\u00fc\""), "{text}");
    assert!(e.sim().created_apps().is_empty());
    assert_eq!(e.cc("app-a", "s-a").await.status(), 500);

    e.sim()
        .set_faults(echo(403, EchoForm::Values, EchoEndpoints::Api));
    let (s, _, v) = json(user().await.unwrap()).await;
    assert_eq!(s, 403);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with(&format!(" {token}")),
        "{v}"
    );
}

#[tokio::test]
async fn control_api_sets_and_checks_the_echo_fault() {
    let e: Env = env(SimConfig::default()).await;
    let put = |body: Value| e.http.put(e.url("/_sim/faults")).json(&body).send();
    let resp = put(serde_json::json!({"echo": {"status": 401, "form": "json"}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        e.sim().faults().echo,
        Some(EchoFault {
            status: 401,
            form: EchoForm::Json,
            endpoints: EchoEndpoints::Token,
        })
    );
    let resp = put(serde_json::json!({"echo": {"status": 200, "form": "raw"}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("echo.status"),
        "{v}"
    );
    let resp = put(serde_json::json!({"echo": {"status": 400, "form": "base64"}}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
