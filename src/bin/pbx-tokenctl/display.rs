//! Proto <-> display helpers: times, tables, enum names and JSON objects.
//! Pure functions, so they are unit-tested below.

use std::time::{SystemTime, UNIX_EPOCH};

use pbx_tokend::proto;
use prost_types::Timestamp;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn ts_ms(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// RFC 3339 in UTC with full precision (for JSON), or null when unset.
pub fn ts_json(ts: Option<&Timestamp>) -> Value {
    match ts {
        Some(t) => Value::String(t.to_string()),
        None => Value::Null,
    }
}

/// RFC 3339 in UTC to the second, e.g. `2024-05-01T12:00:00Z`.
pub fn rfc3339_secs(ts: &Timestamp) -> String {
    Timestamp {
        seconds: ts.seconds,
        nanos: 0,
    }
    .to_string()
}

/// "in 41m", "3m ago", "now": how far `t_ms` is from `now_ms`.
pub fn relative(now_ms: i64, t_ms: i64) -> String {
    let diff = t_ms.saturating_sub(now_ms);
    let secs = diff.unsigned_abs() / 1000;
    if secs == 0 {
        return "now".to_string();
    }
    let span = human_span(secs);
    if diff > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A duration in the two largest units: "41s", "41m", "2h5m", "3d4h".
pub fn human_span(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86_400;
    match secs {
        s if s < MIN => format!("{s}s"),
        s if s < HOUR => format!("{}m", s / MIN),
        s if s < DAY => match (s % HOUR) / MIN {
            0 => format!("{}h", s / HOUR),
            m => format!("{}h{m}m", s / HOUR),
        },
        s => match (s % DAY) / HOUR {
            0 => format!("{}d", s / DAY),
            h => format!("{}d{h}h", s / DAY),
        },
    }
}

/// `2024-05-01T12:00:00Z (in 41m)`, or `-` when unset.
pub fn time_with_hint(now_ms: i64, ts: Option<&Timestamp>) -> String {
    match ts {
        Some(t) => format!("{} ({})", rfc3339_secs(t), relative(now_ms, ts_ms(t))),
        None => "-".to_string(),
    }
}

/// Columns aligned with two spaces between them; the last column is not
/// padded, so lines carry no trailing blanks.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label: value` lines with the values aligned.
pub fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in fields {
        let label = format!("{k}:");
        out.push_str(format!("{label:<width$}  {v}").trim_end());
        out.push('\n');
    }
    out
}

/// At most `max` characters, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `-` for an empty string, so table cells are never blank.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// A short, harmless fingerprint of a token, to see that it changed without
/// printing it: `sha256:1a2b3c4d`.
pub fn token_fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("sha256:{}", hex::encode(&digest[..4]))
}

/// Lowercase state name, as `tenant list --state` takes it: `active`.
pub fn state_name(state: i32) -> String {
    match proto::TenantState::try_from(state) {
        Ok(s) => enum_suffix(s.as_str_name(), "TENANT_STATE_"),
        Err(_) => format!("unknown({state})"),
    }
}

/// Lowercase event kind: `state_changed`.
pub fn event_kind_name(kind: i32) -> String {
    match proto::TenantEventKind::try_from(kind) {
        Ok(k) => enum_suffix(k.as_str_name(), "TENANT_EVENT_KIND_"),
        Err(_) => format!("unknown({kind})"),
    }
}

/// Lowercase role name: `admin`, `reader`.
pub fn role_name(role: i32) -> String {
    match proto::ClientRole::try_from(role) {
        Ok(r) => enum_suffix(r.as_str_name(), "CLIENT_ROLE_"),
        Err(_) => format!("unknown({role})"),
    }
}

