//! Redaction of PBX-supplied text: a secret the daemon sent, echoed back in
//! any mix of raw, URL-encoded and JSON-escaped spellings inside arbitrary
//! text and inside an error body of any status, never survives in the error
//! text. Input: one byte of secret length, the secret, one byte choosing
//! the encoding, then the text around it split at the first `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::pbx::parse::{classify_failure, ResponseMeta};
use pbx_tokend::pbx::redact::{redact, MIN_KNOWN_CHARS, REDACTED};
use pbx_tokend::pbx::PbxError;

/// `%XX` for every byte but unreserved ones; `+` for space when `form`.
fn url_encode(s: &str, form: bool, lower: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' if form => out.push('+'),
            _ if lower => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// JSON string escaping; `all` escapes every non-ASCII-alphanumeric char.
fn json_escape(s: &str, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || (all && !c.is_ascii_alphanumeric()) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units).iter() {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The error's text fields (what `{e}` wraps in our own words), with each
/// marker split apart so that a secret like `dact` or `]x` cannot be
/// "found" inside or across `[redacted]`.
fn texts(e: &PbxError) -> Vec<String> {
    let fields = match e {
        PbxError::CredentialsRejected {
            error, description, ..
        } => vec![
            error.clone().unwrap_or_default(),
            description.clone().unwrap_or_default(),
        ],
        PbxError::Throttled { .. } => vec![],
        PbxError::Transient { reason }
        | PbxError::Protocol { reason }
        | PbxError::Misconfigured { reason } => vec![reason.clone()],
        PbxError::Refused { message, .. } => vec![message.clone()],
    };
    fields.iter().map(|f| f.replace(REDACTED, "\0")).collect()
}

fn encode(secret: &str, how: u8) -> String {
    match how % 7 {
        0 => secret.to_owned(),
        1 => url_encode(secret, true, false),
        2 => url_encode(secret, false, true),
        3 => json_escape(secret, false),
        4 => json_escape(secret, true),
        5 => json_escape(&url_encode(secret, true, false), false),
        _ => json_escape(secret, false).replace('/', "\\/"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 64);
    if rest.len() < n + 1 {
        return;
    }
    let secret = String::from_utf8_lossy(&rest[..n]).into_owned();
    // The daemon's secrets are free of control characters (AppCredentials,
    // visible-ASCII tokens); a shorter one is not searched for.
    if secret.chars().count() < MIN_KNOWN_CHARS || secret.chars().any(char::is_control) {
        return;
    }
    let how = rest[n];
    let text = String::from_utf8_lossy(&rest[n + 1..]);
    let (before, after) = text.split_once('\n').unwrap_or((&text, ""));
    let spelled = encode(&secret, how);
    let embedded = format!("{before}{spelled}{after}");

    let out = redact(&embedded, &[&secret]).replace(REDACTED, "\0");
    for form in [secret.as_str(), spelled.as_str()] {
        assert!(!out.contains(form), "{form:?} survived in {out:?}");
    }

    // Through the classifier, as the client sees it.
    let body = format!(
        "{{\"error\":\"invalid_client\",\"error_description\":\"{}\"}}",
        json_escape(&embedded, false)
    );
    let meta = ResponseMeta {
        content_type: Some("application/json".into()),
        location: Some(embedded.clone()),
        ..ResponseMeta::default()
    };
    for status in [302u16, 400, 401, 403, 500] {
        let e = classify_failure(status, &meta, body.as_bytes()).redact(&[&secret]);
        for t in texts(&e) {
            assert!(!t.contains(secret.as_str()), "{secret:?} in {t:?}");
        }
    }
});
