//! The rule for a `GetToken` that asks for more validity than a token of
//! this tenant can have (`min_valid_seconds` at or above the lifetime the
//! PBX grants): it is refused with INVALID_ARGUMENT naming the lifetime, and
//! never turned into a PBX request. Serving a shorter token instead would
//! hide the caller's mistake, and fetching for it would spend the host's
//! rate budget on every call (a fresh token cannot satisfy it either).
//!
//! The lifetime is the held token's (`expires_at - issued_at`, i.e. the
//! PBX's `expires_in`, or `[token] default_lifetime_seconds` without one).
//! With no token held yet the one fetch that is needed anyway runs first and
//! its token decides; so such an ask causes at most one fetch per token.
//! `min_valid_seconds = 0` (the configured default) is never refused: that
//! is the operator's setting, not the caller's ask.

use crate::domain::{AccessToken, TenantId, ValidationError};

/// `Err` when `token` (the tenant's current one) shows that no token could
/// be valid for `min_valid_secs` (an explicit ask, not 0).
pub fn check(
    tenant: &TenantId,
    min_valid_secs: u32,
    token: Option<&AccessToken>,
) -> Result<(), ValidationError> {
    let Some(token) = token else {
        return Ok(());
    };
    let lifetime_ms = token.lifetime_ms();
    if min_valid_secs == 0 || i64::from(min_valid_secs) * 1000 < lifetime_ms {
        return Ok(());
    }
    let lifetime_secs = lifetime_ms / 1000;
    Err(ValidationError::new(
        "min_valid_seconds",
        format!(
            "{min_valid_secs} s is not less than the lifetime of tenant {tenant}'s tokens ({lifetime_secs} s, as the PBX issues them), so no token can satisfy it; ask for less than {lifetime_secs} s, or 0 for the daemon's default"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixMs;
    use crate::secret::Secret;

    fn token(lifetime_secs: i64) -> AccessToken {
        AccessToken {
            value: Secret::new("t".into()),
            token_type: "Bearer".into(),
            issued_at: UnixMs(1_000_000),
            expires_at: UnixMs(1_000_000 + lifetime_secs * 1000),
        }
    }

    #[test]
    fn refuses_only_an_explicit_ask_at_or_above_the_lifetime() {
        let id = TenantId::parse("acme").unwrap();
        let t = token(3600);
        assert!(check(&id, 0, Some(&t)).is_ok());
        assert!(check(&id, 3599, Some(&t)).is_ok());
        assert!(
            check(&id, 7200, None).is_ok(),
            "no token: the fetch decides"
        );
        let e = check(&id, 3600, Some(&t)).unwrap_err();
        assert_eq!(e.field, "min_valid_seconds");
        let e = check(&id, 7200, Some(&t)).unwrap_err().to_string();
        assert!(
            e.contains("7200") && e.contains("3600 s") && e.contains("acme"),
            "{e}"
        );
    }
}
