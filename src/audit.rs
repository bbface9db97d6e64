//! The audit log: every admin mutation (tenant create/update/delete/refresh,
//! client create/revoke, authorization begin/complete, master key rotation)
//! is recorded in SQLite with when, which client, what, on which tenant and
//! the outcome, and echoed as one `audit` log line.
//!
//! Callers pass ids, action names and secret-free messages only; no secret
//! value ever reaches this module. Recording never fails the operation it
//! describes (that already happened): a failed write is logged loudly.
//!
//! Does not: decide who may do what (`access`) or know gRPC (the API layer
//! turns a `Status` into an outcome, see `api::rpc_audit`).

use crate::clock::SharedClock;
use crate::store::{AuditEntry, AuditQuery, NewAuditEvent, Store, StoreError};

/// Action names, stable: operators filter on them.
pub mod action {
    pub const TENANT_CREATE: &str = "tenant.create";
    pub const TENANT_UPDATE: &str = "tenant.update";
    pub const TENANT_DELETE: &str = "tenant.delete";
    pub const TENANT_REFRESH: &str = "tenant.refresh";
    pub const AUTHORIZATION_BEGIN: &str = "authorization.begin";
    pub const AUTHORIZATION_COMPLETE: &str = "authorization.complete";
    pub const CLIENT_CREATE: &str = "client.create";
    pub const CLIENT_REVOKE: &str = "client.revoke";
    pub const MASTER_KEY_ROTATE: &str = "master_key.rotate";
}

/// The outcome of a successful action.
pub const OK: &str = "ok";
/// Longest `detail` kept; error messages are short, this only bounds them.
const MAX_DETAIL: usize = 500;

/// Appends and lists audit events. Cheap to clone.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    clock: SharedClock,
}

impl Audit {
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Builds an event stamped now. `outcome` is [`OK`] or a status name
    /// such as `NOT_FOUND`; `detail` a secret-free message (bounded).
    pub fn event(
        &self,
        client_id: &str,
        action: &str,
        tenant_id: Option<&str>,
        outcome: &str,
        detail: &str,
    ) -> NewAuditEvent {
        let mut detail: String = detail
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        NewAuditEvent {
            at: self.clock.now(),
            client_id: client_id.to_owned(),
            action: action.to_owned(),
            tenant_id: tenant_id.filter(|t| !t.is_empty()).map(str::to_owned),
            outcome: outcome.to_owned(),
            detail,
        }
    }

    /// Records one event (see [`Audit::event`] for the fields).
    pub async fn record(
        &self,
        client_id: &str,
        action: &str,
        tenant_id: Option<&str>,
        outcome: &str,
        detail: &str,
    ) {
        let event = self.event(client_id, action, tenant_id, outcome, detail);
        tracing::info!(
            target: "pbx_tokend::audit",
            client = %event.client_id,
            action = %event.action,
            tenant = event.tenant_id.as_deref().unwrap_or("-"),
            outcome = %event.outcome,
            "audit"
        );
        if let Err(e) = self.store.insert_audit(event).await {
            tracing::error!(action, "cannot write the audit log: {e}");
        }
    }

    /// Events newest first.
    pub async fn list(&self, query: AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.list_audit(query).await
    }
}
