//! What each PBX failure means for the flow: pure functions from a failed
//! step's error to the message (what happened, what to do next) and the
//! [`Outcome`] (retry later, wait for a person, or end the flow), plus the
//! texts for a denied authorization and for possibly orphaned applications.
//!
//! Does not: store anything or talk to the PBX (`steps.rs` does).

use super::OnboardingError;
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::pbx::gated::FetchFailure;
use crate::pbx::PbxError;

/// How a failed step leaves the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The PBX is unreachable or throttles: the flow waits for a retry.
    Retry(Option<UnixMs>),
    /// Someone must change something first; the flow waits.
    Stuck,
    /// The flow cannot go on: it fails and its state is consumed.
    Fatal,
}

#[derive(Debug)]
pub(super) struct Failure {
    pub(super) outcome: Outcome,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(outcome: Outcome, what: impl std::fmt::Display) -> Self {
        Self {
            outcome,
            message: format!("authorization flow: {what}"),
        }
    }

    pub(super) fn error(&self) -> OnboardingError {
        match self.outcome {
            Outcome::Retry(retry_at) => OnboardingError::Unavailable {
                reason: self.message.clone(),
                retry_at,
            },
            Outcome::Stuck | Outcome::Fatal => {
                OnboardingError::FailedPrecondition(self.message.clone())
            }
        }
    }
}

/// The text for a callback `error=..` (the user denied access, or another
/// OAuth error), with the PBX's words cleaned.
pub(super) fn denial_message(error: &str, description: Option<&str>) -> String {
    let error: String = error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if error == "access_denied" {
        return "authorization flow: the PBX user denied access (error=access_denied); nothing was changed; to try again, run BeginAuthorization and have the PBX user click Allow".to_owned();
    }
    let detail: String = description
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let detail = detail.trim();
    format!(
        "authorization flow: the PBX answered the authorization request with error={}{}; nothing was changed; run BeginAuthorization to try again",
        if error.is_empty() { "(empty)" } else { &error },
        if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )
}

pub(super) fn orphan_note(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    Some(format!(
        "authorization flow: completed, but the PBX may hold application(s) {} created without their credentials being stored; delete them in the PBX web UI (the tenant uses a different one)",
        list.join(", ")
    ))
}

/// What a failed code exchange (step 1) means. The flow stays at `Issued`:
/// the same state can be completed with a new code while it is valid.
pub(super) fn exchange_failure(
    f: &FetchFailure,
    redirect_uri: &str,
    state_until: UnixMs,
    now: UnixMs,
) -> Failure {
    let again = format!("have the PBX user open the authorization URL again (its state is valid until {state_until}) and complete with the new code, or run BeginAuthorization for a new URL");
    match f {
        FetchFailure::HostThrottled { until } => Failure::new(
            Outcome::Retry(Some(*until)),
            format!("{}; the code was not sent: call CompleteAuthorization again with the same state and code after that (if the code has expired by then, {again})", f.describe()),
        ),
        FetchFailure::Pbx(e @ PbxError::CredentialsRejected { error, description, .. }) => {
            let grant = error.as_deref().is_some_and(|e| e.eq_ignore_ascii_case("invalid_grant"));
            let redirect = description.as_deref().is_some_and(|d| d.to_ascii_lowercase().contains("redirect"));
            if grant && redirect {
                Failure::new(Outcome::Stuck, format!("{e}: the redirect URI does not match; the tenant's redirect_uri ({redirect_uri}) must be exactly the one registered with the provider's public app: fix the registration or register the tenant again with the right redirect_uri, then run BeginAuthorization"))
            } else if grant {
                Failure::new(Outcome::Stuck, format!("{e}: the authorization code has expired or was already used; {again}"))
            } else {
                Failure::new(Outcome::Stuck, format!("{e}: the PBX did not accept the tenant's public app client_id and client_secret; check them with the provider (to change them, delete the tenant and register it again)"))
            }
        }
        FetchFailure::Pbx(e @ PbxError::Throttled { retry_after }) => Failure::new(
            Outcome::Retry(Some(now.plus(*retry_after))),
            format!("{e}; call CompleteAuthorization again with the same state and code after that (if the code has expired by then, {again})"),
        ),
        FetchFailure::Pbx(e @ PbxError::Transient { .. }) => Failure::new(
            Outcome::Retry(None),
            format!("{e}; the code may still be valid for a short while: call CompleteAuthorization again with the same state and code (if it has expired, {again})"),
        ),
        FetchFailure::Pbx(e) => Failure::new(
            Outcome::Stuck,
            format!("{e}; check the tenant's pbx_base_url and public app, then {again}"),
        ),
    }
}

/// What a failed create call (step 2) means, and whether the application
/// may exist in the PBX without its answer stored (an orphan).
pub(super) fn create_failure(
    e: &PbxError,
    name: &str,
    id: &TenantId,
    usable_until: UnixMs,
    now: UnixMs,
) -> (Failure, bool) {
    let resume = format!("call CompleteAuthorization(tenant_id={id}) again to go on with a new application (possible until {usable_until}, while the authorization's token is valid)");
    match e {
        PbxError::Refused { status: 403, message } => (
            Failure::new(Outcome::Fatal, format!("the PBX user who allowed access may not create applications (HTTP 403: {message}); have a PBX user with the right to create applications (an administrator) allow access: run BeginAuthorization again; or create a trusted application in the PBX web UI and register it with UpdateTenant (trusted_app)")),
            false,
        ),
        PbxError::CredentialsRejected { .. } => (
            Failure::new(Outcome::Fatal, format!("{e}: the PBX no longer accepts the token of the PBX user's authorization; run BeginAuthorization and have the PBX user allow access again")),
            false,
        ),
        PbxError::Throttled { retry_after } => (
            Failure::new(Outcome::Retry(Some(now.plus(*retry_after))), format!("{e}; no application was created; after that, {resume}")),
            false,
        ),
        PbxError::Transient { .. } => (
            Failure::new(Outcome::Retry(None), format!("{e}; the PBX may or may not have created application \"{name}\" (if it shows in the PBX web UI, delete it); {resume}")),
            true,
        ),
        PbxError::Protocol { reason } => (
            Failure::new(Outcome::Stuck, format!("the PBX created application \"{name}\" but its answer has no recognisable credentials ({reason}); delete \"{name}\" in the PBX web UI; {resume}")),
            true,
        ),
        PbxError::Refused { .. } | PbxError::Misconfigured { .. } => (
            Failure::new(Outcome::Stuck, format!("{e}; no application was created; {resume}")),
            false,
        ),
    }
}

