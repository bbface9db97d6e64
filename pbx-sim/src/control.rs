//! The control API under `/_sim/` (JSON in, JSON out) for `pbx-sim`, scripts
//! and out-of-process tests: apps, revocation, faults, configuration,
//! statistics, API-driven approval. Never subject to injected faults.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::model::{ConfigUpdate, Faults, SimError};
use super::{respond, Shared, Simulator};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/apps/trusted", post(add_trusted))
        .route("/_sim/apps/public", post(add_public))
        .route("/_sim/revoke", post(revoke))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/config", get(get_config).put(put_config))
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset_stats", post(reset_stats))
        .route("/_sim/approve", post(approve))
        .route("/_sim/created_apps", get(created_apps))
        .route("/_sim/token_valid", post(token_valid))
}

fn sim(shared: Arc<Shared>) -> Simulator {
    Simulator { shared }
}

/// The JSON body (empty means `{}`), or the 400 to answer.
macro_rules! parse {
    ($body:expr) => {
        match parse_json(&$body) {
            Ok(v) => v,
            Err(msg) => return respond::message(400, &msg, false),
        }
    };
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let body = if body.is_empty() { &b"{}"[..] } else { body };
    serde_json::from_slice(body).map_err(|e| format!("Invalid JSON body: {e}."))
}

fn ok<T: serde::Serialize>(status: u16, v: &T, headers: &HeaderMap) -> Response {
    respond::json(
        status,
        &serde_json::to_value(v).unwrap_or_default(),
        respond::wants_gzip(headers),
    )
}

fn sim_error(e: &SimError) -> Response {
    let status = match e {
        SimError::DuplicateClient(_) => 409,
        SimError::UnknownClient(_) => 404,
        _ => 400,
    };
    respond::message(status, &e.to_string(), false)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppBody {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    redirect_uri: Option<String>,
}

async fn add_trusted(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let b: AppBody = parse!(body);
    if b.redirect_uri.is_some() {
        return respond::message(400, "A trusted app has no redirect_uri.", false);
    }
    match sim(s).add_trusted_app(b.client_id.as_deref(), b.client_secret.as_deref()) {
        Ok(info) => ok(201, &info, &headers),
        Err(e) => sim_error(&e),
    }
}

async fn add_public(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let b: AppBody = parse!(body);
    let Some(uri) = b.redirect_uri else {
        return respond::message(400, "redirect_uri is required.", false);
    };
    match sim(s).add_public_app(b.client_id.as_deref(), b.client_secret.as_deref(), &uri) {
        Ok(info) => ok(201, &info, &headers),
        Err(e) => sim_error(&e),
    }
}

#[derive(Deserialize)]
struct ClientBody {
    client_id: String,
}

async fn revoke(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let b: ClientBody = parse!(body);
    match sim(s).revoke_client(&b.client_id) {
        Ok(()) => ok(200, &serde_json::json!({"revoked": b.client_id}), &headers),
        Err(e) => sim_error(&e),
    }
}

async fn get_faults(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    ok(200, &sim(s).faults(), &headers)
}

async fn put_faults(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let f: Faults = parse!(body);
    if !(0.0..=1.0).contains(&f.error_rate) {
        return respond::message(400, "error_rate must be between 0 and 1.", false);
    }
    if let Some(echo) = &f.echo {
        if !(400..=599).contains(&echo.status) {
            return respond::message(
                400,
                &format!(
                    "echo.status must be an error status between 400 and 599 (got {}).",
                    echo.status
                ),
                false,
            );
        }
    }
    let s = sim(s);
    s.set_faults(f);
    ok(200, &s.faults(), &headers)
}

async fn get_config(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    ok(200, &sim(s).config(), &headers)
}

async fn put_config(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let u: ConfigUpdate = parse!(body);
    let s = sim(s);
    s.update_config(&u);
    ok(200, &s.config(), &headers)
}

async fn stats(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    ok(200, &sim(s).stats(), &headers)
}

async fn reset_stats(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let s = sim(s);
    s.reset_stats();
    ok(200, &s.stats(), &headers)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    login: Option<String>,
}

async fn approve(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let b: ApproveBody = parse!(body);
    match sim(s).approve_as(&b.client_id, &b.redirect_uri, b.login.as_deref()) {
        Ok(code) => ok(200, &serde_json::json!({ "code": code }), &headers),
        Err(e) => sim_error(&e),
    }
}

async fn created_apps(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let apps: Vec<serde_json::Value> = sim(s)
        .created_apps()
        .into_iter()
        .map(|(name, client_id)| serde_json::json!({"name": name, "client_id": client_id}))
        .collect();
    ok(200, &apps, &headers)
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

async fn token_valid(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let b: TokenBody = parse!(body);
    let valid = sim(s).issued_token_valid(&b.token);
    ok(200, &serde_json::json!({ "valid": valid }), &headers)
}
