//! The API-client and audit-log RPCs of AdminService (CreateClient,
//! ListClients, RevokeClient, ListAuditEvents): decode, call `access` or
//! `audit`, encode. `admin.rs` delegates here so tenant handlers and these
//! stay apart.

use tonic::Status;

use super::convert::timestamp;
use super::rpc_audit::audited;
use crate::access::{Caller, ClientInfo, Clients, NewClient, Role};
use crate::audit::{action, Audit};
use crate::domain::ValidationError;
use crate::proto;
use crate::store::{AuditEntry, AuditQuery};

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

fn role_from_proto(v: i32) -> Result<Option<Role>, Status> {
    match proto::ClientRole::try_from(v) {
        Ok(proto::ClientRole::Admin) => Ok(Some(Role::Admin)),
        Ok(proto::ClientRole::Reader) => Ok(Some(Role::Reader)),
        Ok(proto::ClientRole::Unspecified) => Ok(None),
        Err(_) => Err(super::error_map::invalid(ValidationError::new(
            "role",
            format!("{v} is not a ClientRole value"),
        ))),
    }
}

fn role_to_proto(r: Role) -> proto::ClientRole {
    match r {
        Role::Admin => proto::ClientRole::Admin,
        Role::Reader => proto::ClientRole::Reader,
    }
}

pub fn client(c: &ClientInfo) -> proto::Client {
    proto::Client {
        client_id: c.client_id.clone(),
        name: c.name.clone(),
        role: role_to_proto(c.role) as i32,
        tenant_patterns: c.tenant_patterns.clone(),
        created_at: Some(timestamp(c.created_at)),
        revoked_at: c.revoked_at.map(timestamp),
    }
}

fn audit_event(e: &AuditEntry) -> proto::AuditEvent {
    proto::AuditEvent {
        id: e.id,
        time: Some(timestamp(e.event.at)),
        client_id: e.event.client_id.clone(),
        action: e.event.action.clone(),
        tenant_id: e.event.tenant_id.clone().unwrap_or_default(),
        outcome: e.event.outcome.clone(),
        detail: e.event.detail.clone(),
    }
}

pub async fn create_client(
    clients: &Clients,
    audit: &Audit,
    caller: &Caller,
    r: proto::CreateClientRequest,
) -> Result<proto::CreateClientResponse, Status> {
    let result = match role_from_proto(r.role) {
        Ok(role) => {
            let input = NewClient {
                name: r.name,
                role,
                tenant_patterns: r.tenant_patterns,
            };
            clients
                .create(&caller.client_id, input)
                .await
                .map_err(Status::from)
        }
        Err(e) => Err(e),
    };
    let detail = match &result {
        Ok((info, _)) => format!(
            "{} {} {:?} [{}]",
            info.client_id,
            info.role.as_str(),
            info.name,
            info.tenant_patterns.join(", ")
        ),
        Err(_) => String::new(),
    };
    let (info, key) = audited(audit, caller, action::CLIENT_CREATE, None, &detail, result).await?;
    Ok(proto::CreateClientResponse {
        client_id: info.client_id,
        api_key: key.expose().clone(),
    })
}

pub async fn list_clients(clients: &Clients) -> Result<proto::ListClientsResponse, Status> {
    let list = clients.list().await?;
    Ok(proto::ListClientsResponse {
        clients: list.iter().map(client).collect(),
    })
}

pub async fn revoke_client(
    clients: &Clients,
    audit: &Audit,
    caller: &Caller,
    r: proto::RevokeClientRequest,
) -> Result<(), Status> {
    let result = clients
        .revoke(&r.client_id)
        .await
        .map(|_| ())
        .map_err(Status::from);
    audited(
        audit,
        caller,
        action::CLIENT_REVOKE,
        None,
        &r.client_id,
        result,
    )
    .await
}

pub async fn list_audit_events(
    audit: &Audit,
    r: proto::ListAuditEventsRequest,
) -> Result<proto::ListAuditEventsResponse, Status> {
    let limit = match r.page_size {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let before_id = if r.page_token.is_empty() {
        None
    } else {
        Some(r.page_token.parse::<i64>().map_err(|_| {
            super::error_map::invalid(ValidationError::new(
                "page_token",
                "is not a token from a previous ListAuditEvents answer",
            ))
        })?)
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let mut entries = audit
        .list(AuditQuery {
            before_id,
            tenant_id: non_empty(r.tenant_id),
            client_id: non_empty(r.client_id),
            limit: limit + 1,
        })
        .await
        .map_err(super::error_map::storage)?;
    let next_page_token = if entries.len() > limit as usize {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.id.to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(proto::ListAuditEventsResponse {
        events: entries.iter().map(audit_event).collect(),
        next_page_token,
    })
}
