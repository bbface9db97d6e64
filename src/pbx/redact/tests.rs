//! Unit and property tests for `redact/mod.rs`: hostile echoes of every secret
//! in every encoding the PBX might use.
use proptest::prelude::*;

use super::*;
use crate::pbx::parse::{classify_failure, ResponseMeta};

const SECRET: &str = "a2423941f5be408c998d5f7207570990";
const CODE: &str = "aIlsm1bCglDGvQKShmJAhHrBhDyshn";

fn form(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn json(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

/// `%XX` escapes in lower case (the secret's own letters unchanged).
fn lower_hex(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        out.push_str(&esc.to_lowercase());
        rest = &rest[i + esc.len()..];
    }
    out.push_str(rest);
    out
}

/// Every character as `\uXXXX` (what some encoders emit for non-ASCII).
fn json_u(s: &str) -> String {
    s.encode_utf16().map(|u| format!("\\u{u:04X}")).collect()
}

#[test]
fn runs_of_backslashes_do_not_make_the_search_exponential() {
    // The `redaction` fuzz target's slow units: every backslash can be read
    // raw or as half of a JSON escape, so a secret of many backslashes
    // against a long run of them had Fibonacci-many readings per start
    // position before the search remembered its partial results. This
    // finishes at once with the memo and did not finish in minutes before.
    let secret = format!("{}x", "\\".repeat(40));
    let text = "\\".repeat(120);
    assert_eq!(redact_known(&text, &[&secret]), text);
    let echoed = format!("{text}{secret}{text}");
    assert!(!redact_known(&echoed, &[&secret]).contains(&secret));
}

#[test]
fn a_secret_that_contains_the_cut_mark_is_still_found() {
    // The `redaction` fuzz target's finding (fuzz/regressions/
    // redaction-crash-044157b3.bin): a client secret may hold any visible
    // character, `…` included, and the search used to stop at every `…`.
    let secret = "\u{2026}r&t=+/  ";
    let text = format!("ent_id=x\u{fffd}\u{1}2&07c{secret}");
    let out = redact(&text, &[secret]);
    assert!(!out.contains(secret), "{out:?}");
    assert!(out.contains(REDACTED), "{out:?}");
    let echoed = format!("invalid client {secret} and again {secret}.");
    assert!(!redact_known(&echoed, &[secret]).contains(secret));
}

#[test]
fn key_value_patterns() {
    for (text, kept) in [
        (
            "bad request: grant_type=client_credentials&client_id=x&client_secret=hunter2!",
            "client_id=x",
        ),
        (
            r#"{"client_secret": "hunter 2", "client_id": "x"}"#,
            r#""client_id": "x""#,
        ),
        (r#"echo: {\"client_secret\": \"hunter 2\"} end"#, "end"),
        ("Access_Token : 'abc def' ok", "ok"),
        (
            "code=xyz&redirect_uri=https://crm",
            "redirect_uri=https://crm",
        ),
        ("refresh_token%3Dsecretvalue more", "more"),
        ("password: pw; user: u", "user: u"),
    ] {
        let out = redact(text, &[]);
        assert!(out.contains(REDACTED), "{text} -> {out}");
        assert!(out.contains(kept), "{text} -> {out}");
        for gone in [
            "hunter2",
            "hunter 2",
            "abc def",
            "xyz",
            "secretvalue",
            "pw;",
        ] {
            assert!(!out.contains(gone), "{text} -> {out}");
        }
    }
    // Statuses and words are not secrets.
    for text in [
        r#"{"code": 400, "message": "bad"}"#,
        "invalid_client: the client secret is wrong",
        "token_type is \"mac\"; only Bearer is supported",
        "HTTP_400_BAD_REQUEST_ERROR_CODE_42",
        "ApplicationNotFoundException at /api/ver1.0/application/",
        "expires_in is \"soon\"; expected a whole number of seconds between 1 and 31622400",
    ] {
        assert_eq!(redact(text, &[]), text);
    }
}

#[test]
fn credentials_and_random_runs() {
    let out = redact(
        "Authorization: Bearer pyt4ZUcLWc2FP3t10OJUN2N4Xh2qes was refused",
        &[],
    );
    assert!(
        !out.contains("pyt4ZUc") && out.ends_with("was refused"),
        "{out}"
    );
    let out = redact("header was bearer%20eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", &[]);
    assert!(!out.contains("eyJ"), "{out}");
    let out = redact("basic dXNlcjpwYXNzd29yZA==", &[]);
    assert!(!out.contains("dXNlcjpw"), "{out}");
    for run in [
        SECRET,
        CODE,
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ",
        "aIlsmbCglDGvQKShmJAhHrBhDyshn",
    ] {
        assert!(looks_secret(run), "{run}");
        let out = redact(&format!("unknown app {run}."), &[]);
        assert_eq!(out, format!("unknown app {REDACTED}."));
    }
    for word in [
        "invalid_client_credentials",
        "ApplicationNotFoundException",
        "short1",
    ] {
        assert!(!looks_secret(word), "{word}");
    }
}

#[test]
fn known_secrets_in_every_encoding() {
    let secret = "s3cr&t=+/ é\"\\x";
    for enc in [
        secret.to_owned(),
        form(secret),
        form(secret).replace('+', "%20"),
        lower_hex(&form(secret)),
        json(secret),
        json(secret).replace('/', "\\/"),
        json_u(secret),
    ] {
        let text = format!("the PBX said: {enc} (end)");
        let out = redact(&text, &[secret]);
        assert_eq!(out, format!("the PBX said: {REDACTED} (end)"), "{enc}");
    }
    // Too short to search for without mangling words.
    assert_eq!(redact("a b c", &["a"]), "a b c");
}

#[test]
fn a_secret_cut_at_the_mark_is_redacted() {
    let secret = "plain words secret";
    let text = format!("said {}{CUT_MARK}", &secret[..9]);
    assert_eq!(
        redact(&text, &[secret]),
        format!("said {REDACTED}{CUT_MARK}")
    );
    // Three characters are too few to tell.
    let text = format!("said pla{CUT_MARK}");
    assert_eq!(redact(&text, &[secret]), text);
    // A random run cut short is redacted even when unknown.
    let text = format!("id 8f3a9c2e1b{CUT_MARK}");
    assert_eq!(redact(&text, &[]), format!("id {REDACTED}{CUT_MARK}"));
}

#[test]
fn hostile_echoes_through_the_error_classifier() {
    let meta = ResponseMeta {
        content_type: Some("application/json".into()),
        ..ResponseMeta::default()
    };
    let echoed = format!("grant_type=client_credentials&client_id=app&client_secret={SECRET}");
    let bodies = [
        serde_json::json!({"error": "invalid_client", "error_description": echoed}).to_string(),
        serde_json::json!({"message": format!("bad request {}", form(&echoed))}).to_string(),
        serde_json::json!({"detail": format!("Bearer {CODE}")}).to_string(),
        serde_json::json!({"error": {"message": format!("code={CODE}")}}).to_string(),
        serde_json::json!({"error": SECRET}).to_string(),
        serde_json::json!({"error_description": format!("{}{SECRET}", "x".repeat(190))})
            .to_string(),
    ];
    for status in [400, 401, 403, 404, 408, 500, 503] {
        for body in &bodies {
            let text = classify_failure(status, &meta, body.as_bytes()).to_string();
            for leak in [SECRET, CODE, &SECRET[..12], &CODE[..12]] {
                assert!(!text.contains(leak), "{status} {body}: {text}");
            }
        }
    }
    let redirect = ResponseMeta {
        location: Some(format!("https://evil.example/cb?code={CODE}&x=1")),
        ..ResponseMeta::default()
    };
    let text = classify_failure(302, &redirect, b"").to_string();
    assert!(!text.contains(CODE) && text.contains("x=1"), "{text}");
}

/// Visible secrets (as the PBX issues them) and any printable ones.
fn secret_strategy() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9]{8,64}", "[ -~]{8,40}", "\\PC{8,24}",]
}

