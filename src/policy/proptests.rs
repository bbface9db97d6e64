//! Property tests of the renewal arithmetic over every valid configuration
//! (`validate()` ranges) and any random input, including NaN and infinity:
//! a renewal is planned after issue and before expiry, inside the jitter
//! band unless the headroom clips it; backoff stays within its bounds;
//! jitter stays within its range; and the outcome rules (`outcome::decide`)
//! keep their promises for every class of outcome.

use proptest::prelude::*;

use super::*;
use crate::secret::Secret;

/// Policies `Config::validate` accepts.
fn policies() -> impl Strategy<Value = RenewalPolicy> {
    (
        0.1f64..=0.95,
        0.0f64..=0.5,
        10u64..=3_600_000,
        1u64..=86_400,
    )
        .prop_filter("at + jitter < 1", |(at, j, _, _)| at + j < 1.0)
        .prop_flat_map(|(at, j, initial, rejected_s)| {
            (initial..=86_400_000u64).prop_map(move |max| RenewalPolicy {
                at_fraction: at,
                jitter_fraction: j,
                backoff_initial_ms: initial,
                backoff_max_ms: max,
                rejected_retry_ms: rejected_s * 1000,
            })
        })
}

/// Any f64 at all, or (more often) one in [0, 1].
fn rands() -> impl Strategy<Value = f64> {
    prop_oneof![3 => 0.0f64..1.0, 1 => proptest::num::f64::ANY]
}

