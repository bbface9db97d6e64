//! The renewal outcome rules as one pure function: given how a token
//! request ended, what the tenant's state, next due time, failure count and
//! `last_error` become.
//!
//! Why a function of its own: the broker used to decide this inline, mixed
//! with store writes, metrics and publishing, so the rules could only be
//! tested through a whole broker. Here they take plain values (no clock, no
//! store, no PBX types: this module sits in the shared vocabulary below
//! both) and the broker applies the [`Decision`]. Randomness comes in as
//! ONE draw in [0, 1): every outcome uses exactly one, so the deterministic
//! simulation's sequence of draws is the same as before the extraction.

use std::time::Duration;

use super::RenewalPolicy;
use crate::clock::UnixMs;
use crate::domain::{AccessToken, TenantState};

/// How a token request ended, reduced to what the rules need.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// A token was issued (with the default lifetime already applied).
    Success { token: &'a AccessToken },
    /// The PBX refused the app credentials (`invalid_client` and kin).
    CredentialsRejected,
    /// The host is throttled until `until` (our limiter knew it, or a 429
    /// just said so): no request before then.
    Throttled { until: UnixMs },
    /// The PBX answered something we could not parse.
    Malformed,
    /// Any other failure (network, timeout, 5xx, ...).
    Failed,
}

/// The plain inputs of [`decide`].
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub outcome: Outcome<'a>,
    /// Consecutive failures before this outcome.
    pub failures: u32,
    pub now: UnixMs,
    /// The token held when the outcome arrived (a failure's retry is never
    /// planned past half of its remaining validity).
    pub held: Option<&'a AccessToken>,
    /// The operator-facing description of a failure (ignored on success).
    pub error: &'a str,
    /// One uniform draw in [0, 1) (the broker's jitter source).
    pub rand: f64,
}

/// What the broker records, publishes and schedules.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The tenant's next state (a DISABLED set meanwhile still stands: the
    /// store and the slot only move renewing states).
    pub state: TenantState,
    /// When the renewal job runs next.
    pub next_due: UnixMs,
    /// Consecutive failures after this outcome (0 after a success).
    pub failures: u32,
    /// The tenant's `last_error` (None after a success).
    pub last_error: Option<String>,
    /// For a throttle, the moment the host accepts requests again (what a
    /// caller is told to wait for, rather than the spread `next_due`).
    pub throttled_until: Option<UnixMs>,
}

