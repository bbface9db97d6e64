//! Pure parsers for PBX answers: status + selected headers + body in, a
//! validated value or a classified [`PbxError`] out. Status decides first and
//! the body second, as the provider's answers are inconsistent in shape.
//!
//! Does not: do I/O, read a clock (time-valued headers are resolved against
//! the answer's own `Date` header), or decide what to do about an error.
//! Error texts never contain tokens, secrets or raw bodies: only lengths,
//! content types, field names and sanitised PBX messages (with anything
//! that looks like a secret redacted; the client also redacts the secrets
//! it sent, see `redact/mod.rs`).

use serde_json::{Map, Value};

use super::{PbxError, TokenGrant};

mod throttle;
use crate::domain::PbxUser;
use crate::secret::Secret;
pub use throttle::{parse_http_date, throttle_delay, DEFAULT_THROTTLE, MAX_THROTTLE, MIN_THROTTLE};

/// Longest access or refresh token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// PBX-provided error texts are cut to this many characters.
pub const MAX_DETAIL_CHARS: usize = 200;

/// The response headers the parsers look at, as raw strings. The client
/// fills it; fuzzers build it from arbitrary text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub rate_limit_reset: Option<String>,
    /// `Date`: anchors an HTTP-date `Retry-After` to the server's own clock,
    /// so our clock skew does not matter.
    pub date: Option<String>,
    pub location: Option<String>,
}

/// A new application's credentials as the PBX sent them, not yet checked
/// against [`crate::domain::AppCredentials`] rules.
#[derive(Debug, Clone)]
pub struct AppCredentialsRaw {
    pub client_id: String,
    pub client_secret: Secret<String>,
}

fn protocol(reason: impl Into<String>) -> PbxError {
    PbxError::Protocol {
        reason: reason.into(),
    }
}

/// Answer to `POST /oauth/token` (either grant type).
///
/// Rules beyond the document: a missing `token_type` is taken as Bearer (the
/// document says it is always Bearer); `expires_in` may be a number or a
/// numeric string, and an integral float (`3600.0`) is accepted; a malformed
/// `refresh_token` is dropped, not fatal, because pbx-tokend never uses it.
pub fn parse_token_response(
    status: u16,
    meta: &ResponseMeta,
    body: &[u8],
    max_lifetime_secs: u64,
) -> Result<TokenGrant, PbxError> {
    let obj = match success_json(status, meta, body)? {
        Value::Object(m) => m,
        other => {
            return Err(protocol(format!(
                "token answer is {}, expected a JSON object",
                kind(&other)
            )))
        }
    };
    let access_token = match obj.get("access_token") {
        None | Some(Value::Null) => {
            return Err(protocol(format!(
                "token answer has no access_token (fields received: {})",
                field_names(&obj)
            )))
        }
        Some(Value::String(s)) => check_token("access_token", s)?,
        Some(other) => {
            return Err(protocol(format!(
                "access_token is {}, expected a string",
                kind(other)
            )))
        }
    };
    let token_type = match obj.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_owned(),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(Value::String(s)) => {
            return Err(protocol(format!(
                "token_type is {:?}; only Bearer is supported",
                sanitize(s, 32)
            )))
        }
        Some(other) => {
            return Err(protocol(format!(
                "token_type is {}, expected the string \"Bearer\"",
                kind(other)
            )))
        }
    };
    let expires_in_secs = expires_in(obj.get("expires_in"), max_lifetime_secs)?;
    let refresh_token = match obj.get("refresh_token") {
        Some(Value::String(s)) => check_token("refresh_token", s).ok(),
        _ => None,
    };
    Ok(TokenGrant {
        access_token,
        token_type,
        expires_in_secs,
        refresh_token,
    })
}

