//! Turns fuzz input into an HTTP answer: two bytes of status, then up to
//! four header lines (Content-Type, Retry-After, X-RateLimit-Reset, Date),
//! each ended by '\n', then the body. A `\x00` line means "header absent".

use pbx_tokend::pbx::parse::ResponseMeta;

pub struct Answer<'a> {
    pub status: u16,
    pub meta: ResponseMeta,
    pub body: &'a [u8],
}

pub fn answer(data: &[u8]) -> Option<Answer<'_>> {
    if data.len() < 2 {
        return None;
    }
    // With the top bit clear a 2xx (200..=207), with it set any status in
    // 100..=599: every class is reachable, success is common.
    let raw = u16::from_le_bytes([data[0], data[1]]);
    let status = if raw & 0x8000 != 0 {
        100 + raw % 500
    } else {
        200 + raw % 8
    };
    let mut rest = &data[2..];
    let mut headers: Vec<Option<String>> = Vec::new();
    for _ in 0..4 {
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let line = &rest[..i];
                headers.push(if line == b"\x00" {
                    None
                } else {
                    Some(String::from_utf8_lossy(line).into_owned())
                });
                rest = &rest[i + 1..];
            }
            None => headers.push(None),
        }
    }
    let mut h = headers.into_iter();
    let meta = ResponseMeta {
        content_type: h.next().flatten(),
        retry_after: h.next().flatten(),
        rate_limit_reset: h.next().flatten(),
        date: h.next().flatten(),
        location: None,
    };
    Some(Answer {
        status,
        meta,
        body: rest,
    })
}

/// Whatever the input, a 429 waits within the documented bounds and error
/// texts stay short (they are sanitised and cut, never raw bodies) and
/// carry nothing that looks like a secret.
pub fn check_error(e: &pbx_tokend::pbx::PbxError) {
    use pbx_tokend::pbx::parse::{MAX_THROTTLE, MIN_THROTTLE};
    if let pbx_tokend::pbx::PbxError::Throttled { retry_after } = e {
        assert!(*retry_after >= MIN_THROTTLE && *retry_after <= MAX_THROTTLE);
    }
    let text = e.to_string();
    assert!(text.len() < 2048, "error text of {} bytes", text.len());
    assert!(
        !text.chars().any(|c| c.is_control()),
        "control character in {text:?}"
    );
    // Nothing in it still looks like a secret (`client_secret=...`, a
    // Bearer credential, a long random run): redacting again changes nothing.
    let again = pbx_tokend::pbx::redact::redact(&text, &[]);
    assert_eq!(again, text, "a secret look-alike survived");
}
