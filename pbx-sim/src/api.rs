//! The REST API the daemon uses: `POST /api/ver1.0/application/` (create a
//! trusted app for the token's PBX user) and `GET /api/ver1.0/user/` (the
//! authorized user). Errors are `{"message": ..}` as the provider sends them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use super::echo;
use super::model::AppResponseShape;
use super::respond;
use super::Shared;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/ver1.0/application/", post(create_application))
        .route("/api/ver1.0/user/", get(user))
}

pub(crate) async fn not_found(headers: HeaderMap) -> Response {
    respond::message(404, "Not found.", respond::wants_gzip(&headers))
}

/// The user behind the request's Bearer token, or why there is none.
fn authenticate(sim: &Shared, headers: &HeaderMap) -> Result<u32, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err("Authentication credentials were not provided.");
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or("The Authorization header must be \"Bearer <access_token>\".")?;
    let now = sim.now();
    sim.registry()
        .bearer_user(token, now)
        .ok_or("Invalid or expired access token.")
}

/// Common start of every `/api` request: counting, faults (an echo fault
/// answers before authentication, as a front-end filter would),
/// authentication.
async fn enter(sim: &Shared, received: &echo::Received<'_>) -> Result<(u32, bool), Response> {
    let headers = received.headers;
    let gzip = respond::wants_gzip(headers);
    sim.stats.api_request(gzip);
    if let Some(resp) = sim.gate(None, gzip).await {
        return Err(resp);
    }
    let echo = sim.faults().faults.echo.clone();
    if let Some(fault) = echo.filter(|f| f.endpoints.api()) {
        sim.stats.status_sent(fault.status);
        return Err(echo::api_answer(&fault, received, gzip));
    }
    let user = authenticate(sim, headers).map_err(|msg| respond::bearer_challenge(msg, gzip))?;
    Ok((user, gzip))
}

async fn create_application(
    State(sim): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = echo::Received {
        method: "POST",
        path: "/api/ver1.0/application/",
        headers: &headers,
        body: &body,
    };
    let (user, gzip) = match enter(&sim, &received).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (forbid, shape) = {
        let f = sim.faults();
        (f.faults.forbid_app_creation, f.faults.app_response_shape)
    };
    if forbid {
        return respond::message(
            403,
            "You do not have permission to create applications.",
            gzip,
        );
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return respond::message(400, &format!("The body is not valid JSON: {e}."), gzip),
    };
    let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("");
    if name.trim().is_empty() {
        return respond::message(400, "Field \"name\" is required.", gzip);
    }
    match v.get("type").and_then(|t| t.as_str()) {
        Some("trusted") => {}
        other => {
            return respond::message(
                400,
                &format!(
                    "Field \"type\" must be \"trusted\" (got {}).",
                    other.map_or("nothing".to_owned(), |t| format!("{t:?}"))
                ),
                gzip,
            )
        }
    }
    let created = sim.registry().create_trusted_for(user, name);
    let info = match created {
        Ok(i) => i,
        Err(e) => return respond::message(500, &e.to_string(), gzip),
    };
    sim.stats.app_created();
    tracing::info!(client_id = %info.client_id, name, "sim: trusted app created via the API");
    let (id_key, secret_key) = match shape {
        AppResponseShape::ClientIdSecret => ("client_id", "client_secret"),
        AppResponseShape::IdSecret => ("id", "secret"),
        AppResponseShape::Unknown => ("app_key", "app_password"),
    };
    let mut body = serde_json::Map::new();
    body.insert(id_key.into(), info.client_id.into());
    body.insert(secret_key.into(), info.client_secret.into());
    body.insert("name".into(), name.into());
    body.insert("type".into(), "trusted".into());
    respond::json(201, &serde_json::Value::Object(body), gzip)
}

async fn user(State(sim): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let received = echo::Received {
        method: "GET",
        path: "/api/ver1.0/user/",
        headers: &headers,
        body: &[],
    };
    let (user, gzip) = match enter(&sim, &received).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let wrap = sim.faults().faults.wrap_user_in_array;
    let u = sim.registry().user_json(user);
    let body = if wrap {
        serde_json::Value::Array(vec![u])
    } else {
        u
    };
    respond::json(200, &body, gzip)
}