/// The token goes verbatim into `Authorization: Bearer ...` headers of every
/// microservice, so only visible ASCII is accepted (no spaces, no controls).
fn check_token(field: &str, s: &str) -> Result<Secret<String>, PbxError> {
    if s.is_empty() {
        return Err(protocol(format!("{field} is empty")));
    }
    if s.len() > MAX_TOKEN_BYTES {
        return Err(protocol(format!(
            "{field} is {} bytes long; at most {MAX_TOKEN_BYTES} are accepted",
            s.len()
        )));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(protocol(format!(
            "{field} contains spaces, control or non-ASCII characters, which cannot go in an HTTP header"
        )));
    }
    Ok(Secret::new(s.to_owned()))
}

fn expires_in(v: Option<&Value>, max: u64) -> Result<Option<u64>, PbxError> {
    let bad = |shown: String| {
        protocol(format!(
            "expires_in is {shown}; expected a whole number of seconds between 1 and {max}"
        ))
    };
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                u
            } else {
                match n.as_f64() {
                    // Integral floats only; `as` is exact below 2^53 and the
                    // range check below rejects anything near the edge.
                    Some(f) if f.fract() == 0.0 && (1.0..9.0e15).contains(&f) => f as u64,
                    _ => return Err(bad(n.to_string())),
                }
            }
        }
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(u) => u,
            Err(_) => return Err(bad(format!("{:?}", sanitize(s, 32)))),
        },
        Some(other) => return Err(bad(kind(other).to_owned())),
    };
    if secs == 0 || secs > max {
        return Err(bad(secs.to_string()));
    }
    Ok(Some(secs))
}

/// Answer to `POST /api/ver1.0/application/`. Its shape is undocumented:
/// the id may be `client_id` or `id` (string or integer), the secret
/// `client_secret` or `secret`; an object or a one-element array.
pub fn parse_application_response(
    status: u16,
    meta: &ResponseMeta,
    body: &[u8],
) -> Result<AppCredentialsRaw, PbxError> {
    let obj = single_object(success_json(status, meta, body)?, "application answer")?;
    let client_id = ["client_id", "id"].iter().find_map(|k| match obj.get(*k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    });
    let client_secret = ["client_secret", "secret"]
        .iter()
        .find_map(|k| match obj.get(*k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        });
    match (client_id, client_secret) {
        (Some(client_id), Some(secret)) => Ok(AppCredentialsRaw {
            client_id,
            client_secret: Secret::new(secret),
        }),
        (id, _) => Err(protocol(format!(
            "application answer has no usable {} (expected a non-empty string in {}); fields received: {}",
            if id.is_none() { "application id" } else { "secret" },
            if id.is_none() { "client_id or id" } else { "client_secret or secret" },
            field_names(&obj)
        ))),
    }
}

/// Answer to `GET /api/ver1.0/user/`: an object or a one-element array;
/// extra fields are ignored. Ids may be integers or numeric strings; a
/// missing `admin` reads as false; `login` is sanitised, not refused.
pub fn parse_user_response(
    status: u16,
    meta: &ResponseMeta,
    body: &[u8],
) -> Result<PbxUser, PbxError> {
    let obj = single_object(success_json(status, meta, body)?, "user answer")?;
    let required = |k: &str| {
        opt_int(&obj, k)?.ok_or_else(|| {
            protocol(format!(
                "user answer has no {k} (fields received: {})",
                field_names(&obj)
            ))
        })
    };
    let id = required("id")?;
    let client_id = required("client_id")?;
    let login = match obj.get("login") {
        Some(Value::String(s)) if !clean_data(s, 256).is_empty() => clean_data(s, 256),
        Some(Value::String(_)) => return Err(protocol("user answer has an empty login")),
        Some(other) if !other.is_null() => {
            return Err(protocol(format!(
                "login in the user answer is {}, expected a string",
                kind(other)
            )))
        }
        _ => {
            return Err(protocol(format!(
                "user answer has no login (fields received: {})",
                field_names(&obj)
            )))
        }
    };
    let admin = match obj.get("admin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) if n.as_u64() == Some(0) => false,
        Some(Value::Number(n)) if n.as_u64() == Some(1) => true,
        Some(other) => {
            return Err(protocol(format!(
                "admin in the user answer is {}, expected true or false",
                kind(other)
            )))
        }
    };
    Ok(PbxUser {
        id,
        login,
        client_id,
        admin,
        dealer_id: opt_int(&obj, "dealer_id")?,
        extension_id: opt_int(&obj, "extension_id")?,
        extension_group_id: opt_int(&obj, "extension_group_id")?,
    })
}

