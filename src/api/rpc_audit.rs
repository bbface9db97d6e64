//! Recording admin RPCs in the audit log from the API layer, where the
//! outcome is a `tonic::Status`: the outcome stored is `ok` or the status
//! code's name, the detail the status message (secret-free by design, see
//! `error_map.rs`).
//!
//! For handlers: `audited(&audit, &caller, action::X, Some(tenant), "", result).await`
//! records and passes the result through unchanged.

use tonic::{Code, Status};

use crate::access::Caller;
use crate::audit::{self, Audit};

/// Records `result` as the outcome of `action` by `caller`, then returns it.
/// `ok_detail` (secret-free) is stored on success, the status message on
/// failure.
pub async fn audited<T>(
    audit: &Audit,
    caller: &Caller,
    action: &str,
    tenant: Option<&str>,
    ok_detail: &str,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let (outcome, detail) = match &result {
        Ok(_) => (audit::OK, ok_detail),
        Err(s) => (code_name(s.code()), s.message()),
    };
    audit
        .record(&caller.client_id, action, tenant, outcome, detail)
        .await;
    result
}

/// The canonical upper-case name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::from_i32(9)), "FAILED_PRECONDITION");
    }
}
