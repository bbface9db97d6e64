//! Building the simulator's HTTP answers: JSON (gzipped when the client
//! asks), OAuth and REST error bodies, throttling headers, HTML pages.

use std::io::Write;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::state::OAuthError;

/// True when the request has `Accept-Encoding` listing gzip.
pub(crate) fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A body with a content type, gzipped when `gzip` and the body is not empty.
pub(crate) fn raw(status: u16, content_type: &'static str, body: Vec<u8>, gzip: bool) -> Response {
    let mut body = body;
    let mut encoded = false;
    if gzip && !body.is_empty() {
        let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 2 + 32), Compression::fast());
        if enc.write_all(&body).is_ok() {
            if let Ok(z) = enc.finish() {
                body = z;
                encoded = true;
            }
        }
    }
    let mut resp = (status_of(status), Body::from(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if encoded {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    resp
}

pub(crate) fn json(status: u16, value: &serde_json::Value, gzip: bool) -> Response {
    raw(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
        gzip,
    )
}

/// OAuth answers must not be cached (RFC 6749 section 5.1).
pub(crate) fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn oauth_error(e: &OAuthError, gzip: bool) -> Response {
    let body = serde_json::json!({"error": e.error, "error_description": e.description});
    let mut resp = no_store(json(e.status, &body, gzip));
    if e.status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"oauth\""),
        );
    }
    resp
}

/// A REST error: `{"message": ..}`.
pub(crate) fn message(status: u16, msg: &str, gzip: bool) -> Response {
    json(status, &serde_json::json!({ "message": msg }), gzip)
}

/// 401 for the REST API, with the Bearer challenge.
pub(crate) fn bearer_challenge(msg: &str, gzip: bool) -> Response {
    let mut resp = message(401, msg, gzip);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"api\""),
    );
    resp
}

/// 429 with the provider's rate-limit headers; `reset_secs` is the time
/// until requests are accepted again.
pub(crate) fn throttled(limit: u32, reset_secs: u64, gzip: bool) -> Response {
    let mut resp = message(429, "Request limit exceeded. Try again later.", gzip);
    let h = resp.headers_mut();
    let reset = HeaderValue::from(reset_secs);
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
    h.insert("x-ratelimit-reset", reset.clone());
    h.insert(header::RETRY_AFTER, reset);
    resp
}

/// What an nginx in front of a dead backend answers.
pub(crate) fn unavailable() -> Response {
    html(
        503,
        "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n".to_owned(),
    )
}

pub(crate) fn html(status: u16, page: String) -> Response {
    raw(status, "text/html; charset=utf-8", page.into_bytes(), false)
}

/// A minimal HTML page with a title and a body fragment.
pub(crate) fn page(status: u16, title: &str, body: &str) -> Response {
    html(
        status,
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\n<body>\n<h1>{t}</h1>\n{body}\n</body></html>\n",
            t = escape(title)
        ),
    )
}

/// HTML-escape text for element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
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

/// 302 to `location`.
pub(crate) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut resp = StatusCode::FOUND.into_response();
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => page(400, "Bad redirect", "The redirect URI cannot be used."),
    }
}
