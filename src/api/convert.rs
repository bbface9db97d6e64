//! proto <-> domain conversions. Secrets go out only in `AccessToken`, the
//! one message whose purpose is to carry a token.

use prost_types::Timestamp;

use crate::clock::UnixMs;
use crate::domain::{self, TenantState};
use crate::proto;

pub fn timestamp(t: UnixMs) -> Timestamp {
    Timestamp {
        seconds: t.0.div_euclid(1000),
        nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn access_token(tenant_id: &str, t: &domain::AccessToken) -> proto::AccessToken {
    proto::AccessToken {
        tenant_id: tenant_id.to_owned(),
        access_token: t.value.expose().clone(),
        token_type: t.token_type.clone(),
        issued_at: Some(timestamp(t.issued_at)),
        expires_at: Some(timestamp(t.expires_at)),
    }
}

pub fn state_to_proto(s: TenantState) -> proto::TenantState {
    match s {
        TenantState::PendingAuthorization => proto::TenantState::PendingAuthorization,
        TenantState::Active => proto::TenantState::Active,
        TenantState::RenewalFailing => proto::TenantState::RenewalFailing,
        TenantState::CredentialsRejected => proto::TenantState::CredentialsRejected,
        TenantState::Disabled => proto::TenantState::Disabled,
    }
}

/// A stored tenant event (its message is secret-free by construction).
pub fn tenant_event(e: &crate::store::TenantEvent) -> proto::TenantEvent {
    use crate::store::TenantEventKind as K;
    let kind = match e.kind {
        K::Created => proto::TenantEventKind::Created,
        K::Updated => proto::TenantEventKind::Updated,
        K::Deleted => proto::TenantEventKind::Deleted,
        K::StateChanged => proto::TenantEventKind::StateChanged,
        K::AuthorizationCompleted => proto::TenantEventKind::AuthorizationCompleted,
    };
    let state =
        |s: Option<TenantState>| s.map_or(proto::TenantState::Unspecified, state_to_proto) as i32;
    proto::TenantEvent {
        event_id: e.event_id,
        tenant_id: e.tenant_id.as_str().to_owned(),
        kind: kind as i32,
        previous_state: state(e.previous_state),
        state: state(e.state),
        message: e.message.clone(),
        at: Some(timestamp(e.at)),
    }
}

/// `None` for UNSPECIFIED (meaning "any"); an error for unknown numbers.
pub fn state_from_proto(v: i32) -> Result<Option<TenantState>, domain::ValidationError> {
    let s = proto::TenantState::try_from(v).map_err(|_| {
        domain::ValidationError::new("state", format!("{v} is not a TenantState value"))
    })?;
    Ok(match s {
        proto::TenantState::Unspecified => None,
        proto::TenantState::PendingAuthorization => Some(TenantState::PendingAuthorization),
        proto::TenantState::Active => Some(TenantState::Active),
        proto::TenantState::RenewalFailing => Some(TenantState::RenewalFailing),
        proto::TenantState::CredentialsRejected => Some(TenantState::CredentialsRejected),
        proto::TenantState::Disabled => Some(TenantState::Disabled),
    })
}

pub fn tenant(t: &domain::Tenant) -> proto::Tenant {
    proto::Tenant {
        tenant_id: t.id.to_string(),
        display_name: t.display_name.clone(),
        pbx_base_url: t.base_url.as_str().to_owned(),
        state: state_to_proto(t.state) as i32,
        trusted_client_id: t.trusted_client_id.clone().unwrap_or_default(),
        token_expires_at: t.token_expires_at.map(timestamp),
        next_refresh_at: t.next_refresh_at.map(timestamp),
        last_refresh_at: t.last_refresh_at.map(timestamp),
        consecutive_failures: t.consecutive_failures,
        last_error: t.last_error.clone().unwrap_or_default(),
        pbx_user: t.pbx_user.as_ref().map(|u| proto::PbxUser {
            id: u.id,
            login: u.login.clone(),
            client_id: u.client_id,
            admin: u.admin,
            dealer_id: u.dealer_id,
            extension_id: u.extension_id,
            extension_group_id: u.extension_group_id,
        }),
        created_at: Some(timestamp(t.created_at)),
        updated_at: Some(timestamp(t.updated_at)),
        pbx_host: t.base_url.host().to_owned(),
    }
}

/// (client_id, client_secret) of a set AppCredentials message.
pub fn app(a: Option<proto::AppCredentials>) -> Option<(String, String)> {
    a.map(|a| (a.client_id, a.client_secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_ms() {
        let t = timestamp(UnixMs(1_500));
        assert_eq!((t.seconds, t.nanos), (1, 500_000_000));
        let t = timestamp(UnixMs(-1));
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
    }

    #[test]
    fn unknown_state_number_is_invalid() {
        assert!(state_from_proto(99).is_err());
        assert_eq!(state_from_proto(0).unwrap(), None);
        assert_eq!(state_from_proto(2).unwrap(), Some(TenantState::Active));
    }
}