fn opt_int(obj: &Map<String, Value>, k: &str) -> Result<Option<i64>, PbxError> {
    match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(protocol(format!(
            "{k} in the user answer is {}, expected an integer",
            match other {
                Value::Number(n) => n.to_string(),
                v => kind(v).to_owned(),
            }
        ))),
    }
}

fn single_object(v: Value, what: &str) -> Result<Map<String, Value>, PbxError> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Array(items) if items.is_empty() => {
            Err(protocol(format!("{what} is an empty array")))
        }
        Value::Array(mut items) if items.len() == 1 => match items.pop() {
            Some(Value::Object(m)) => Ok(m),
            Some(other) => Err(protocol(format!(
                "{what} is an array holding {}, expected an object",
                kind(&other)
            ))),
            None => Err(protocol(format!("{what} is an empty array"))),
        },
        Value::Array(items) => Err(protocol(format!(
            "{what} is an array of {} items, expected one object",
            items.len()
        ))),
        other => Err(protocol(format!(
            "{what} is {}, expected a JSON object",
            kind(&other)
        ))),
    }
}

/// Non-2xx answers become the matching error; 2xx bodies become JSON.
fn success_json(status: u16, meta: &ResponseMeta, body: &[u8]) -> Result<Value, PbxError> {
    if !(200..300).contains(&status) {
        return Err(classify_failure(status, meta, body));
    }
    let trimmed = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if trimmed.iter().all(u8::is_ascii_whitespace) {
        return Err(protocol(format!(
            "expected JSON, got an empty answer ({})",
            describe_content_type(meta)
        )));
    }
    // serde_json's messages can quote the input; only its position is kept.
    serde_json::from_slice(trimmed).map_err(|e| {
        protocol(format!(
            "expected JSON, got {} ({} bytes, not JSON at line {} column {})",
            describe_content_type(meta),
            body.len(),
            e.line(),
            e.column()
        ))
    })
}

/// The error for a non-2xx answer. Usable on any endpoint: OAuth errors
/// (`error`, `error_description`), REST errors (`message`, or `detail` as
/// Django REST framework sends) and bare statuses are all understood.
pub fn classify_failure(status: u16, meta: &ResponseMeta, body: &[u8]) -> PbxError {
    let d = ErrorDetails::from_body(body);
    let credentials_error = d.error.as_deref().is_some_and(|e| {
        [
            "invalid_client",
            "unauthorized_client",
            "invalid_grant",
            "access_denied",
        ]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(e))
    });
    match status {
        300..=399 => PbxError::Refused {
            status,
            message: format!(
                "the PBX answered with a redirect to {}; redirects are not followed (check pbx_base_url)",
                meta.location
                    .as_deref()
                    .map(|l| format!("{:?}", sanitize(l, MAX_DETAIL_CHARS)))
                    .unwrap_or_else(|| "nowhere (no Location header)".to_owned())
            ),
        },
        429 => PbxError::Throttled {
            retry_after: throttle_delay(meta),
        },
        401 => PbxError::CredentialsRejected {
            status,
            error: d.error,
            description: d.description,
        },
        400 if credentials_error => PbxError::CredentialsRejected {
            status,
            error: d.error,
            description: d.description,
        },
        // Request Timeout / Too Early: the PBX asks us to try again.
        408 | 425 => PbxError::Transient {
            reason: format!("HTTP {status}{}", d.suffix()),
        },
        400..=499 => PbxError::Refused {
            status,
            message: d.message().unwrap_or_else(|| {
                format!("no details ({}, {} bytes)", describe_content_type(meta), body.len())
            }),
        },
        500..=599 => PbxError::Transient {
            reason: format!("HTTP {status}{}", d.suffix()),
        },
        _ => protocol(format!("unexpected HTTP status {status}")),
    }
}

