//! The end of a campaign, on a daemon left running: every tenant listed
//! and ACTIVE, every acknowledged one there, every tenant past
//! authorization served a forced, fresh token (its credentials open and the
//! PBX accepts them), and every app the PBX created through the API
//! accounted for: in use, replaced by a completed re-authorization, held by
//! an unfinished flow, or reported by the daemon as possibly orphaned.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use pbx_tokend::proto;

use super::load::Shared;
use super::process::Setup;
use crate::harness::{now_ms, ts_ms};

#[derive(Default)]
pub struct Final {
    pub tenants: usize,
    pub refreshed: usize,
    pub created: usize,
    pub created_in_use: usize,
    pub retired: usize,
    pub held_by_flows: usize,
    pub reported: usize,
    pub lost: usize,
}

/// On a daemon left running: every tenant listed; every acknowledged one
/// there; every tenant past authorization serves a forced, fresh token
/// (its credentials open and the PBX accepts them); every app created
/// through the API in use or reported.
pub async fn final_checks(sh: &Arc<Shared>, setup: &Setup, held: &HashSet<String>) -> Final {
    let mut f = Final::default();
    let mut tenants = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = sh
            .admin()
            .list_tenants(sh.req(proto::ListTenantsRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                state: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        tenants.extend(page.tenants);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    f.tenants = tenants.len();
    let present: HashSet<String> = tenants.iter().map(|t| t.tenant_id.clone()).collect();
    for id in sh.acked.lock().unwrap().iter() {
        if !present.contains(id) {
            sh.violation(format!("final: acknowledged tenant {id} is missing"));
        }
    }
    let in_use: HashSet<String> = tenants
        .iter()
        .map(|t| t.trusted_client_id.clone())
        .collect();
    let servable: Vec<String> = tenants
        .iter()
        .filter(|t| t.state != proto::TenantState::PendingAuthorization as i32)
        .map(|t| t.tenant_id.clone())
        .collect();
    for t in &tenants {
        if t.state != proto::TenantState::Active as i32 {
            sh.violation(format!(
                "final: tenant {} is in state {} ({})",
                t.tenant_id, t.state, t.last_error
            ));
        }
    }
    let refreshed = futures::stream::iter(servable)
        .map(|id| {
            let sh = sh.clone();
            async move {
                let r = sh
                    .admin()
                    .refresh_tenant(sh.req(proto::RefreshTenantRequest {
                        tenant_id: id.clone(),
                    }))
                    .await;
                match r {
                    Ok(t) => {
                        let t = t.into_inner();
                        if ts_ms(&t.expires_at) <= now_ms()
                            || !sh.sim.issued_token_valid(&t.access_token)
                        {
                            sh.violation(format!("final: forced token of {id} is not valid"));
                        }
                        sh.check_token(&id).await;
                        1
                    }
                    Err(s) => {
                        sh.violation(format!("final: RefreshTenant({id}): {s:?}"));
                        0
                    }
                }
            }
        })
        .buffer_unordered(16)
        .fold(0usize, |a, b| async move { a + b })
        .await;
    f.refreshed = refreshed;
    // Every app the PBX created for us is in use or was reported.
    let logs = setup.logs();
    let reported_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_lowercase().contains("delete"))
        .collect();
    let created = sh.sim.created_apps();
    f.created = created.len();
    let used_before: HashSet<String> = sh
        .onboarded
        .lock()
        .unwrap()
        .values()
        .flatten()
        .cloned()
        .collect();
    for (name, client_id) in created {
        if in_use.contains(&client_id) {
            f.created_in_use += 1;
        } else if used_before.contains(&client_id) {
            // In use once, then replaced by a completed re-authorization.
            f.retired += 1;
        } else if held.contains(&client_id) {
            // Stored by an unfinished flow (already a violation above).
            f.held_by_flows += 1;
        } else if reported_lines.iter().any(|l| l.contains(&name)) {
            f.reported += 1;
        } else {
            f.lost += 1;
            sh.violation(format!(
                "app \"{name}\" ({client_id}) was created in the PBX, is not in use and was never reported"
            ));
        }
    }
    f
}
