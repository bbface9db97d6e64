//! Error answers that echo the request back (`Faults::echo`): the provider
//! bug that puts `client_secret=...` into an error text. The simulator
//! spells the echo three ways (`EchoForm`) so a client's redaction is tried
//! against the raw URL-encoded body, bare decoded values and a JSON-escaped
//! copy; the answer is otherwise shaped like the provider's own errors.

use axum::http::{header, HeaderMap};
use axum::response::Response;

use super::model::{EchoFault, EchoForm};
use super::respond;
use super::state::OAuthError;

/// The request as the endpoint received it.
pub(crate) struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Received<'_> {
    fn authorization(&self) -> Option<String> {
        self.headers
            .get(header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The body's fields, decoded: a JSON object's string (and other
    /// scalar) members, else the pairs of a URL-encoded form.
    fn fields(&self) -> Vec<(String, String)> {
        if let Ok(serde_json::Value::Object(obj)) =
            serde_json::from_slice::<serde_json::Value>(self.body)
        {
            return obj
                .into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect();
        }
        url::form_urlencoded::parse(self.body)
            .into_owned()
            .collect()
    }
}

/// The text of the echo.
pub(crate) fn text(form: EchoForm, req: &Received<'_>) -> String {
    let head = format!("Rejected {} {}:", req.method, req.path);
    match form {
        EchoForm::Raw => {
            let mut s = head;
            if let Some(a) = req.authorization() {
                s.push_str(&format!(" [Authorization: {a}]"));
            }
            s.push(' ');
            s.push_str(&String::from_utf8_lossy(req.body));
            s
        }
        EchoForm::Values => {
            let mut s = format!("{head} unexpected");
            if let Some(a) = req.authorization() {
                // The credential after the scheme, like any other value.
                let cred = a.split_once(' ').map_or(a.as_str(), |(_, c)| c).to_owned();
                s.push(' ');
                s.push_str(&cred);
            }
            for (_, v) in req.fields() {
                s.push(' ');
                s.push_str(&v);
            }
            s
        }
        EchoForm::Json => {
            let mut pairs = Vec::new();
            if let Some(a) = req.authorization() {
                pairs.push(("authorization".to_owned(), a));
            }
            pairs.extend(req.fields());
            let body = pairs
                .iter()
                .map(|(k, v)| format!("{}:{}", php_json_string(k), php_json_string(v)))
                .collect::<Vec<_>>()
                .join(",");
            format!("{head} {{{body}}}")
        }
    }
}

/// A JSON string the way PHP's `json_encode` writes it by default: `/`
/// escaped, every non-ASCII character as `\uXXXX` (UTF-16 units).
pub(crate) fn php_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// The answer of `/oauth/token` under the fault.
pub(crate) fn token_answer(fault: &EchoFault, req: &Received<'_>, gzip: bool) -> Response {
    let echo = text(fault.form, req);
    match fault.status {
        400 | 401 => respond::oauth_error(
            &OAuthError {
                status: fault.status,
                error: "invalid_client",
                description: echo,
            },
            gzip,
        ),
        s => respond::no_store(respond::message(s, &echo, gzip)),
    }
}

/// The answer of an `/api` endpoint under the fault.
pub(crate) fn api_answer(fault: &EchoFault, req: &Received<'_>, gzip: bool) -> Response {
    let echo = text(fault.form, req);
    match fault.status {
        401 => respond::bearer_challenge(&echo, gzip),
        s => respond::message(s, &echo, gzip),
    }
}
