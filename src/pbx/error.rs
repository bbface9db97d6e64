//! How a PBX call can fail, classified so callers act on the class.
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PbxError {
    /// 400/401 `invalid_client` and kin: the credentials are wrong or revoked.
    #[error("the PBX rejected the credentials (HTTP {status}{})", fmt_detail(.error, .description))]
    CredentialsRejected {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// 429: no request before `retry_after` has passed.
    #[error("throttled by the PBX (HTTP 429); retry in {}s", .retry_after.as_secs())]
    Throttled { retry_after: Duration },
    /// 5xx, timeouts, connection failures: worth retrying with backoff.
    #[error("PBX unavailable: {reason}")]
    Transient { reason: String },
    /// Another 4xx that is not about credentials (403, 404, ...).
    #[error("the PBX refused the request (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    /// The answer is not what the API document promises.
    #[error("malformed PBX answer: {reason}")]
    Protocol { reason: String },
    /// Not sent: our side forbids the request (an `http://` base URL while
    /// `[pbx] allow_insecure_http` is off, an unusable bearer token). A
    /// person must fix the configuration or the tenant; retrying won't help.
    #[error("request to the PBX not sent: {reason}")]
    Misconfigured { reason: String },
}

fn fmt_detail(error: &Option<String>, description: &Option<String>) -> String {
    match (error, description) {
        (Some(e), Some(d)) => format!(": {e}: {d}"),
        (Some(e), None) => format!(": {e}"),
        (None, Some(d)) => format!(": {d}"),
        (None, None) => String::new(),
    }
}

impl PbxError {
    /// The same error with every text field passed through
    /// [`super::redact::redact`]: `known` (the secrets of the call that
    /// failed) in any encoding, and anything that looks like a secret. The
    /// client applies this to every error it returns, so no path can carry
    /// an echoed secret into logs, `last_error`, flow errors or audit events.
    pub fn redact(self, known: &[&str]) -> Self {
        let r = |s: String| super::redact::redact(&s, known);
        match self {
            PbxError::CredentialsRejected {
                status,
                error,
                description,
            } => PbxError::CredentialsRejected {
                status,
                error: error.map(r),
                description: description.map(r),
            },
            PbxError::Throttled { retry_after } => PbxError::Throttled { retry_after },
            PbxError::Transient { reason } => PbxError::Transient { reason: r(reason) },
            PbxError::Refused { status, message } => PbxError::Refused {
                status,
                message: r(message),
            },
            PbxError::Protocol { reason } => PbxError::Protocol { reason: r(reason) },
            PbxError::Misconfigured { reason } => PbxError::Misconfigured { reason: r(reason) },
        }
    }

    /// A short stable class name for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            PbxError::CredentialsRejected { .. } => "credentials_rejected",
            PbxError::Throttled { .. } => "throttled",
            PbxError::Transient { .. } => "transient",
            PbxError::Refused { .. } => "refused",
            PbxError::Protocol { .. } => "protocol",
            PbxError::Misconfigured { .. } => "misconfigured",
        }
    }
}
