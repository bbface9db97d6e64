//! `/oauth/authorize` (the consent page and its form) and `/oauth/token`
//! (authorization_code, client_credentials, refresh_token grants), with the
//! malformed-answer faults applied to successful token answers and the
//! echoing error answers (`echo.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::Engine;

use super::echo;
use super::model::Malformed;
use super::respond;
use super::state::{Issued, OAuthError, TokenRequest};
use super::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/oauth/token", axum::routing::post(token))
        .route(
            "/oauth/authorize",
            get(authorize_page).post(authorize_decision),
        )
}

fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `Authorization: Basic base64(id:secret)`, the other way to authenticate.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (id, secret) = s.split_once(':')?;
    let dec = |x: &str| {
        url::form_urlencoded::parse(format!("x={x}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

async fn token(State(sim): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let gzip = respond::wants_gzip(&headers);
    let form_ok = is_form(&headers);
    let mut f = if form_ok {
        parse_form(&body)
    } else {
        HashMap::new()
    };
    let mut req = TokenRequest {
        grant_type: f.remove("grant_type"),
        client_id: f.remove("client_id"),
        client_secret: f.remove("client_secret"),
        code: f.remove("code"),
        redirect_uri: f.remove("redirect_uri"),
        refresh_token: f.remove("refresh_token"),
    };
    if req.client_id.is_none() {
        if let Some((id, secret)) = basic_auth(&headers) {
            req.client_id = Some(id);
            req.client_secret = Some(secret);
        }
    }
    // A real provider keeps working on a request whose client hung up (a
    // timeout, a cancelled call): run it on its own task so it is still
    // counted in flight, and still grants, after the connection is gone.
    // The echo fault answers with the request as received, so it is built
    // here, where the raw headers and body still are.
    let echo = sim
        .faults()
        .faults
        .echo
        .clone()
        .filter(|f| f.endpoints.token())
        .map(|fault| {
            let received = echo::Received {
                method: "POST",
                path: "/oauth/token",
                headers: &headers,
                body: &body,
            };
            (fault.status, echo::token_answer(&fault, &received, gzip))
        });
    match tokio::spawn(handle_token(sim, req, gzip, form_ok, echo)).await {
        Ok(resp) => resp,
        Err(_) => respond::message(500, "The token request failed.", gzip),
    }
}

async fn handle_token(
    sim: Arc<Shared>,
    req: TokenRequest,
    gzip: bool,
    form_ok: bool,
    echo: Option<(u16, Response)>,
) -> Response {
    let arrival = sim.stats.token_arrival(
        req.grant_type.as_deref().unwrap_or(""),
        req.client_id.as_deref(),
        gzip,
    );
    if let Some(resp) = sim.gate(Some(&arrival), gzip).await {
        sim.stats.token_response(resp.status().as_u16(), false);
        return resp;
    }
    if let Some((status, resp)) = echo {
        sim.stats.status_sent(status);
        sim.stats.token_response(status, false);
        return resp;
    }
    let result = if form_ok {
        let now = sim.now();
        let lifetime_ms = i64::try_from(sim.config().token_lifetime_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        sim.registry().grant(&req, now, lifetime_ms)
    } else {
        Err(OAuthError {
            status: 400,
            error: "invalid_request",
            description: "The body must be application/x-www-form-urlencoded.".into(),
        })
    };
    let resp = match result {
        Ok(issued) => token_answer(&sim, &issued, gzip),
        Err(e) => {
            tracing::debug!(client_id = ?req.client_id, error = e.error, "sim: token request refused");
            respond::oauth_error(&e, gzip)
        }
    };
    sim.stats
        .token_response(resp.status().as_u16(), resp.status().is_success());
    drop(arrival);
    resp
}

/// The success answer, or its malformed variant when that fault is set.
fn token_answer(sim: &Shared, issued: &Issued, gzip: bool) -> Response {
    let (lifetime, omit) = {
        let c = sim.config();
        (c.token_lifetime_secs, c.omit_expires_in)
    };
    let malformed = sim.faults().faults.malformed;
    let mut body = serde_json::json!({
        "access_token": issued.access_token,
        "expires_in": lifetime,
        "token_type": "Bearer",
        "scope": "all",
    });
    if let Some(r) = &issued.refresh_token {
        body["refresh_token"] = r.clone().into();
    }
    if omit {
        remove(&mut body, "expires_in");
    }
    let json = |b: &serde_json::Value| respond::no_store(respond::json(200, b, gzip));
    match malformed {
        None => json(&body),
        Some(Malformed::Html) => respond::page(
            200,
            "Sign in",
            "<form method=\"post\" action=\"/login\"><input name=\"login\"><input name=\"password\" type=\"password\"><button>Sign in</button></form>",
        ),
        Some(Malformed::EmptyBody) => respond::raw(200, "application/json", Vec::new(), gzip),
        Some(Malformed::NotJson) => respond::raw(
            200,
            "application/json",
            b"access_token=oops; this is not JSON {".to_vec(),
            gzip,
        ),
        Some(Malformed::MissingAccessToken) => {
            remove(&mut body, "access_token");
            json(&body)
        }
        Some(Malformed::NegativeExpiresIn) => {
            body["expires_in"] = (-5).into();
            json(&body)
        }
        Some(Malformed::NonBearerType) => {
            body["token_type"] = "mac".into();
            json(&body)
        }
        Some(Malformed::OmitExpiresIn) => {
            remove(&mut body, "expires_in");
            json(&body)
        }
        Some(Malformed::AbsurdExpiresIn) => {
            body["expires_in"] = 1_000_000_000_000_u64.into();
            json(&body)
        }
    }
}

fn remove(v: &mut serde_json::Value, key: &str) {
    if let Some(m) = v.as_object_mut() {
        m.remove(key);
    }
}

/// The query parameters of an authorization request, validated.
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
}

fn validate_authorize(sim: &Shared, p: &HashMap<String, String>) -> Result<AuthRequest, String> {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if get("response_type") != "code" {
        return Err(format!(
            "response_type must be \"code\" (got {:?}).",
            get("response_type")
        ));
    }
    if get("scope") != "all" {
        return Err(format!("scope must be \"all\" (got {:?}).", get("scope")));
    }
    let client_id = get("client_id");
    let redirect_uri = get("redirect_uri");
    if client_id.is_empty() || redirect_uri.is_empty() {
        return Err("client_id and redirect_uri are required.".into());
    }
    sim.registry()
        .check_authorize(client_id, redirect_uri)
        .map_err(|e| e.to_string())?;
    Ok(AuthRequest {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        state: p.get("state").cloned(),
    })
}

fn error_page(msg: &str) -> Response {
    respond::page(
        400,
        "Authorization error",
        &format!("<p>{}</p>", respond::escape(msg)),
    )
}

async fn authorize_page(State(sim): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    sim.stats.authorize_request();
    if let Some(resp) = sim.gate(None, false).await {
        return resp;
    }
    let p = parse_form(q.unwrap_or_default().as_bytes());
    let req = match validate_authorize(&sim, &p) {
        Ok(r) => r,
        Err(msg) => return error_page(&msg),
    };
    let e = respond::escape;
    let hidden =
        |k: &str, v: &str| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", e(v));
    let body = format!(
        "<p>The application <b>{cid}</b> asks for access to your PBX account data.</p>\n\
         <form method=\"post\" action=\"/oauth/authorize\">\n{h1}\n{h2}\n{h3}\n{h4}\n{h5}\n\
         <label>PBX login <input name=\"login\" value=\"\"></label>\n\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n</form>",
        cid = e(&req.client_id),
        h1 = hidden("client_id", &req.client_id),
        h2 = hidden("redirect_uri", &req.redirect_uri),
        h3 = hidden("state", req.state.as_deref().unwrap_or("")),
        h4 = hidden("response_type", "code"),
        h5 = hidden("scope", "all"),
    );
    respond::page(200, "Allow access?", &body)
}

async fn authorize_decision(State(sim): State<Arc<Shared>>, body: Bytes) -> Response {
    sim.stats.authorize_request();
    if let Some(resp) = sim.gate(None, false).await {
        return resp;
    }
    let mut p = parse_form(&body);
    p.entry("response_type".into())
        .or_insert_with(|| "code".into());
    p.entry("scope".into()).or_insert_with(|| "all".into());
    let req = match validate_authorize(&sim, &p) {
        Ok(r) => r,
        Err(msg) => return error_page(&msg),
    };
    let mut pairs: Vec<(&str, String)> = Vec::new();
    match p.get("decision").map(String::as_str) {
        Some("allow") => {
            let login = p.get("login").map(String::as_str);
            match sim.approve(&req.client_id, &req.redirect_uri, login) {
                Ok(code) => pairs.push(("code", code)),
                Err(e) => return error_page(&e.to_string()),
            }
        }
        Some("deny") => pairs.push(("error", "access_denied".into())),
        _ => return error_page("decision must be \"allow\" or \"deny\"."),
    }
    if let Some(s) = req.state.filter(|s| !s.is_empty()) {
        pairs.push(("state", s));
    }
    respond::redirect(&with_query(&req.redirect_uri, &pairs))
}

/// `uri` with `pairs` appended to its query.
fn with_query(uri: &str, pairs: &[(&str, String)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) => {
            {
                let mut q = u.query_pairs_mut();
                for (k, v) in pairs {
                    q.append_pair(k, v);
                }
            }
            u.to_string()
        }
        Err(_) => uri.to_owned(),
    }
}
