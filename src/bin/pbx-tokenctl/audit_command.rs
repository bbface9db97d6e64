//! `pbx-tokenctl audit`: pages through the daemon's audit log of admin
//! mutations (newest first) and prints it as a table or JSON.

use anyhow::Result;
use serde_json::{json, Value};

use pbx_tokend::proto;

use crate::cli::AuditArgs;
use crate::commands::{emit, emit_json};
use crate::display::{self, now_ms};
use crate::Ctx;

pub const AUDIT_HEADERS: [&str; 6] = ["TIME", "CLIENT", "ACTION", "TENANT", "OUTCOME", "DETAIL"];

pub fn audit_row(now: i64, e: &proto::AuditEvent) -> Vec<String> {
    vec![
        display::time_with_hint(now, e.time.as_ref()),
        e.client_id.clone(),
        e.action.clone(),
        display::or_dash(&e.tenant_id),
        e.outcome.clone(),
        display::or_dash(&display::truncate(&e.detail, 60)),
    ]
}

pub fn audit_json(e: &proto::AuditEvent) -> Value {
    json!({
        "id": e.id,
        "time": display::ts_json(e.time.as_ref()),
        "client_id": e.client_id,
        "action": e.action,
        "tenant_id": e.tenant_id,
        "outcome": e.outcome,
        "detail": e.detail,
    })
}

pub async fn audit(ctx: &Ctx, a: AuditArgs) -> Result<()> {
    let mut page_token = a.page_token.unwrap_or_default();
    let mut events = Vec::new();
    loop {
        let req = proto::ListAuditEventsRequest {
            page_size: a.page_size.unwrap_or(0),
            page_token: page_token.clone(),
            tenant_id: a.tenant.clone().unwrap_or_default(),
            client_id: a.client.clone().unwrap_or_default(),
        };
        let resp = ctx
            .unary(ctx.admin().list_audit_events(ctx.request(req)))
            .await?;
        events.extend(resp.events);
        if resp.next_page_token == page_token && !page_token.is_empty() {
            return Err(anyhow::anyhow!(
                "the daemon returned the same page token twice; stopping"
            ));
        }
        page_token = resp.next_page_token;
        if !a.all || page_token.is_empty() {
            break;
        }
    }
    if ctx.json {
        emit_json(&Value::Array(events.iter().map(audit_json).collect()))?;
    } else {
        let now = now_ms();
        let rows: Vec<Vec<String>> = events.iter().map(|e| audit_row(now, e)).collect();
        emit(&display::render_table(&AUDIT_HEADERS, &rows))?;
    }
    if !page_token.is_empty() {
        eprintln!("more events: pass --all, or --page-token {page_token}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_json() {
        let e = proto::AuditEvent {
            id: 7,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            client_id: "cl_1".into(),
            action: "tenant.delete".into(),
            tenant_id: String::new(),
            outcome: "NOT_FOUND".into(),
            detail: "tenant acme is not registered".into(),
        };
        let row = audit_row(1_700_000_060_000, &e);
        assert_eq!(row[1..5], ["cl_1", "tenant.delete", "-", "NOT_FOUND"]);
        assert_eq!(audit_json(&e)["id"], 7);
    }
}