fn encode(secret: &str, how: u8) -> String {
    match how % 6 {
        0 => secret.to_owned(),
        1 => form(secret),
        2 => lower_hex(&form(secret).replace('+', "%20")),
        3 => json(secret),
        4 => json_u(secret),
        _ => json(&form(secret)),
    }
}

proptest! {
    /// For any secret and any text embedding it raw, URL-encoded or
    /// JSON-escaped, the redacted text contains none of those spellings.
    #[test]
    fn known_secret_never_survives(
        secret in secret_strategy(),
        how in any::<u8>(),
        before in "\\PC{0,40}",
        after in "\\PC{0,40}",
    ) {
        let enc = encode(&secret, how);
        let text = format!("{before}{enc}{after}");
        // Split the markers so `dact` or `]x` cannot be found in or across one.
        let out = redact(&text, &[&secret]).replace(REDACTED, "\0");
        for spelled in [secret.clone(), form(&secret), json(&secret), enc.clone()] {
            prop_assert!(!out.contains(&spelled), "{:?} survived in {:?}", spelled, out);
        }
    }

    /// The same through the real parser and the error's own redaction: any
    /// status, any of the places a PBX puts text, any encoding.
    #[test]
    fn echoed_secret_never_reaches_the_error_text(
        secret in secret_strategy(),
        how in any::<u8>(),
        field in 0usize..4,
        status in prop_oneof![Just(400u16), Just(401), Just(403), Just(422), Just(500), Just(503), Just(302)],
        pad in 0usize..260,
    ) {
        let said = format!("{} client_secret={}", "p".repeat(pad), encode(&secret, how));
        let key = ["error", "error_description", "message", "detail"][field];
        let body = serde_json::json!({ key: said }).to_string();
        let meta = ResponseMeta {
            content_type: Some("application/json".into()),
            location: Some(said.clone()),
            ..ResponseMeta::default()
        };
        let text = classify_failure(status, &meta, body.as_bytes()).redact(&[&secret]).to_string();
        for spelled in [secret.clone(), form(&secret), json(&secret)] {
            prop_assert!(!text.contains(&spelled), "{:?} in {:?}", spelled, text);
        }
    }

    /// Arbitrary text never panics and redaction is stable.
    #[test]
    fn arbitrary_text_is_safe(text in "\\PC{0,200}", secret in "\\PC{0,20}") {
        let once = redact(&text, &[&secret]);
        prop_assert_eq!(redact(&once, &[&secret]), once.clone());
    }
}

