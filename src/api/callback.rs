//! The optional OAuth callback listener (`[callback] listen`): the PBX
//! redirects the user's browser to `GET /oauth/callback?code=..&state=..`
//! (or `?error=access_denied&state=..`); this completes (or ends) the
//! authorization and shows a small, plain HTML page saying what happened.
//! With it an operator onboards a tenant with the daemon and a browser only.
//!
//! Handlers only translate: query in, one `onboarding` call, page out.
//! Each completion or denial is audited like `CompleteAuthorization`
//! (action `authorization.complete`, client `oauth-callback`): the PBX
//! user's browser holds no API key, so the listener is the caller.
//! Everything shown is HTML-escaped; pages carry no script, no external
//! resource, and `Referrer-Policy: no-referrer` (the URL holds the code).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::error_map::onboarding_code;
use super::rpc_audit::code_name;
use super::wording::for_browser;
use crate::audit::{action, Audit};
use crate::onboarding::{CompleteInput, Onboarding, OnboardingError};

pub const CALLBACK_PATH: &str = "/oauth/callback";

/// The audit log's "client" for completions that arrive through this
/// listener.
pub const CALLBACK_CLIENT: &str = "oauth-callback";

/// Audit outcome of a flow the PBX user declined (a status name, as the
/// other outcomes).
const DENIED: &str = "PERMISSION_DENIED";

#[derive(Clone)]
struct Ctx {
    onboarding: Arc<Onboarding>,
    audit: Audit,
}

/// The callback routes; anything else answers a 404 page.
pub fn router(onboarding: Arc<Onboarding>, audit: Audit) -> Router {
    Router::new()
        .route(CALLBACK_PATH, get(callback))
        .fallback(not_found)
        .with_state(Ctx { onboarding, audit })
}

/// Serves until `stop` is cancelled, then finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    onboarding: Arc<Onboarding>,
    audit: Audit,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(onboarding, audit))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// Records a failed completion or denial; the tenant is not known from a
/// state that failed before its flow was found.
async fn audit_failure(audit: &Audit, e: &OnboardingError) {
    audit
        .record(
            CALLBACK_CLIENT,
            action::AUTHORIZATION_COMPLETE,
            None,
            code_name(onboarding_code(e)),
            &e.to_string(),
        )
        .await;
}

async fn callback(State(ctx): State<Ctx>, RawQuery(q): RawQuery) -> Response {
    let Ctx { onboarding, audit } = ctx;
    // The first value of each parameter wins.
    let mut p: HashMap<String, String> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or_default().as_bytes()) {
        p.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(state) = get("state") else {
        return page(
            StatusCode::BAD_REQUEST,
            "Link incomplete",
            "This link has no state parameter, so it cannot be matched to an authorization. Start again from the authorization link you were given.",
        );
    };
    if let Some(error) = get("error") {
        return match onboarding
            .deny(state, error, get("error_description"))
            .await
        {
            Ok(denial) => {
                audit
                    .record(
                        CALLBACK_CLIENT,
                        action::AUTHORIZATION_COMPLETE,
                        Some(&denial.tenant_id),
                        DENIED,
                        &denial.message,
                    )
                    .await;
                page(
                    StatusCode::OK,
                    "Access not granted",
                    &for_browser(
                        "You did not allow access, so nothing was connected.",
                        &denial.message,
                    ),
                )
            }
            Err(e) => {
                audit_failure(&audit, &e).await;
                failure(&e)
            }
        };
    }
    let Some(code) = get("code") else {
        return page(
            StatusCode::BAD_REQUEST,
            "Link incomplete",
            "This link has neither a code nor an error parameter. Start again from the authorization link you were given.",
        );
    };
    let input = CompleteInput {
        state: state.to_owned(),
        tenant_id: String::new(),
        code: code.to_owned(),
    };
    match onboarding.complete(input).await {
        Ok(t) => {
            audit
                .record(
                    CALLBACK_CLIENT,
                    action::AUTHORIZATION_COMPLETE,
                    Some(t.id.as_str()),
                    crate::audit::OK,
                    "",
                )
                .await;
            page(
            StatusCode::OK,
            "Connected",
            &format!(
                "The PBX account is now connected (tenant {}, PBX user {}). You can close this window.",
                t.id,
                t.pbx_user.as_ref().map_or("?", |u| u.login.as_str())
            ),
        )
        }
        Err(e) => {
            audit_failure(&audit, &e).await;
            failure(&e)
        }
    }
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("This server only answers {CALLBACK_PATH}."),
    )
}

/// The page reads first in plain words for the PBX user, then the detail
/// for the operator (commands, not RPC names).
fn failure(e: &OnboardingError) -> Response {
    let (status, plain) = match e {
        OnboardingError::InvalidArgument(_) => (
            StatusCode::BAD_REQUEST,
            "This link is damaged or incomplete.",
        ),
        OnboardingError::NotFound(_) => (
            StatusCode::NOT_FOUND,
            "This link is for an account that is not set up here any more.",
        ),
        OnboardingError::FailedPrecondition(_) => (
            StatusCode::CONFLICT,
            "This authorization link cannot be used any more.",
        ),
        OnboardingError::Unavailable { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The PBX could not be reached to finish connecting; reload this page in a few minutes to try again.",
        ),
        OnboardingError::Store(_) | OnboardingError::Internal(_) => {
            tracing::error!("callback: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on the server; nothing needs to be done in the PBX.",
            )
        }
    };
    page(
        status,
        "Connection failed",
        &for_browser(plain, &e.to_string()),
    )
}

/// A complete, plain page; `title` and `message` are escaped here.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title></head>\n<body><h1>{t}</h1>\n<p>{m}</p></body></html>\n",
        t = escape(title),
        m = escape(message)
    );
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

/// HTML text and attribute escaping.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[tokio::test]
    async fn pages_are_plain_and_private() {
        let resp = page(StatusCode::CONFLICT, "T<", "m>");
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(resp.headers()[header::REFERRER_POLICY], "no-referrer");
        let body = axum::body::to_bytes(resp.into_body(), 10_000)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("<h1>T&lt;</h1>") && body.contains("m&gt;"));
        assert!(!body.contains("<script"));
    }
}