/// The outcome rules (see [`Outcome`] for the classes):
/// - success: ACTIVE, renew inside the jitter band, failures reset;
/// - rejected credentials: CREDENTIALS_REJECTED, retried rarely
///   (`rejected_retry_seconds` + up to 10 %);
/// - throttle: RENEWAL_FAILING, spread just after the reset, never before;
/// - malformed answer: RENEWAL_FAILING, backoff capped at 30 s, then at
///   half the held token's remaining validity;
/// - other failures: RENEWAL_FAILING, exponential backoff with full jitter,
///   then capped the same way.
pub fn decide(policy: &RenewalPolicy, input: Input<'_>) -> Decision {
    let Input {
        outcome,
        failures,
        now,
        held,
        error,
        rand,
    } = input;
    let failures = failures.saturating_add(1);
    let failed = |state, next_due, throttled_until| Decision {
        state,
        next_due,
        failures,
        last_error: Some(error.to_owned()),
        throttled_until,
    };
    let before_expiry =
        |backoff: Duration| policy.retry_before_expiry(now.plus(backoff), now, held);
    match outcome {
        Outcome::Success { token } => Decision {
            state: TenantState::Active,
            next_due: policy.renew_at(token, rand),
            failures: 0,
            last_error: None,
            throttled_until: None,
        },
        Outcome::CredentialsRejected => failed(
            TenantState::CredentialsRejected,
            now.plus(policy.rejected_retry(rand)),
            None,
        ),
        Outcome::Throttled { until } => failed(
            TenantState::RenewalFailing,
            policy.after_throttle(until, rand),
            Some(until),
        ),
        Outcome::Malformed => failed(
            TenantState::RenewalFailing,
            before_expiry(policy.backoff_after_malformed(failures, rand)),
            None,
        ),
        Outcome::Failed => failed(
            TenantState::RenewalFailing,
            before_expiry(policy.backoff(failures, rand)),
            None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RefreshConfig;
    use crate::secret::Secret;

    const NOW: UnixMs = UnixMs(1_700_000_000_000);

    fn policy() -> RenewalPolicy {
        RenewalPolicy::from_config(&RefreshConfig::default())
    }

    fn token(issued: UnixMs, lifetime_ms: i64) -> AccessToken {
        AccessToken {
            value: Secret::new("t".into()),
            token_type: "Bearer".into(),
            issued_at: issued,
            expires_at: issued.plus_ms(lifetime_ms),
        }
    }

    fn input(outcome: Outcome<'_>, failures: u32) -> Input<'_> {
        Input {
            outcome,
            failures,
            now: NOW,
            held: None,
            error: "boom",
            rand: 0.5,
        }
    }

    #[test]
    fn a_success_renews_in_the_band_and_resets_the_failures() {
        let t = token(NOW, 3_600_000);
        let d = decide(&policy(), input(Outcome::Success { token: &t }, 7));
        assert_eq!(d.state, TenantState::Active);
        assert_eq!(d.failures, 0);
        assert_eq!(d.last_error, None);
        assert_eq!(d.throttled_until, None);
        assert_eq!(d.next_due, policy().renew_at(&t, 0.5));
        assert_eq!(d.next_due, NOW.plus_ms(2_880_000)); // 80 % of an hour
    }

    #[test]
    fn rejected_credentials_retry_rarely() {
        let d = decide(&policy(), input(Outcome::CredentialsRejected, 0));
        assert_eq!(d.state, TenantState::CredentialsRejected);
        assert_eq!(d.failures, 1);
        assert_eq!(d.last_error.as_deref(), Some("boom"));
        // 900 s + 5 % of it for the draw 0.5.
        assert_eq!(d.next_due, NOW.plus_ms(945_000));
    }

    #[test]
    fn a_throttle_waits_for_the_reset_and_reports_it() {
        let until = NOW.plus_ms(30_000);
        let d = decide(&policy(), input(Outcome::Throttled { until }, 2));
        assert_eq!(d.state, TenantState::RenewalFailing);
        assert_eq!(d.failures, 3);
        assert_eq!(d.throttled_until, Some(until));
        assert_eq!(d.next_due, policy().after_throttle(until, 0.5));
        assert!(d.next_due >= until);
    }

    #[test]
    fn a_failure_backs_off_by_the_count_and_is_capped_by_the_held_token() {
        let p = policy();
        // Third failure in a row: up to 4 s, draw 0.5 -> 2 s.
        let d = decide(&p, input(Outcome::Failed, 2));
        assert_eq!((d.state, d.failures), (TenantState::RenewalFailing, 3));
        assert_eq!(d.next_due, NOW.plus_ms(2_000));
        // With 1 s of validity left the retry comes within 500 ms.
        let held = token(NOW.plus_ms(-3_599_000), 3_600_000);
        let d = decide(
            &p,
            Input {
                held: Some(&held),
                ..input(Outcome::Failed, 2)
            },
        );
        assert_eq!(d.next_due, NOW.plus_ms(500));
    }

    #[test]
    fn a_malformed_answer_backs_off_at_most_30_s() {
        let d = decide(
            &policy(),
            Input {
                rand: 0.999_999,
                ..input(Outcome::Malformed, 30)
            },
        );
        assert_eq!(d.state, TenantState::RenewalFailing);
        assert!(d.next_due <= NOW.plus_ms(30_000), "{:?}", d.next_due);
        assert!(d.next_due >= NOW.plus_ms(29_000), "{:?}", d.next_due);
        let plain = decide(
            &policy(),
            Input {
                rand: 0.999_999,
                ..input(Outcome::Failed, 30)
            },
        );
        assert!(plain.next_due > d.next_due);
    }

    #[test]
    fn the_failure_count_saturates() {
        let d = decide(&policy(), input(Outcome::Failed, u32::MAX));
        assert_eq!(d.failures, u32::MAX);
    }
}