fn enum_suffix(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

// ---------------------------------------------------------------- JSON

pub fn tenant_json(t: &proto::Tenant) -> Value {
    json!({
        "tenant_id": t.tenant_id,
        "display_name": t.display_name,
        "pbx_base_url": t.pbx_base_url,
        "pbx_host": t.pbx_host,
        "state": state_name(t.state),
        "trusted_client_id": t.trusted_client_id,
        "token_expires_at": ts_json(t.token_expires_at.as_ref()),
        "next_refresh_at": ts_json(t.next_refresh_at.as_ref()),
        "last_refresh_at": ts_json(t.last_refresh_at.as_ref()),
        "consecutive_failures": t.consecutive_failures,
        "last_error": t.last_error,
        "pbx_user": t.pbx_user.as_ref().map(pbx_user_json),
        "created_at": ts_json(t.created_at.as_ref()),
        "updated_at": ts_json(t.updated_at.as_ref()),
    })
}

pub fn pbx_user_json(u: &proto::PbxUser) -> Value {
    json!({
        "id": u.id,
        "login": u.login,
        "client_id": u.client_id,
        "admin": u.admin,
        "dealer_id": u.dealer_id,
        "extension_id": u.extension_id,
        "extension_group_id": u.extension_group_id,
    })
}

/// An access token as JSON. `with_secret` decides whether the token itself
/// is included; its fingerprint always is.
pub fn token_json(t: &proto::AccessToken, with_secret: bool) -> Value {
    let mut v = json!({
        "tenant_id": t.tenant_id,
        "token_type": t.token_type,
        "token_fingerprint": token_fingerprint(&t.access_token),
        "issued_at": ts_json(t.issued_at.as_ref()),
        "expires_at": ts_json(t.expires_at.as_ref()),
    });
    if with_secret {
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "access_token".to_string(),
                Value::String(t.access_token.clone()),
            );
        }
    }
    v
}

pub fn client_json(c: &proto::Client) -> Value {
    json!({
        "client_id": c.client_id,
        "name": c.name,
        "role": role_name(c.role),
        "tenant_patterns": c.tenant_patterns,
        "created_at": ts_json(c.created_at.as_ref()),
        "revoked_at": ts_json(c.revoked_at.as_ref()),
    })
}

pub fn begin_auth_json(r: &proto::BeginAuthorizationResponse) -> Value {
    json!({
        "authorization_url": r.authorization_url,
        "state": r.state,
        "expires_at": ts_json(r.expires_at.as_ref()),
    })
}

// ---------------------------------------------------------------- human

/// One row of `tenant list`.
pub const TENANT_HEADERS: [&str; 7] = [
    "TENANT",
    "STATE",
    "PBX HOST",
    "TOKEN EXPIRES",
    "NEXT REFRESH",
    "FAILURES",
    "LAST ERROR",
];

pub fn tenant_row(now: i64, t: &proto::Tenant) -> Vec<String> {
    vec![
        t.tenant_id.clone(),
        state_name(t.state),
        or_dash(&t.pbx_host),
        time_with_hint(now, t.token_expires_at.as_ref()),
        time_with_hint(now, t.next_refresh_at.as_ref()),
        t.consecutive_failures.to_string(),
        or_dash(&truncate(&t.last_error, 60)),
    ]
}

/// The detail view of `tenant show` and friends.
pub fn tenant_details(now: i64, t: &proto::Tenant) -> String {
    let mut fields = vec![
        ("Tenant", t.tenant_id.clone()),
        ("Display name", or_dash(&t.display_name)),
        ("State", state_name(t.state)),
        ("PBX base URL", or_dash(&t.pbx_base_url)),
        ("PBX host", or_dash(&t.pbx_host)),
        ("Trusted client id", or_dash(&t.trusted_client_id)),
        (
            "Token expires",
            time_with_hint(now, t.token_expires_at.as_ref()),
        ),
        (
            "Next refresh",
            time_with_hint(now, t.next_refresh_at.as_ref()),
        ),
        (
            "Last refresh",
            time_with_hint(now, t.last_refresh_at.as_ref()),
        ),
        ("Failures", t.consecutive_failures.to_string()),
        ("Last error", or_dash(&t.last_error)),
    ];
    if let Some(u) = &t.pbx_user {
        fields.push(("PBX user", pbx_user_line(u)));
    }
    fields.push(("Created", time_with_hint(now, t.created_at.as_ref())));
    fields.push(("Updated", time_with_hint(now, t.updated_at.as_ref())));
    render_fields(&fields)
}

fn pbx_user_line(u: &proto::PbxUser) -> String {
    let mut s = format!("{} (id {}, client {}", or_dash(&u.login), u.id, u.client_id);
    if u.admin {
        s.push_str(", admin");
    }
    if let Some(d) = u.dealer_id {
        s.push_str(&format!(", dealer {d}"));
    }
    if let Some(e) = u.extension_id {
        s.push_str(&format!(", extension {e}"));
    }
    if let Some(g) = u.extension_group_id {
        s.push_str(&format!(", extension group {g}"));
    }
    s.push(')');
    s
}