fn token(issued: i64, lifetime_ms: i64) -> AccessToken {
    AccessToken {
        value: Secret::new("t".into()),
        token_type: "Bearer".into(),
        issued_at: UnixMs(issued),
        expires_at: UnixMs(issued + lifetime_ms),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn renewal_is_after_issue_and_before_expiry(
        p in policies(),
        issued in 0i64..4_000_000_000_000,
        lifetime in 1i64..=31 * 86_400_000,
        rand in rands(),
    ) {
        let t = token(issued, lifetime);
        let r = p.renew_at(&t, rand);
        prop_assert!(r >= t.issued_at, "{r:?} before issue {:?}", t.issued_at);
        prop_assert!(r < t.expires_at, "{r:?} not before expiry {:?}", t.expires_at);
        // Never closer to expiry than the headroom (500 ms, or a tenth of a
        // short lifetime).
        prop_assert!(t.expires_at.0 - r.0 >= (lifetime / 10).min(500));
    }

    #[test]
    fn a_failed_renewal_retries_before_the_held_token_is_half_gone(
        p in policies(),
        failures in 1u32..60,
        rand in rands(),
        now in 0i64..4_000_000_000_000,
        issued_ago in 0i64..=31 * 86_400_000,
        lifetime in 1i64..=31 * 86_400_000,
    ) {
        let t = token(now - issued_ago, lifetime);
        let plain = now_plus(now, p.backoff(failures, rand));
        let r = p.retry_before_expiry(plain, UnixMs(now), Some(&t));
        // Never later than the plain backoff, never in the past.
        prop_assert!(r <= plain && r > UnixMs(now));
        if t.expires_at.0 > now {
            let left = t.expires_at.0 - now;
            prop_assert!(r.0 - now <= (left / 2).max(100), "{} ms of {left} ms left", r.0 - now);
        } else {
            // An expired token changes nothing.
            prop_assert_eq!(r, plain);
        }
    }

    #[test]
    fn renewal_is_inside_the_jitter_band(
        p in policies(),
        issued in 0i64..4_000_000_000_000,
        lifetime in 10_000i64..=31 * 86_400_000,
        rand in 0.0f64..=1.0,
    ) {
        let t = token(issued, lifetime);
        let r = p.renew_at(&t, rand);
        let lo = issued + (lifetime as f64 * (p.at_fraction - p.jitter_fraction)).floor() as i64;
        let hi = issued + (lifetime as f64 * (p.at_fraction + p.jitter_fraction)).ceil() as i64;
        prop_assert!(r.0 >= lo.min(t.expires_at.0 - 500), "{} < {lo}", r.0);
        prop_assert!(r.0 <= hi, "{} > {hi}", r.0);
        // The earliest renewal is the low edge of the same band.
        prop_assert!(p.earliest_renewal(&t) <= r);
    }

    #[test]
    fn renewal_moves_with_the_random_draw(
        p in policies(),
        lifetime in 1i64..=31 * 86_400_000,
        a in 0.0f64..=1.0,
        b in 0.0f64..=1.0,
    ) {
        let t = token(1_700_000_000_000, lifetime);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        prop_assert!(p.renew_at(&t, lo) <= p.renew_at(&t, hi));
    }

    #[test]
    fn backoff_is_within_its_bounds(
        p in policies(),
        failures in any::<u32>(),
        rand in rands(),
    ) {
        let d = p.backoff(failures, rand).as_millis() as u64;
        let exp = failures.saturating_sub(1).min(40);
        let cap = p.backoff_initial_ms.saturating_mul(1u64 << exp).min(p.backoff_max_ms);
        prop_assert!(d >= MIN_BACKOFF_MS, "{d} below the floor");
        prop_assert!(d <= cap.max(MIN_BACKOFF_MS), "{d} above the cap {cap}");
        prop_assert!(d <= p.backoff_max_ms.max(MIN_BACKOFF_MS));
    }

    #[test]
    fn backoff_after_a_malformed_answer_is_the_same_draw_capped_lower(
        p in policies(),
        failures in any::<u32>(),
        rand in rands(),
    ) {
        let d = p.backoff_after_malformed(failures, rand).as_millis() as u64;
        prop_assert!(d >= MIN_BACKOFF_MS, "{d} below the floor");
        prop_assert!(d <= MALFORMED_BACKOFF_MAX_MS.max(MIN_BACKOFF_MS), "{d} above 30 s");
        prop_assert!(d <= p.backoff(failures, rand).as_millis() as u64);
    }

    #[test]
    fn backoff_cap_never_shrinks(p in policies(), failures in 0u32..100) {
        prop_assert!(p.backoff(failures, 1.0) <= p.backoff(failures + 1, 1.0));
    }

    #[test]
    fn rejected_retry_jitter_is_within_ten_percent(p in policies(), rand in rands()) {
        let d = p.rejected_retry(rand).as_millis() as u64;
        prop_assert!(d >= p.rejected_retry_ms);
        prop_assert!(d <= p.rejected_retry_ms + p.rejected_retry_ms / 10);
    }

    #[test]
    fn throttle_retry_is_after_the_reset_within_the_spread(
        p in policies(),
        ends in 0i64..4_000_000_000_000,
        rand in rands(),
    ) {
        let at = p.after_throttle(UnixMs(ends), rand);
        prop_assert!(at.0 >= ends);
        prop_assert!(at.0 <= ends + 2 * p.backoff_initial_ms as i64);
    }

    #[test]
    fn seeded_jitter_is_in_range(seed in any::<u64>()) {
        let j = crate::broker::Jitter::seeded(seed);
        for _ in 0..100 {
            let x = j.next();
            prop_assert!((0.0..1.0).contains(&x));
        }
    }
}

/// The outcome rules (`outcome::decide`) over every valid policy.
mod outcome_rules {
    use super::*;
    use crate::domain::TenantState;
    use outcome::{decide, Input, Outcome};

    fn input<'a>(
        outcome: Outcome<'a>,
        failures: u32,
        now: i64,
        held: Option<&'a AccessToken>,
        rand: f64,
    ) -> Input<'a> {
        Input {
            outcome,
            failures,
            now: UnixMs(now),
            held,
            error: "e",
            rand,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn a_failure_is_never_retried_after_the_held_token_expires(
            p in policies(),
            failures in 0u32..60,
            rand in rands(),
            now in 0i64..4_000_000_000_000,
            left in 1i64..=31 * 86_400_000,
            kind in 0usize..2,
        ) {
            let held = token(now - 1_000, left + 1_000);
            let class = [Outcome::Failed, Outcome::Malformed][kind];
            let d = decide(&p, input(class, failures, now, Some(&held), rand));
            prop_assert!(d.next_due > UnixMs(now));
            // Within half the remaining validity (or the 100 ms floor).
            prop_assert!(d.next_due.0 - now <= (left / 2).max(100), "{:?} with {left} ms left", d.next_due);
            prop_assert!(left <= 200 || d.next_due < held.expires_at);
        }

        #[test]
        fn a_throttle_is_never_retried_before_its_reset(
            p in policies(),
            failures in 0u32..60,
            rand in rands(),
            now in 0i64..4_000_000_000_000,
            until in -60_000i64..=86_400_000,
            held_left in proptest::option::of(1i64..=3_600_000),
        ) {
            let until = UnixMs(now + until);
            let held = held_left.map(|l| token(now + l - 3_600_000, 3_600_000));
            let d = decide(&p, input(Outcome::Throttled { until }, failures, now, held.as_ref(), rand));
            prop_assert!(d.next_due >= until);
            prop_assert_eq!(d.throttled_until, Some(until));
            prop_assert_eq!(d.state, TenantState::RenewalFailing);
        }

        #[test]
        fn rejected_credentials_wait_at_least_the_rejected_retry(
            p in policies(),
            failures in 0u32..60,
            rand in rands(),
            now in 0i64..4_000_000_000_000,
            held_left in proptest::option::of(1i64..=3_600_000),
        ) {
            let held = held_left.map(|l| token(now + l - 3_600_000, 3_600_000));
            let d = decide(&p, input(Outcome::CredentialsRejected, failures, now, held.as_ref(), rand));
            prop_assert_eq!(d.state, TenantState::CredentialsRejected);
            prop_assert!(d.next_due.0 - now >= p.rejected_retry_ms as i64);
            prop_assert!(d.next_due.0 - now <= (p.rejected_retry_ms + p.rejected_retry_ms / 10) as i64);
        }

        #[test]
        fn a_success_plans_the_renewal_inside_the_jitter_band(
            p in policies(),
            failures in any::<u32>(),
            issued in 0i64..4_000_000_000_000,
            lifetime in 10_000i64..=31 * 86_400_000,
            rand in 0.0f64..=1.0,
        ) {
            let t = token(issued, lifetime);
            let d = decide(&p, input(Outcome::Success { token: &t }, failures, issued, None, rand));
            let lo = issued + (lifetime as f64 * (p.at_fraction - p.jitter_fraction)).floor() as i64;
            let hi = issued + (lifetime as f64 * (p.at_fraction + p.jitter_fraction)).ceil() as i64;
            prop_assert!(d.next_due.0 >= lo.min(t.expires_at.0 - 500) && d.next_due.0 <= hi);
            prop_assert!(d.next_due < t.expires_at);
            prop_assert_eq!(d.state, TenantState::Active);
            prop_assert_eq!(d.last_error, None);
        }

        #[test]
        fn failures_count_up_by_one_and_a_success_resets_them(
            p in policies(),
            failures in 0u32..u32::MAX,
            rand in rands(),
            now in 0i64..4_000_000_000_000,
            kind in 0usize..4,
            until in -60_000i64..=86_400_000,
        ) {
            let class = [
                Outcome::Failed,
                Outcome::Malformed,
                Outcome::CredentialsRejected,
                Outcome::Throttled { until: UnixMs(now + until) },
            ][kind];
            let d = decide(&p, input(class, failures, now, None, rand));
            prop_assert_eq!(d.failures, failures + 1);
            prop_assert_eq!(d.last_error.as_deref(), Some("e"));
            let t = token(now, 3_600_000);
            let d = decide(&p, input(Outcome::Success { token: &t }, failures, now, None, rand));
            prop_assert_eq!(d.failures, 0);
        }
    }
}

fn now_plus(now: i64, d: std::time::Duration) -> UnixMs {
    UnixMs(now + d.as_millis() as i64)
}
