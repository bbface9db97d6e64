//! `pbx-tokenctl status`: what an operator wants on one screen first
//! (AdminService.GetServerStatus), as text or `--json`.

use anyhow::Result;
use serde_json::{json, Value};

use pbx_tokend::proto;

use crate::cli::StatusArgs;
use crate::commands::{emit, emit_json};
use crate::display::{
    human_span, now_ms, or_dash, render_fields, render_table, state_name, tenant_json,
    time_with_hint, truncate, ts_json, ts_ms,
};
use crate::Ctx;

pub async fn run(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let req = proto::GetServerStatusRequest {
        failing_limit: a.failing,
    };
    let s = ctx
        .unary(ctx.admin().get_server_status(ctx.request(req)))
        .await?;
    if ctx.json {
        emit_json(&status_json(&s))
    } else {
        emit(&render(now_ms(), &s))
    }
}

pub fn status_json(s: &proto::ServerStatus) -> Value {
    let by_state: serde_json::Map<String, Value> = s
        .tenants_by_state
        .iter()
        .map(|c| (state_name(c.state), json!(c.count)))
        .collect();
    json!({
        "version": s.version,
        "started_at": ts_json(s.started_at.as_ref()),
        "now": ts_json(s.now.as_ref()),
        "database_writable": s.database_writable,
        "database_reachable": s.database_reachable,
        "tenants_by_state": by_state,
        "tenants_total": s.tenants_by_state.iter().map(|c| c.count).sum::<u64>(),
        "tokens_in_renewal_window": s.tokens_in_renewal_window,
        "tokens_expired": s.tokens_expired,
        "tenants_without_token": s.tenants_without_token,
        "renewals_due": s.renewals_due,
        "renewals_overdue": s.renewals_overdue,
        "oldest_due_at": ts_json(s.oldest_due_at.as_ref()),
        "renewals_in_flight": s.renewals_in_flight,
        "failing_tenants_total": s.failing_tenants_total,
        "failing_tenants": s.failing_tenants.iter().map(tenant_json).collect::<Vec<_>>(),
        "hosts": s.hosts.iter().map(|h| json!({
            "host": h.host,
            "rate_limit_waits": h.rate_limit_waits,
            "throttled_until": ts_json(h.throttled_until.as_ref()),
            "demand_ratio": h.demand_ratio,
        })).collect::<Vec<_>>(),
        "last_backup_file": if s.last_backup_file.is_empty() { Value::Null } else { json!(s.last_backup_file) },
        "last_backup_at": ts_json(s.last_backup_at.as_ref()),
        "warnings": s.warnings,
        "tokens_unstored": s.tokens_unstored,
        "backend": s.backend,
        "database_reachable": s.database_reachable,
        "replicas": s.replicas.iter().map(|r| json!({
            "name": r.name,
            "last_heartbeat": ts_json(r.last_heartbeat.as_ref()),
            "renewing_hosts": r.renewing_hosts,
            "live": r.live,
        })).collect::<Vec<_>>(),
    })
}

/// The host's renewal demand against its budget, with what it means.
fn demand_text(ratio: f64) -> String {
    if ratio > 1.0 {
        format!("{ratio:.2} (short: idle tenants renewed on demand)")
    } else if ratio > 0.8 {
        format!("{ratio:.2} (near the budget)")
    } else {
        format!("{ratio:.2}")
    }
}

fn ago(now: i64, ts: Option<&prost_types::Timestamp>) -> String {
    match ts {
        Some(t) => human_span((now - ts_ms(t)).max(0).unsigned_abs() / 1000),
        None => "-".into(),
    }
}