/// A token without the token: `acme  sha256:1a2b3c4d  expires ... (in 55m)`.
pub fn token_summary(now: i64, t: &proto::AccessToken) -> String {
    render_fields(&[
        ("Tenant", t.tenant_id.clone()),
        ("Token", token_fingerprint(&t.access_token)),
        ("Issued", time_with_hint(now, t.issued_at.as_ref())),
        ("Expires", time_with_hint(now, t.expires_at.as_ref())),
    ])
}

pub const CLIENT_HEADERS: [&str; 6] = [
    "CLIENT ID",
    "NAME",
    "ROLE",
    "TENANT PATTERNS",
    "CREATED",
    "REVOKED",
];

pub fn client_row(now: i64, c: &proto::Client) -> Vec<String> {
    vec![
        c.client_id.clone(),
        c.name.clone(),
        role_name(c.role),
        or_dash(&c.tenant_patterns.join(",")),
        time_with_hint(now, c.created_at.as_ref()),
        time_with_hint(now, c.revoked_at.as_ref()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_hints() {
        let now = 1_700_000_000_000;
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now, now + 999), "now");
        assert_eq!(relative(now, now + 41 * 60_000), "in 41m");
        assert_eq!(relative(now, now - 3 * 60_000 - 5_000), "3m ago");
        assert_eq!(relative(now, now + 12_000), "in 12s");
        assert_eq!(relative(now, now + (2 * 3600 + 5 * 60) * 1000), "in 2h5m");
        assert_eq!(relative(now, now - 3 * 3600 * 1000), "3h ago");
        assert_eq!(
            relative(now, now + (3 * 86_400 + 4 * 3600) * 1000),
            "in 3d4h"
        );
        assert_eq!(relative(now, now - 86_400 * 1000), "1d ago");
    }

    #[test]
    fn rfc3339_to_the_second() {
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_000_000,
        };
        assert_eq!(rfc3339_secs(&ts), "2023-11-14T22:13:20Z");
        assert_eq!(ts_ms(&ts), 1_700_000_000_123);
        assert_eq!(ts_json(Some(&ts)), json!("2023-11-14T22:13:20.123Z"));
        assert_eq!(ts_json(None), Value::Null);
        assert_eq!(
            time_with_hint(1_700_000_000_000 - 60_000, Some(&ts)),
            "2023-11-14T22:13:20Z (in 1m)"
        );
        assert_eq!(time_with_hint(0, None), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let out = render_table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xxxx".into(), "y".into(), "z".into()],
                vec!["é".into(), "yy".into(), "".into()],
            ],
        );
        assert_eq!(
            out,
            "A     LONG HEADER  C\n\
             xxxx  y            z\n\
             é     yy\n"
        );
    }

    #[test]
    fn table_with_no_rows_prints_headers() {
        assert_eq!(render_table(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn fields_align() {
        assert_eq!(
            render_fields(&[("A", "1".into()), ("Long", "2".into())]),
            "A:     1\nLong:  2\n"
        );
    }

    #[test]
    fn enum_names() {
        assert_eq!(state_name(proto::TenantState::Active as i32), "active");
        assert_eq!(
            state_name(proto::TenantState::PendingAuthorization as i32),
            "pending_authorization"
        );
        assert_eq!(state_name(42), "unknown(42)");
        assert_eq!(role_name(proto::ClientRole::Reader as i32), "reader");
    }

    #[test]
    fn truncates_long_text() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
    }

    #[test]
    fn token_json_hides_secret_unless_asked() {
        let t = proto::AccessToken {
            tenant_id: "acme".into(),
            access_token: "secret-token".into(),
            token_type: "Bearer".into(),
            issued_at: None,
            expires_at: None,
        };
        assert!(token_json(&t, false).get("access_token").is_none());
        assert_eq!(token_json(&t, true)["access_token"], json!("secret-token"));
        assert!(token_fingerprint("secret-token").starts_with("sha256:"));
        assert_eq!(token_fingerprint("secret-token").len(), 15);
    }
}
