//! Unit tests for `parse/mod.rs`: every branch, plus hostile inputs.
use super::*;

const MAX: u64 = 366 * 24 * 3600;

fn json_meta() -> ResponseMeta {
    ResponseMeta {
        content_type: Some("application/json".into()),
        ..Default::default()
    }
}

fn token(body: &str) -> Result<TokenGrant, PbxError> {
    parse_token_response(200, &json_meta(), body.as_bytes(), MAX)
}

fn protocol_reason(r: Result<impl std::fmt::Debug, PbxError>) -> String {
    match r {
        Err(PbxError::Protocol { reason }) => reason,
        other => panic!("expected Protocol, got {other:?}"),
    }
}

fn fail(status: u16, body: &str) -> PbxError {
    classify_failure(status, &json_meta(), body.as_bytes())
}

#[test]
fn token_happy_path() {
    let g = token(r#"{"access_token":"abc.DEF-1_~+/=","token_type":"bearer","expires_in":3600,"refresh_token":"r1"}"#).unwrap();
    assert_eq!(g.access_token.expose(), "abc.DEF-1_~+/=");
    assert_eq!(g.token_type, "Bearer");
    assert_eq!(g.expires_in_secs, Some(3600));
    assert_eq!(g.refresh_token.unwrap().expose(), "r1");
}

#[test]
fn token_optional_fields() {
    let g = token(r#"{"access_token":"t"}"#).unwrap();
    assert_eq!(g.token_type, "Bearer");
    assert_eq!(g.expires_in_secs, None);
    assert!(g.refresh_token.is_none());
    let g =
        token(r#"{"access_token":"t","token_type":null,"expires_in":null,"refresh_token":null}"#)
            .unwrap();
    assert_eq!(g.expires_in_secs, None);
    // Any 2xx is a success, and a BOM or whitespace around is fine.
    let g = parse_token_response(
        201,
        &ResponseMeta::default(),
        "\u{feff} {\"access_token\":\"t\",\"token_type\":\" BEARER \"}\n".as_bytes(),
        MAX,
    )
    .unwrap();
    assert_eq!(g.token_type, "Bearer");
}

#[test]
fn expires_in_forms() {
    for (v, want) in [
        ("3600", 3600),
        ("\"3600\"", 3600),
        ("\" 60 \"", 60),
        ("3600.0", 3600),
        ("1", 1),
    ] {
        let g = token(&format!(r#"{{"access_token":"t","expires_in":{v}}}"#)).unwrap();
        assert_eq!(g.expires_in_secs, Some(want), "{v}");
    }
    for (v, needle) in [
        ("0", "expires_in is 0"),
        ("-5", "expires_in is -5"),
        ("3600.5", "expires_in is 3600.5"),
        ("\"1h\"", "expires_in is \"1h\""),
        ("\"\"", "expires_in is \"\""),
        ("\"-1\"", "expires_in is \"-1\""),
        ("true", "a boolean"),
        ("[3600]", "an array"),
        ("{\"s\":1}", "an object"),
        ("99999999999", "99999999999"),
        ("18446744073709551615", "18446744073709551615"),
        ("1e300", "1e+300"),
        ("-1e300", "-1e+300"),
    ] {
        let r = protocol_reason(token(&format!(
            r#"{{"access_token":"t","expires_in":{v}}}"#
        )));
        assert!(r.contains(needle), "{v}: {r}");
        assert!(r.contains("between 1 and"), "{r}");
    }
    // Exactly the configured maximum is fine, one more is not.
    let body = format!(r#"{{"access_token":"t","expires_in":{MAX}}}"#);
    assert_eq!(token(&body).unwrap().expires_in_secs, Some(MAX));
    let body = format!(r#"{{"access_token":"t","expires_in":{}}}"#, MAX + 1);
    assert!(token(&body).is_err());
}

#[test]
fn access_token_rules_never_echo_the_token() {
    let long = "x".repeat(MAX_TOKEN_BYTES + 1);
    let ok = "y".repeat(MAX_TOKEN_BYTES);
    assert!(token(&format!(r#"{{"access_token":"{ok}"}}"#)).is_ok());
    for (body, needle) in [
        (
            r#"{"token_type":"Bearer","expires_in":1}"#.to_owned(),
            "no access_token (fields received: expires_in, token_type)",
        ),
        (r#"{"access_token":null}"#.to_owned(), "no access_token"),
        (r#"{"access_token":""}"#.to_owned(), "access_token is empty"),
        (
            r#"{"access_token":12345}"#.to_owned(),
            "access_token is a number",
        ),
        (
            r#"{"access_token":{"v":"secretvalue"}}"#.to_owned(),
            "access_token is an object",
        ),
        (format!(r#"{{"access_token":"{long}"}}"#), "4097 bytes long"),
        (
            r#"{"access_token":"sec ret"}"#.to_owned(),
            "cannot go in an HTTP header",
        ),
        (
            r#"{"access_token":"secret\nvalue"}"#.to_owned(),
            "cannot go in an HTTP header",
        ),
        (
            r#"{"access_token":"sécret"}"#.to_owned(),
            "cannot go in an HTTP header",
        ),
    ] {
        let r = protocol_reason(token(&body));
        assert!(r.contains(needle), "{body}: {r}");
        assert!(!r.contains("secret") && !r.contains("xxxx"), "{r}");
    }
}

#[test]
fn token_type_must_be_bearer() {
    let r = protocol_reason(token(r#"{"access_token":"t","token_type":"mac"}"#));
    assert!(r.contains("\"mac\"") && r.contains("only Bearer"), "{r}");
    let r = protocol_reason(token(r#"{"access_token":"t","token_type":1}"#));
    assert!(r.contains("a number"), "{r}");
    let hostile = format!(
        r#"{{"access_token":"t","token_type":"{}\u0007"}}"#,
        "z".repeat(500)
    );
    let r = protocol_reason(token(&hostile));
    assert!(r.len() < 200 && !r.contains('\u{7}'), "{r}");
}

#[test]
fn malformed_refresh_token_is_dropped() {
    for rt in ["\"\"", "\"a b\"", "5", "{}"] {
        let g = token(&format!(r#"{{"access_token":"t","refresh_token":{rt}}}"#)).unwrap();
        assert!(g.refresh_token.is_none(), "{rt}");
    }
}

#[test]
fn non_json_success_is_described_not_echoed() {
    let html = "<html><body>access_token=topsecret</body></html>";
    let meta = ResponseMeta {
        content_type: Some("text/html; charset=utf-8".into()),
        ..Default::default()
    };
    let r = protocol_reason(parse_token_response(200, &meta, html.as_bytes(), MAX));
    assert!(
        r.starts_with(&format!(
            "expected JSON, got text/html ({} bytes",
            html.len()
        )),
        "{r}"
    );
    assert!(!r.contains("topsecret"), "{r}");
    let r = protocol_reason(parse_token_response(
        200,
        &ResponseMeta::default(),
        b"",
        MAX,
    ));
    assert_eq!(r, "expected JSON, got an empty answer (no Content-Type)");
    let r = protocol_reason(parse_token_response(
        200,
        &ResponseMeta::default(),
        b" \r\n",
        MAX,
    ));
    assert!(r.contains("empty answer"), "{r}");
    // A hostile Content-Type is not repeated either.
    let meta = ResponseMeta {
        content_type: Some("text/x-topsecret\u{1b}[31m".into()),
        ..Default::default()
    };
    let r = protocol_reason(parse_token_response(200, &meta, b"nope", MAX));
    assert!(r.contains("an unreadable Content-Type"), "{r}");
    // Typed errors from serde would quote the input; ours do not.
    let r = protocol_reason(token("\"topsecret\""));
    assert_eq!(r, "token answer is a string, expected a JSON object");
    let r = protocol_reason(token("[1,2]"));
    assert!(r.contains("an array"), "{r}");
    let r = protocol_reason(token(r#"{"access_token":"topsecret""#));
    assert!(
        !r.contains("topsecret") && r.contains("not JSON at line 1"),
        "{r}"
    );
}

#[test]
fn hostile_json_does_not_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(token(&deep).is_err());
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    assert!(token(&deep_obj).is_err());
    let huge_num = format!(
        r#"{{"access_token":"t","expires_in":{}}}"#,
        "9".repeat(5000)
    );
    assert!(token(&huge_num).is_err());
    let many_keys: String = (0..10_000)
        .map(|i| format!("\"k{i}\":{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let r = protocol_reason(token(&format!("{{{many_keys}}}")));
    assert!(r.contains("other(s)") && r.len() < 400, "{r}");
    let invalid_utf8 = b"{\"access_token\":\"\xff\xfe\"}";
    assert!(parse_token_response(200, &json_meta(), invalid_utf8, MAX).is_err());
    // Duplicate keys: the last wins, as in serde_json; no panic either way.
    let g = token(r#"{"access_token":"a","access_token":"b"}"#).unwrap();
    assert_eq!(g.access_token.expose(), "b");
}

#[test]
fn credentials_rejected() {
    for (status, body, error, description) in [
        (401, "", None, None),
        (401, "<html>nope</html>", None, None),
        (
            401,
            r#"{"detail":"Invalid token."}"#,
            None,
            Some("Invalid token."),
        ),
        (
            401,
            r#"{"message":"Unauthorized"}"#,
            None,
            Some("Unauthorized"),
        ),
        (
            401,
            r#"{"error":"invalid_token"}"#,
            Some("invalid_token"),
            None,
        ),
        (
            400,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
            Some("invalid_client"),
            Some("bad secret"),
        ),
        (
            400,
            r#"{"error":"INVALID_GRANT"}"#,
            Some("INVALID_GRANT"),
            None,
        ),
        (
            400,
            r#"{"error":"unauthorized_client","message":"no"}"#,
            Some("unauthorized_client"),
            Some("no"),
        ),
        (
            400,
            r#"{"error":"access_denied"}"#,
            Some("access_denied"),
            None,
        ),
    ] {
        match fail(status, body) {
            PbxError::CredentialsRejected {
                status: s,
                error: e,
                description: d,
            } => {
                assert_eq!(s, status);
                assert_eq!(e.as_deref(), error, "{body}");
                assert_eq!(d.as_deref(), description, "{body}");
            }
            other => panic!("{status} {body}: {other:?}"),
        }
    }
}

#[test]
fn refused() {
    for (status, body, want) in [
        (
            400,
            r#"{"error":"invalid_request","error_description":"missing code"}"#,
            "invalid_request: missing code",
        ),
        (
            400,
            r#"{"error":"unsupported_grant_type"}"#,
            "unsupported_grant_type",
        ),
        (
            400,
            r#"{"message":"Invalid client credentials"}"#,
            "Invalid client credentials",
        ),
        (
            403,
            r#"{"message":"Forbidden for this app"}"#,
            "Forbidden for this app",
        ),
        (404, "", "no details (application/json, 0 bytes)"),
        (
            404,
            "<html>x</html>",
            "no details (application/json, 14 bytes)",
        ),
        (409, r#"{"error":{"message":"nested"}}"#, "nested"),
        (422, r#"{"error":"","message":""}"#, "no details"),
    ] {
        match fail(status, body) {
            PbxError::Refused { status: s, message } => {
                assert_eq!(s, status);
                assert!(message.starts_with(want), "{body}: {message}");
            }
            other => panic!("{status} {body}: {other:?}"),
        }
    }
}

#[test]
fn transient_and_odd_statuses() {
    for status in [500, 502, 503, 504, 599, 408, 425] {
        assert!(
            matches!(fail(status, ""), PbxError::Transient { .. }),
            "{status}"
        );
    }
    match fail(503, r#"{"message":"maintenance"}"#) {
        PbxError::Transient { reason } => assert_eq!(reason, "HTTP 503: maintenance"),
        other => panic!("{other:?}"),
    }
    for status in [100, 199, 600, 0, 999] {
        assert!(
            matches!(fail(status, ""), PbxError::Protocol { .. }),
            "{status}"
        );
    }
    // A 3xx passed to a parser is refused, not followed.
    let meta = ResponseMeta {
        location: Some("https://evil.example/\u{1b}x".into()),
        ..Default::default()
    };
    match parse_token_response(302, &meta, b"", MAX) {
        Err(PbxError::Refused {
            status: 302,
            message,
        }) => {
            assert!(
                message.contains("redirect to \"https://evil.example/ x\""),
                "{message}"
            );
            assert!(message.contains("not followed"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match fail(301, "") {
        PbxError::Refused { message, .. } => assert!(message.contains("no Location"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn pbx_texts_are_sanitised_and_truncated() {
    let body = format!(
        r#"{{"error":"invalid_client","error_description":"a\u0000b\u001b[2J\u202Ec{}"}}"#,
        "é".repeat(1000)
    );
    match fail(400, &body) {
        PbxError::CredentialsRejected {
            description: Some(d),
            ..
        } => {
            assert!(
                !d.chars().any(|c| c.is_control() || c == '\u{202E}'),
                "{d:?}"
            );
            assert_eq!(d.chars().count(), MAX_DETAIL_CHARS + 1);
            assert!(d.ends_with('…') && d.starts_with("a b [2J c"), "{d}");
        }
        other => panic!("{other:?}"),
    }
    let body = format!(r#"{{"error":"{}"}}"#, "e".repeat(500));
    match fail(400, &body) {
        PbxError::Refused { message, .. } => assert!(message.chars().count() <= 65, "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn application_shapes() {
    let ok = |body: &str| parse_application_response(201, &json_meta(), body.as_bytes()).unwrap();
    let a = ok(r#"{"client_id":"abc","client_secret":"s1","name":"x"}"#);
    assert_eq!(
        (a.client_id.as_str(), a.client_secret.expose().as_str()),
        ("abc", "s1")
    );
    let a = ok(r#"{"id":42,"secret":"s2"}"#);
    assert_eq!(
        (a.client_id.as_str(), a.client_secret.expose().as_str()),
        ("42", "s2")
    );
    let a = ok(r#"[{"client_id":null,"id":"i","client_secret":"","secret":"s3"}]"#);
    assert_eq!(
        (a.client_id.as_str(), a.client_secret.expose().as_str()),
        ("i", "s3")
    );
    let a = ok(r#"{"client_id":"c","id":7,"client_secret":"s","secret":"t"}"#);
    assert_eq!(
        (a.client_id.as_str(), a.client_secret.expose().as_str()),
        ("c", "s")
    );
}

#[test]
fn application_errors_list_names_not_values() {
    let err = |body: &str| {
        protocol_reason(parse_application_response(
            200,
            &json_meta(),
            body.as_bytes(),
        ))
    };
    let r = err(r#"{"app_key":"VALUE1","app_password":"VALUE2","type":"trusted"}"#);
    assert!(
        r.contains("client_id or id") && r.contains("app_key, app_password, type"),
        "{r}"
    );
    assert!(!r.contains("VALUE"), "{r}");
    let r = err(r#"{"client_id":"VALUE1","password":"VALUE2"}"#);
    assert!(
        r.contains("client_secret or secret") && r.contains("client_id, password"),
        "{r}"
    );
    assert!(!r.contains("VALUE"), "{r}");
    let r = err(r#"{"id":1.5,"secret":"VALUE2"}"#);
    assert!(r.contains("client_id or id") && !r.contains("VALUE"), "{r}");
    let r = err(r#"{"VALUE1 looks like data":1}"#);
    assert!(
        r.contains("fields received: none and 1 other(s)") && !r.contains("VALUE"),
        "{r}"
    );
    assert!(err("[]").contains("empty array"));
    assert!(err("[{},{}]").contains("2 items"));
    assert!(err("[1]").contains("holding a number"));
    assert!(err("\"x\"").contains("a string"));
    assert!(matches!(
        parse_application_response(403, &json_meta(), b"{\"message\":\"no\"}"),
        Err(PbxError::Refused { status: 403, .. })
    ));
}

#[test]
fn user_shapes() {
    let doc = r#"{"admin":false,"client_id":12,"dealer_id":null,"extension_group_id":null,"extension_id":null,"id":20,"login":"client1"}"#;
    let want = PbxUser {
        id: 20,
        login: "client1".into(),
        client_id: 12,
        admin: false,
        dealer_id: None,
        extension_id: None,
        extension_group_id: None,
    };
    let user = |body: &str| parse_user_response(200, &json_meta(), body.as_bytes());
    assert_eq!(user(doc).unwrap(), want);
    assert_eq!(user(&format!("[{doc}]")).unwrap(), want);
    let extra = r#"{"id":"20","login":" client1 ","client_id":12,"admin":1,"dealer_id":"3","extension_id":5,"access":{"x":[1]},"timezone":"Europe/Moscow"}"#;
    let u = user(extra).unwrap();
    assert_eq!((u.id, u.login.as_str(), u.admin), (20, "client1", true));
    assert_eq!(
        (u.dealer_id, u.extension_id, u.extension_group_id),
        (Some(3), Some(5), None)
    );
    let u = user(r#"{"id":1,"login":"Пользователь","client_id":-2}"#).unwrap();
    assert_eq!(
        (u.login.as_str(), u.client_id, u.admin),
        ("Пользователь", -2, false)
    );
}

#[test]
fn user_errors() {
    let err = |body: &str| protocol_reason(parse_user_response(200, &json_meta(), body.as_bytes()));
    assert!(
        err(r#"{"login":"a","client_id":1}"#).contains("no id (fields received: client_id, login)")
    );
    assert!(err(r#"{"id":1,"client_id":1}"#).contains("no login"));
    assert!(err(r#"{"id":1,"client_id":1,"login":"\u0001"}"#).contains("empty login"));
    assert!(
        err(r#"{"id":1,"client_id":1,"login":5}"#).contains("login in the user answer is a number")
    );
    assert!(err(r#"{"id":1.5,"client_id":1,"login":"a"}"#).contains("id in the user answer is 1.5"));
    assert!(
        err(r#"{"id":18446744073709551615,"client_id":1,"login":"a"}"#)
            .contains("expected an integer")
    );
    assert!(err(r#"{"id":1,"client_id":"x","login":"a"}"#)
        .contains("client_id in the user answer is a string"));
    assert!(err(r#"{"id":1,"client_id":1,"login":"a","admin":"yes"}"#).contains("admin"));
    assert!(err(r#"{"id":1,"client_id":1,"login":"a","dealer_id":[]}"#).contains("dealer_id"));
    assert!(err("[]").contains("empty array"));
    assert!(matches!(
        parse_user_response(401, &json_meta(), b""),
        Err(PbxError::CredentialsRejected { status: 401, .. })
    ));
    let long = format!(r#"{{"id":1,"client_id":1,"login":"{}"}}"#, "l".repeat(1000));
    assert_eq!(
        parse_user_response(200, &json_meta(), long.as_bytes())
            .unwrap()
            .login
            .chars()
            .count(),
        257
    );
}