pub fn render(now: i64, s: &proto::ServerStatus) -> String {
    let mut out = String::new();
    let total: u64 = s.tenants_by_state.iter().map(|c| c.count).sum();
    let backup = if s.last_backup_file.is_empty() {
        "none yet".to_owned()
    } else {
        format!(
            "{} ago ({})",
            ago(now, s.last_backup_at.as_ref()),
            s.last_backup_file
        )
    };
    out.push_str(&render_fields(&[
        (
            "Daemon",
            format!(
                "pbx-tokend {}, up {}",
                s.version,
                ago(now, s.started_at.as_ref())
            ),
        ),
        (
            "Database",
            if !s.database_reachable {
                "UNREACHABLE (tokens served from memory, nothing renewed)".into()
            } else if s.database_writable {
                "writable".into()
            } else {
                "NOT WRITABLE (health is NOT_SERVING)".into()
            },
        ),
        ("Last backup", backup),
    ]));

    if !s.replicas.is_empty() {
        out.push_str(&format!(
            "\nReplicas ({} backend{})\n",
            or_dash(&s.backend),
            if s.database_reachable {
                ""
            } else {
                ", DATABASE NOT REACHABLE from this replica"
            }
        ));
        let rows: Vec<Vec<String>> = s
            .replicas
            .iter()
            .map(|r| {
                vec![
                    format!("  {}", r.name),
                    format!("{} ago", ago(now, r.last_heartbeat.as_ref())),
                    if r.live { "yes" } else { "NO" }.into(),
                    if r.renewing_hosts.is_empty() {
                        "-".into()
                    } else {
                        r.renewing_hosts.join(", ")
                    },
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["  NAME", "HEARTBEAT", "LIVE", "RENEWS FOR"],
            &rows,
        ));
    }

    out.push_str("\nTenants\n");
    let mut rows: Vec<Vec<String>> = s
        .tenants_by_state
        .iter()
        .map(|c| vec![format!("  {}", state_name(c.state)), c.count.to_string()])
        .collect();
    rows.push(vec!["  total".into(), total.to_string()]);
    out.push_str(&render_table(&["  STATE", "TENANTS"], &rows));

    out.push_str("\nTokens and renewals\n");
    let oldest = match &s.oldest_due_at {
        Some(t) => format!("due {} ago", ago(now, Some(t))),
        None => "-".into(),
    };
    out.push_str(&indent(&render_fields(&[
        (
            "Expiring soon",
            format!(
                "{} (past their renewal point, not yet renewed)",
                s.tokens_in_renewal_window
            ),
        ),
        ("Expired", s.tokens_expired.to_string()),
        ("Without a token", s.tenants_without_token.to_string()),
        (
            "Queue",
            format!(
                "{} due, {} overdue (> 1 min), {} in flight",
                s.renewals_due, s.renewals_overdue, s.renewals_in_flight
            ),
        ),
        ("Oldest due job", oldest),
    ])));

    if !s.hosts.is_empty() {
        out.push_str("\nPBX hosts\n");
        let rows: Vec<Vec<String>> = s
            .hosts
            .iter()
            .map(|h| {
                vec![
                    format!("  {}", h.host),
                    h.rate_limit_waits.to_string(),
                    time_with_hint(now, h.throttled_until.as_ref()),
                    demand_text(h.demand_ratio),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["  HOST", "RATE-LIMIT WAITS", "THROTTLED UNTIL", "DEMAND"],
            &rows,
        ));
    }

    out.push_str(&format!(
        "\nFailing tenants ({} of {})\n",
        s.failing_tenants.len(),
        s.failing_tenants_total
    ));
    if s.failing_tenants.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .failing_tenants
            .iter()
            .map(|t| {
                vec![
                    format!("  {}", t.tenant_id),
                    state_name(t.state),
                    t.consecutive_failures.to_string(),
                    time_with_hint(now, t.next_refresh_at.as_ref()),
                    or_dash(&truncate(&t.last_error, 70)),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["  TENANT", "STATE", "FAILURES", "NEXT RETRY", "LAST ERROR"],
            &rows,
        ));
    }
    for w in &s.warnings {
        out.push_str(&format!("\nwarning: {w}\n"));
    }
    if s.tokens_unstored > 0 {
        out.push_str(&format!(
            "\nwarning: {} token(s) fetched but not stored (database writes fail; full disk?): served from memory, lost on a restart\n",
            s.tokens_unstored
        ));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    fn ts(ms: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: ms / 1000,
            nanos: 0,
        })
    }

    #[test]
    fn renders_every_section() {
        let now = 1_700_000_000_000;
        let s = proto::ServerStatus {
            version: "0.1.0".into(),
            started_at: ts(now - 3_600_000),
            now: ts(now),
            database_writable: true,
            database_reachable: true,
            tenants_by_state: vec![
                proto::TenantStateCount {
                    state: proto::TenantState::Active as i32,
                    count: 98,
                },
                proto::TenantStateCount {
                    state: proto::TenantState::RenewalFailing as i32,
                    count: 2,
                },
            ],
            tokens_in_renewal_window: 3,
            renewals_due: 4,
            failing_tenants_total: 2,
            failing_tenants: vec![proto::Tenant {
                tenant_id: "acme".into(),
                state: proto::TenantState::RenewalFailing as i32,
                consecutive_failures: 3,
                last_error: "PBX unavailable: connection refused".into(),
                ..Default::default()
            }],
            hosts: vec![proto::HostStatus {
                host: "pbx.example.com".into(),
                rate_limit_waits: 7,
                throttled_until: None,
                demand_ratio: 1.5,
            }],
            ..Default::default()
        };
        let text = render(now, &s);
        for needle in [
            "pbx-tokend 0.1.0, up 1h",
            "writable",
            "none yet",
            "active",
            "total",
            "100",
            "Expiring soon:",
            "4 due, 0 overdue",
            "pbx.example.com",
            "1.50 (short: idle tenants renewed on demand)",
            "Failing tenants (1 of 2)",
            "connection refused",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let v = status_json(&s);
        assert_eq!(v["tenants_by_state"]["active"], json!(98));
        assert_eq!(v["tenants_total"], json!(100));
        assert_eq!(v["failing_tenants"][0]["tenant_id"], json!("acme"));
        assert_eq!(v["last_backup_file"], Value::Null);
        assert_eq!(v["hosts"][0]["demand_ratio"], json!(1.5));
    }

    #[test]
    fn renders_the_replicas() {
        let now = 1_700_000_000_000;
        let s = proto::ServerStatus {
            backend: "postgres".into(),
            database_reachable: true,
            replicas: vec![
                proto::ReplicaStatus {
                    name: "db-a:50051".into(),
                    last_heartbeat: ts(now - 1_000),
                    renewing_hosts: vec!["pbx1.example.com".into(), "pbx2.example.com".into()],
                    live: true,
                },
                proto::ReplicaStatus {
                    name: "db-b:50051".into(),
                    last_heartbeat: ts(now - 120_000),
                    renewing_hosts: vec![],
                    live: false,
                },
            ],
            ..Default::default()
        };
        let text = render(now, &s);
        for needle in [
            "Replicas (postgres backend)",
            "db-a:50051",
            "pbx1.example.com, pbx2.example.com",
            "db-b:50051",
            "2m ago",
            "NO",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let v = status_json(&s);
        assert_eq!(v["backend"], json!("postgres"));
        assert_eq!(
            v["replicas"][0]["renewing_hosts"][1],
            json!("pbx2.example.com")
        );
        assert_eq!(v["replicas"][1]["live"], json!(false));
    }
}