/// What a failed first token (step 4) means. Rejected credentials of an app
/// the PBX just created end the flow (the secret is useless); anything else
/// leaves the stored app waiting for a retry.
pub(super) fn token_failure(
    f: &FetchFailure,
    name: &str,
    client_id: &str,
    id: &TenantId,
    now: UnixMs,
) -> Failure {
    let retry = format!("the new trusted application \"{name}\" (client_id {client_id}) is stored: call CompleteAuthorization(tenant_id={id}) again to go on");
    match f {
        FetchFailure::Pbx(e @ PbxError::CredentialsRejected { .. }) => Failure::new(
            Outcome::Fatal,
            format!("{e}: the PBX rejected the new trusted application \"{name}\" (client_id {client_id}) right after creating it; delete it in the PBX web UI and run BeginAuthorization to try again"),
        ),
        FetchFailure::HostThrottled { until } => Failure::new(Outcome::Retry(Some(*until)), format!("{}; {retry} after that", f.describe())),
        FetchFailure::Pbx(e @ PbxError::Throttled { retry_after }) => {
            Failure::new(Outcome::Retry(Some(now.plus(*retry_after))), format!("{e}; {retry} after that"))
        }
        FetchFailure::Pbx(e @ PbxError::Transient { .. }) => Failure::new(Outcome::Retry(None), format!("{e}; {retry}")),
        FetchFailure::Pbx(e) => Failure::new(Outcome::Stuck, format!("{e}; {retry} once the PBX answers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn exchange_failures_say_what_to_do() {
        let rejected = |error: &str, description: &str| {
            FetchFailure::Pbx(PbxError::CredentialsRejected {
                status: 400,
                error: Some(error.into()),
                description: Some(description.into()),
            })
        };
        let f = exchange_failure(
            &rejected("invalid_grant", "The code has expired."),
            "https://crm/cb",
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Stuck);
        assert!(
            f.message.contains("expired or was already used"),
            "{}",
            f.message
        );
        let f = exchange_failure(
            &rejected("invalid_grant", "Mismatching redirect URI."),
            "https://crm/cb",
            UnixMs(0),
            UnixMs(0),
        );
        assert!(
            f.message.contains("redirect URI does not match")
                && f.message.contains("https://crm/cb"),
            "{}",
            f.message
        );
        let f = exchange_failure(
            &rejected("invalid_client", "bad"),
            "u",
            UnixMs(0),
            UnixMs(0),
        );
        assert!(f.message.contains("public app"), "{}", f.message);
        let f = exchange_failure(
            &FetchFailure::HostThrottled { until: UnixMs(5) },
            "u",
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Retry(Some(UnixMs(5))));
        assert!(matches!(f.error(), OnboardingError::Unavailable { .. }));
    }

    #[test]
    fn create_failures_name_possible_orphans() {
        let (f, orphan) = create_failure(
            &PbxError::Refused {
                status: 403,
                message: "You do not have permission.".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Fatal, false));
        assert!(f.message.contains("may not create applications"));
        let (f, orphan) = create_failure(
            &PbxError::Protocol {
                reason: "fields received: app_key, app_password".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Stuck, true));
        assert!(f.message.contains("\"app 1\"") && f.message.contains("app_key"));
        let (f, orphan) = create_failure(
            &PbxError::Transient {
                reason: "HTTP 503".into(),
            },
            "app 1",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert_eq!((f.outcome, orphan), (Outcome::Retry(None), true));
        let (_, orphan) = create_failure(
            &PbxError::Throttled {
                retry_after: std::time::Duration::from_secs(1),
            },
            "a",
            &id(),
            UnixMs(0),
            UnixMs(0),
        );
        assert!(!orphan);
    }

    #[test]
    fn rejected_new_app_ends_the_flow_other_token_failures_wait() {
        let f = token_failure(
            &FetchFailure::Pbx(PbxError::CredentialsRejected {
                status: 401,
                error: None,
                description: None,
            }),
            "n",
            "cid",
            &id(),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Fatal);
        let f = token_failure(
            &FetchFailure::Pbx(PbxError::Transient { reason: "x".into() }),
            "n",
            "cid",
            &id(),
            UnixMs(0),
        );
        assert_eq!(f.outcome, Outcome::Retry(None));
        assert!(f.message.contains("is stored"));
    }

    #[test]
    fn denial_and_orphan_texts() {
        assert!(denial_message("access_denied", None).contains("denied access"));
        let m = denial_message("<script>x</script>", Some("a\nb"));
        assert!(!m.contains('<') && !m.contains('\n'), "{m}");
        assert_eq!(orphan_note(&[]), None);
        assert!(orphan_note(&["a b".into()]).unwrap().contains("\"a b\""));
    }
}
