//! `AdminService.GetServerStatus`: the operator overview
//! ([`crate::overview`]) as a `ServerStatus` message. Translation only.

use tonic::Status;

use super::convert::{state_to_proto, tenant, timestamp};
use crate::domain::Tenant;
use crate::overview::{Overview, ReplicaView, ServerOverview};
use crate::proto;
use crate::store::StoreError;
use crate::tenants::{AdminError, Tenants};

const DEFAULT_FAILING: u32 = 20;
const MAX_FAILING: u32 = 1000;

pub async fn get(
    overview: &Overview,
    tenants: &Tenants,
    request: proto::GetServerStatusRequest,
) -> Result<proto::ServerStatus, Status> {
    let limit = match request.failing_limit {
        0 => DEFAULT_FAILING,
        n => n.min(MAX_FAILING),
    };
    let o = overview.collect().await.map_err(store_status)?;
    let cut_off = "the database cannot be reached: tokens are served from memory while valid, nothing is renewed until it returns";
    // Cut off from a networked database: answer at once from memory (no
    // read that could wait on a database that does not answer) and say so.
    if !o.database_reachable {
        let backend = overview.backend();
        return Ok(message(
            o,
            backend,
            (Vec::new(), 0),
            vec![cut_off.into()],
            Vec::new(),
        ));
    }
    let (failing, failing_total) = overview
        .failing_tenants(limit)
        .await
        .map_err(store_status)?;
    let warnings = match tenants.capacity_warnings().await {
        Ok(w) => w,
        Err(AdminError::Store(e)) if e.is_transient() => vec![cut_off.into()],
        Err(e) => return Err(e.into()),
    };
    // Cut off from the database: no list rather than no answer.
    let replicas = match overview.replicas().await {
        Ok(r) => r,
        Err(e) if e.is_transient() => Vec::new(),
        Err(e) => return Err(store_status(e)),
    };
    let backend = overview.backend();
    Ok(message(
        o,
        backend,
        (failing, failing_total),
        warnings,
        replicas,
    ))
}

fn message(
    o: ServerOverview,
    backend: &str,
    (failing, failing_total): (Vec<Tenant>, u64),
    warnings: Vec<String>,
    replicas: Vec<ReplicaView>,
) -> proto::ServerStatus {
    proto::ServerStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: Some(timestamp(o.started_at)),
        now: Some(timestamp(o.now)),
        database_writable: o.database_writable,
        database_reachable: o.database_reachable,
        tenants_by_state: o
            .tenants_by_state
            .iter()
            .map(|(s, n)| proto::TenantStateCount {
                state: state_to_proto(*s) as i32,
                count: *n,
            })
            .collect(),
        tokens_in_renewal_window: o.tokens.in_renewal_window,
        tokens_expired: o.tokens.expired,
        tenants_without_token: o.tokens.renewing.saturating_sub(o.tokens.with_token),
        renewals_due: o.queue.due,
        renewals_overdue: o.queue.overdue,
        oldest_due_at: o.queue.oldest_due_at.map(timestamp),
        renewals_in_flight: o.renewals_in_flight,
        failing_tenants: failing.iter().map(tenant).collect(),
        failing_tenants_total: failing_total,
        hosts: o
            .hosts
            .iter()
            .map(|h| proto::HostStatus {
                host: h.host.clone(),
                rate_limit_waits: h.rate_limit_waits,
                throttled_until: h.throttled_until.map(timestamp),
                demand_ratio: h.demand_ratio,
            })
            .collect(),
        last_backup_file: o
            .last_backup
            .as_ref()
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default(),
        last_backup_at: o.last_backup.as_ref().map(|(_, at)| timestamp(*at)),
        warnings,
        tokens_unstored: o.tokens_unstored,
        backend: backend.to_owned(),
        replicas: replicas
            .into_iter()
            .map(|r| proto::ReplicaStatus {
                name: r.name,
                last_heartbeat: Some(timestamp(r.last_heartbeat)),
                renewing_hosts: r.renewing_hosts,
                live: r.live,
            })
            .collect(),
    }
}

fn store_status(e: StoreError) -> Status {
    AdminError::Store(e).into()
}
