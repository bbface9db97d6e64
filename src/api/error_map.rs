//! Every error of the layers below becomes a `tonic::Status` here, and only
//! here. Messages say what happened and what to do next; no secret is ever
//! part of an error message.

use tonic::{Code, Status};

use crate::access::ClientError;
use crate::broker::TokenError;
use crate::domain::ValidationError;
use crate::events::EventsError;
use crate::onboarding::OnboardingError;
use crate::store::StoreError;
use crate::tenants::AdminError;

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn store(e: StoreError) -> Status {
    match e {
        StoreError::TenantExists(id) => {
            Status::already_exists(format!("tenant {id} already exists"))
        }
        StoreError::TenantNotFound(id) => {
            Status::not_found(format!("tenant {id} is not registered"))
        }
        // The tenant's stored credentials cannot be used: its problem (the
        // message says how to fix it), not a failure of the daemon.
        e @ (StoreError::CredentialUnreadable { .. } | StoreError::CredentialTampered { .. }) => {
            Status::failed_precondition(e.to_string())
        }
        // A newer token (or a completed flow) was stored meanwhile: nothing
        // is wrong, the caller retries against what is stored now. The
        // reason says what moved on.
        e @ StoreError::Fenced { .. } => Status::unavailable(format!(
            "{e}; nothing was changed: retry the call, it works from what is stored now"
        )),
        // A replica cut off from its database (or a failover under way):
        // nothing was written, and the same call works later or on another
        // replica. UNAVAILABLE is what retrying clients retry.
        e @ StoreError::Unavailable(_) => {
            tracing::warn!("storage unavailable: {e}");
            Status::unavailable(format!(
                "{e}; nothing was written: retry later (another replica may answer now)"
            ))
        }
        other => {
            // Details go to the log; the caller learns it is on our side.
            tracing::error!("storage error: {other}");
            Status::internal(format!(
                "the daemon's storage failed ({other}); see the daemon log"
            ))
        }
    }
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidArgument(v) => invalid(v),
            e @ (TokenError::NotFound(_) | TokenError::Deleted(_)) => {
                Status::not_found(e.to_string())
            }
            e @ (TokenError::NotServable { .. } | TokenError::CredentialsUnusable { .. }) => {
                Status::failed_precondition(e.to_string())
            }
            TokenError::Unavailable {
                tenant,
                reason,
                retry_at,
            } => {
                let when = retry_at
                    .map(|t| format!("; next attempt at {t}"))
                    .unwrap_or_default();
                Status::new(
                    Code::Unavailable,
                    format!("no valid token for tenant {tenant}: {reason}{when}; retry later"),
                )
            }
            TokenError::Store(s) => store(s),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::InvalidArgument(v) => invalid(v),
            e @ AdminError::NotFound(_) => Status::not_found(e.to_string()),
            e @ AdminError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            AdminError::FailedPrecondition(m) => Status::failed_precondition(m),
            AdminError::Unavailable { reason, .. } => Status::unavailable(reason),
            AdminError::Unimplemented(m) => Status::unimplemented(m),
            AdminError::Token(t) => t.into(),
            AdminError::Store(s) => store(s),
        }
    }
}

/// The code `Status::from(e)` carries, for recording an onboarding outcome
/// that is not answered over gRPC (the callback listener audits it the same
/// way as CompleteAuthorization).
pub fn onboarding_code(e: &OnboardingError) -> Code {
    match e {
        OnboardingError::InvalidArgument(_) => Code::InvalidArgument,
        OnboardingError::NotFound(_) | OnboardingError::Store(StoreError::TenantNotFound(_)) => {
            Code::NotFound
        }
        OnboardingError::FailedPrecondition(_) => Code::FailedPrecondition,
        OnboardingError::Unavailable { .. }
        | OnboardingError::Store(StoreError::Unavailable(_)) => Code::Unavailable,
        OnboardingError::Store(StoreError::TenantExists(_)) => Code::AlreadyExists,
        OnboardingError::Store(StoreError::Fenced { .. }) => Code::Unavailable,
        OnboardingError::Store(_) | OnboardingError::Internal(_) => Code::Internal,
    }
}

impl From<OnboardingError> for Status {
    fn from(e: OnboardingError) -> Self {
        match e {
            OnboardingError::InvalidArgument(v) => invalid(v),
            e @ OnboardingError::NotFound(_) => Status::not_found(format!(
                "{e}; register it with CreateTenant (public_app and redirect_uri) first"
            )),
            // Replayed, expired or unknown states land here too: the
            // request was fine, the flow is not in a state for it.
            OnboardingError::FailedPrecondition(m) => Status::failed_precondition(m),
            OnboardingError::Unavailable { reason, .. } => Status::unavailable(reason),
            OnboardingError::Store(s) => store(s),
            e @ OnboardingError::Internal(_) => {
                tracing::error!("{e}");
                Status::internal(format!("{e}; the flow resumes at the next start or CompleteAuthorization(tenant_id); see the daemon log"))
            }
        }
    }
}

impl From<ClientError> for Status {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::InvalidArgument(v) => invalid(v),
            e @ ClientError::NotFound(_) => Status::not_found(e.to_string()),
            ClientError::Store(s) => store(s),
            e @ (ClientError::Random(_)
            | ClientError::KeyFile { .. }
            | ClientError::KeyFileMode { .. }) => {
                tracing::error!("{e}");
                Status::internal(format!("{e}; see the daemon log"))
            }
        }
    }
}

impl From<EventsError> for Status {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::InvalidArgument(v) => invalid(v),
            // The caller asked for events that are gone: it must decide
            // whether to accept the gap (the message says how).
            e @ EventsError::Pruned { .. } => Status::failed_precondition(e.to_string()),
            EventsError::Store(s) => store(s),
        }
    }
}

/// A storage failure outside the tenant use cases (audit listing).
pub fn storage(e: StoreError) -> Status {
    store(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onboarding_code_is_the_status_code() {
        let samples = || {
            vec![
                OnboardingError::InvalidArgument(ValidationError::new("code", "is empty")),
                OnboardingError::NotFound("acme".into()),
                OnboardingError::FailedPrecondition("used".into()),
                OnboardingError::Unavailable {
                    reason: "down".into(),
                    retry_at: None,
                },
                OnboardingError::Store(StoreError::TenantExists("acme".into())),
                OnboardingError::Store(StoreError::TenantNotFound("acme".into())),
                OnboardingError::Store(StoreError::Unavailable("reset".into())),
                OnboardingError::Internal("bug".into()),
            ]
        };
        for (by_ref, by_value) in samples().iter().zip(samples()) {
            assert_eq!(onboarding_code(by_ref), Status::from(by_value).code());
        }
    }

    #[test]
    fn a_database_out_of_reach_is_unavailable_not_internal() {
        let s = storage(StoreError::Unavailable("connection reset".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("retry"), "{}", s.message());
        let s = Status::from(AdminError::Store(StoreError::Unavailable("gone".into())));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