/// The parser's look-alike pass alone redacts only the random-looking head
/// of a bare echoed secret; the known pass must run on the body first.
#[test]
fn known_secrets_leave_error_bodies_before_the_parser_judges_them() {
    let secret = "ActiveCanary4Kq/Wz7b+\"Rt5m\"&ab=\u{fc} Yp3H";
    let text = format!("Rejected POST /oauth/token: unexpected client_credentials app {secret}");
    let patterns_only = redact(&text, &[]);
    assert!(patterns_only.contains("Rt5m"), "{patterns_only}");
    // Too late for the known pass: the rest of the secret stays.
    assert!(redact(&patterns_only, &[secret]).contains("Rt5m"));
    let body = serde_json::to_vec(&serde_json::json!({
        "error": "invalid_client",
        "error_description": text,
        "nested": [{"k": format!("x {}", secret.replace('"', "\\\""))}],
    }))
    .unwrap();
    let clean = String::from_utf8(redact_known_body(&body, &[secret])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&clean).unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(
        v["error_description"],
        "Rejected POST /oauth/token: unexpected client_credentials app [redacted]"
    );
    assert_eq!(v["nested"][0]["k"], "x [redacted]");
    // Not JSON: the text as a whole; not UTF-8: untouched.
    let html = format!("<p>{secret}</p>");
    assert_eq!(
        redact_known_body(html.as_bytes(), &[secret]),
        b"<p>[redacted]</p>".to_vec()
    );
    assert_eq!(
        redact_known_body(&[0xff, 0xfe], &[secret]),
        vec![0xff, 0xfe]
    );
}
