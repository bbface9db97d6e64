//! Tests for `client/mod.rs` against a tiny axum server on 127.0.0.1:0.
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::HeaderMap;

use super::*;
use crate::domain::UrlPolicy;

#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

fn json(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json".into())],
        body: body.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Serves `reply(path)` for every request and records what it saw.
async fn serve(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> (PbxBaseUrl, Log) {
    let log: Log = Arc::default();
    let reply = Arc::new(reply);
    let seen = Arc::clone(&log);
    let app = axum::Router::new().fallback(move |req: Request| {
        let (seen, reply) = (Arc::clone(&seen), Arc::clone(&reply));
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let path = parts.uri.path().to_owned();
            seen.lock().unwrap().push(Seen {
                method: parts.method.to_string(),
                path: path.clone(),
                headers: parts.headers,
                body,
            });
            let r = reply(&path);
            tokio::time::sleep(r.delay).await;
            let mut resp = axum::http::Response::builder().status(r.status);
            for (k, v) in r.headers {
                resp = resp.header(k, v);
            }
            resp.body(Body::from(r.body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base(&format!("http://{addr}")), log)
}

fn base(url: &str) -> PbxBaseUrl {
    PbxBaseUrl::parse(
        url,
        UrlPolicy {
            allow_insecure_http: true,
            allow_private_addresses: true,
        },
    )
    .unwrap()
}

fn config() -> PbxConfig {
    PbxConfig {
        allow_insecure_http: true,
        allow_private_addresses: true,
        request_timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
        max_response_bytes: 64 * 1024,
        ..PbxConfig::default()
    }
}

fn client(pbx: &PbxConfig) -> PbxClient {
    PbxClient::new(pbx, &TokenConfig::default()).unwrap()
}

fn creds() -> AppCredentials {
    AppCredentials::parse("trusted_app", "a80f1e618ddd", "s3cr&t=+/ é").unwrap()
}

const TOKEN: &str =
    r#"{"access_token":"pyt4ZUcLWc2FP3t10OJUN2N4Xh2qes","token_type":"Bearer","expires_in":3600}"#;

/// A gzip member with stored (uncompressed) deflate blocks: valid gzip
/// without a compression dependency.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(65_535).collect()
    };
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i + 1 == chunks.len()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[tokio::test]
async fn client_credentials_sends_exactly_the_documented_request() {
    let (base, log) = serve(|_| json(200, TOKEN)).await;
    let grant = client(&config())
        .client_credentials(&base, &creds())
        .await
        .unwrap();
    assert_eq!(
        grant.access_token.expose(),
        "pyt4ZUcLWc2FP3t10OJUN2N4Xh2qes"
    );
    assert_eq!(grant.expires_in_secs, Some(3600));
    let seen = log.lock().unwrap()[0].clone();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/oauth/token")
    );
    assert_eq!(
        std::str::from_utf8(&seen.body).unwrap(),
        "grant_type=client_credentials&client_id=a80f1e618ddd&client_secret=s3cr%26t%3D%2B%2F+%C3%A9"
    );
    let h = |n: &str| {
        seen.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(h("content-type"), "application/x-www-form-urlencoded");
    assert!(h("accept-encoding").contains("gzip"), "{:?}", seen.headers);
    assert_eq!(
        h("user-agent"),
        format!("pbx-tokend/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(h("accept"), "application/json");
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test]
async fn authorization_code_form() {
    let (base, log) = serve(|_| json(200, r#"{"access_token":"t","refresh_token":"r"}"#)).await;
    let public = AppCredentials::parse("public_app", "pub", "pubsecret").unwrap();
    let g = client(&config())
        .authorization_code(&base, &public, "aIlsm1bC", "https://your_site.com")
        .await
        .unwrap();
    assert_eq!(g.refresh_token.unwrap().expose(), "r");
    let body = log.lock().unwrap()[0].body.clone();
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "grant_type=authorization_code&code=aIlsm1bC&redirect_uri=https%3A%2F%2Fyour_site.com&client_id=pub&client_secret=pubsecret"
    );
}

#[tokio::test]
async fn gzip_answer_is_decoded() {
    let (base, _) = serve(|_| Reply {
        status: 200,
        headers: vec![
            ("content-type", "application/json".into()),
            ("content-encoding", "gzip".into()),
        ],
        body: gzip(TOKEN.as_bytes()),
        ..Default::default()
    })
    .await;
    let g = client(&config())
        .client_credentials(&base, &creds())
        .await
        .unwrap();
    assert_eq!(g.access_token.expose(), "pyt4ZUcLWc2FP3t10OJUN2N4Xh2qes");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (base, log) = serve(|path| match path {
        "/oauth/token" => Reply {
            status: 302,
            headers: vec![("location", "/elsewhere".into())],
            ..Default::default()
        },
        _ => json(200, TOKEN),
    })
    .await;
    match client(&config()).client_credentials(&base, &creds()).await {
        Err(PbxError::Refused {
            status: 302,
            message,
        }) => {
            assert!(
                message.contains("\"/elsewhere\"") && message.contains("not followed"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn body_cap_applies_to_plain_and_decoded_answers() {
    let mut pbx = config();
    pbx.max_response_bytes = 1024;
    let big = format!(r#"{{"access_token":"t","pad":"{}"}}"#, "x".repeat(5000));
    let plain = big.clone();
    let (base, _) = serve(move |_| json(200, &plain)).await;
    let want = "malformed PBX answer: answer larger than 1024 bytes";
    let err = client(&pbx)
        .client_credentials(&base, &creds())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), want);
    // Gzip: no Content-Length to go by, the streamed decoded size trips it.
    let (base, _) = serve(move |_| Reply {
        status: 200,
        headers: vec![("content-encoding", "gzip".into())],
        body: gzip(big.as_bytes()),
        ..Default::default()
    })
    .await;
    let err = client(&pbx)
        .client_credentials(&base, &creds())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), want);
    // An oversized error page still classifies by status.
    let (base, _) = serve(|_| Reply {
        status: 503,
        body: vec![b'<'; 5000],
        ..Default::default()
    })
    .await;
    let err = client(&pbx)
        .client_credentials(&base, &creds())
        .await
        .unwrap_err();
    assert!(matches!(err, PbxError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn statuses_are_classified() {
    let (base, _) = serve(|path| match path {
        "/oauth/token" => Reply {
            status: 429,
            headers: vec![
                ("retry-after", "30".into()),
                ("x-ratelimit-reset", "120".into()),
            ],
            ..Default::default()
        },
        _ => json(503, r#"{"message":"maintenance"}"#),
    })
    .await;
    let c = client(&config());
    match c.client_credentials(&base, &creds()).await {
        Err(PbxError::Throttled { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(120))
        }
        other => panic!("{other:?}"),
    }
    match c.get_user(&base, &"tok".into()).await {
        Err(PbxError::Transient { reason }) => assert_eq!(reason, "HTTP 503: maintenance"),
        other => panic!("{other:?}"),
    }
    let (base, _) = serve(|_| json(401, r#"{"error":"invalid_client"}"#)).await;
    assert!(matches!(
        c.client_credentials(&base, &creds()).await,
        Err(PbxError::CredentialsRejected { status: 401, .. })
    ));
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let (base, _) = serve(|_| Reply {
        delay: Duration::from_secs(5),
        ..json(200, TOKEN)
    })
    .await;
    let mut pbx = config();
    pbx.request_timeout_ms = 200;
    match client(&pbx).client_credentials(&base, &creds()).await {
        Err(PbxError::Transient { reason }) => {
            assert!(reason.contains("within 200 ms"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = base_for(port);
    match client(&config())
        .client_credentials(&closed, &creds())
        .await
    {
        Err(PbxError::Transient { reason }) => {
            assert!(
                reason.starts_with("cannot connect to 127.0.0.1:"),
                "{reason}"
            );
            assert!(!reason.contains("s3cr"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

fn base_for(port: u16) -> PbxBaseUrl {
    base(&format!("http://127.0.0.1:{port}"))
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let (base, log) = serve(|_| json(200, TOKEN)).await;
    let mut pbx = config();
    pbx.allow_insecure_http = false;
    match client(&pbx).client_credentials(&base, &creds()).await {
        Err(PbxError::Misconfigured { reason }) => {
            assert!(reason.contains("allow_insecure_http"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(log.lock().unwrap().is_empty());
}

#[tokio::test]
async fn onboarding_calls() {
    let (base, log) = serve(|path| match path {
        "/api/ver1.0/application/" => json(201, r#"{"id":77,"secret":"newsecret","name":"crm"}"#),
        "/api/ver1.0/user/" => json(
            200,
            r#"[{"id":20,"login":"client1","client_id":12,"admin":true,"timezone":"UTC"}]"#,
        ),
        _ => json(404, "{}"),
    })
    .await;
    let c = client(&config());
    let bearer: Secret<String> = "pyt4ZUcL".into();
    let app = c
        .create_application(&base, &bearer, "CRM \"acme\"")
        .await
        .unwrap();
    assert_eq!(
        (app.client_id.as_str(), app.client_secret.expose().as_str()),
        ("77", "newsecret")
    );
    let user = c.get_user(&base, &bearer).await.unwrap();
    assert_eq!((user.id, user.client_id, user.admin), (20, 12, true));
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        (seen[0].method.as_str(), seen[1].method.as_str()),
        ("POST", "GET")
    );
    for s in &seen {
        assert_eq!(s.headers.get("authorization").unwrap(), "Bearer pyt4ZUcL");
    }
    assert_eq!(
        seen[0].headers.get("content-type").unwrap(),
        "application/json"
    );
    let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"name": "CRM \"acme\"", "type": "trusted"})
    );
    assert!(seen[1].body.is_empty());

    let (base, _) = serve(|_| json(200, r#"{"id":"a b","secret":"x"}"#)).await;
    match c.create_application(&base, &bearer, "n").await {
        Err(PbxError::Protocol { reason }) => assert!(
            reason.contains("client_id must not contain spaces"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    let bad_bearer: Secret<String> = "a\nb".into();
    assert!(matches!(
        c.get_user(&base, &bad_bearer).await,
        Err(PbxError::Misconfigured { .. })
    ));
}

/// A PBX that echoes the request in its errors: the client secret, the
/// authorization code and the bearer token never reach the error text, in
/// any encoding (the one redaction in `PbxClient::exchange`).
#[tokio::test]
async fn echoed_secrets_are_redacted_from_every_error() {
    let secret = creds().client_secret.expose().clone();
    let form_secret: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let code = "plain code words";
    let bearer = Secret::new("short-tok".to_owned());
    let echo = format!(
        "you sent grant_type=client_credentials&client_id=a80f1e618ddd&client_secret={form_secret}; \
         raw {secret}; code {code}; token {}",
        bearer.expose()
    );
    let body =
        serde_json::json!({"error": "invalid_client", "error_description": echo}).to_string();
    for status in [400u16, 401, 403, 500] {
        let b = body.clone();
        let (base, _) = serve(move |_| json(status, &b)).await;
        let c = client(&config());
        let public = creds();
        // Each call redacts what it sent (and any look-alike).
        let sent_secret = [secret.as_str(), form_secret.as_str()];
        let sent_code = [secret.as_str(), form_secret.as_str(), code];
        let sent_bearer = [bearer.expose().as_str()];
        let errors = [
            (
                c.client_credentials(&base, &creds()).await.unwrap_err(),
                &sent_secret[..],
            ),
            (
                c.authorization_code(&base, &public, code, "https://crm/cb")
                    .await
                    .unwrap_err(),
                &sent_code[..],
            ),
            (
                c.create_application(&base, &bearer, "app")
                    .await
                    .unwrap_err(),
                &sent_bearer[..],
            ),
            (
                c.get_user(&base, &bearer).await.unwrap_err(),
                &sent_bearer[..],
            ),
        ];
        for (e, leaks) in errors {
            let text = format!("{e} {e:?}");
            assert!(text.contains("[redacted]"), "{status}: {text}");
            assert!(text.contains("client_id=a80f1e618ddd"), "{text}");
            for leak in leaks {
                assert!(!text.contains(leak), "{status}: {leak:?} in {text}");
            }
        }
    }
}