#[derive(Debug, Default)]
struct ErrorDetails {
    error: Option<String>,
    description: Option<String>,
}

impl ErrorDetails {
    fn from_body(body: &[u8]) -> Self {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |k: &str| match obj.get(k) {
            Some(Value::String(s)) => Some(sanitize(s, MAX_DETAIL_CHARS)).filter(|s| !s.is_empty()),
            _ => None,
        };
        // Some APIs nest it: {"error": {"message": "..."}}.
        let nested = match obj.get("error") {
            Some(Value::Object(e)) => match e.get("message") {
                Some(Value::String(s)) => Some(sanitize(s, MAX_DETAIL_CHARS)),
                _ => None,
            },
            _ => None,
        };
        Self {
            error: match obj.get("error") {
                Some(Value::String(s)) => Some(sanitize(s, 64)).filter(|s| !s.is_empty()),
                _ => None,
            },
            description: text("error_description")
                .or_else(|| text("message"))
                .or_else(|| text("detail"))
                .or(nested),
        }
    }

    fn message(&self) -> Option<String> {
        match (&self.error, &self.description) {
            (Some(e), Some(d)) => Some(format!("{e}: {d}")),
            (Some(e), None) => Some(e.clone()),
            (None, Some(d)) => Some(d.clone()),
            (None, None) => None,
        }
    }

    fn suffix(&self) -> String {
        self.message().map(|m| format!(": {m}")).unwrap_or_default()
    }
}

/// Control characters and bidi overrides out, secrets and look-alikes
/// redacted ([`super::redact`], before the cut so a cut cannot leave half a
/// secret unrecognised), at most `max` characters. For error texts.
fn sanitize(s: &str, max: usize) -> String {
    let redacted = super::redact::redact(&clean(s), &[]);
    // Once more after the cut: a short random run ending at the cut mark.
    super::redact::redact(&cut(&redacted, max), &[])
}

/// Control characters and bidi overrides out, at most `max` characters,
/// nothing redacted: for data (a login), not for error texts.
fn clean_data(s: &str, max: usize) -> String {
    cut(&clean(s), max)
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Trimmed, and cut to `max` characters with the cut mark.
fn cut(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() > max {
        let mut out: String = s.chars().take(max).collect();
        out.push(super::redact::CUT_MARK);
        out
    } else {
        s.to_owned()
    }
}

/// `text/html` and the like; never more than a short, plain media type.
fn describe_content_type(meta: &ResponseMeta) -> String {
    match meta.content_type.as_deref() {
        None => "no Content-Type".to_owned(),
        Some(ct) => {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let plain = !media.is_empty()
                && media.len() <= 64
                && media
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b));
            // A media type is no place for a secret-looking value either.
            if plain && super::redact::redact(&media, &[]) == media {
                media
            } else {
                "an unreadable Content-Type".to_owned()
            }
        }
    }
}

/// Field names for error messages, never values. A name that is not a plain
/// identifier is only counted, in case a broken server put data in a key.
fn field_names(obj: &Map<String, Value>) -> String {
    const MAX_SHOWN: usize = 20;
    let mut names: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 40
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                && !super::redact::looks_secret(k)
        })
        .collect();
    names.sort_unstable();
    let hidden = obj.len() - names.len().min(MAX_SHOWN);
    names.truncate(MAX_SHOWN);
    let mut out = if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    };
    if hidden > 0 {
        out.push_str(&format!(" and {hidden} other(s)"));
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
