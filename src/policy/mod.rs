//! Renewal arithmetic, pure and clock-free: when to renew a token, how long
//! to back off after a failure. Randomness comes in as a number in [0, 1) so
//! every rule is testable exactly.
//!
//! Its own module below the broker (shared vocabulary), because both the
//! broker (which records an outcome and the next due time) and the renewal
//! scheduler use it; `renewal::policy` re-exports it.

use std::time::Duration;

use crate::clock::UnixMs;
use crate::config::RefreshConfig;
use crate::domain::AccessToken;

pub mod outcome;

/// Never plan a renewal closer than this to the token's expiry.
const MIN_HEADROOM_MS: i64 = 500;
/// A backoff delay is never shorter than this, so full jitter can't spin.
const MIN_BACKOFF_MS: u64 = 100;
/// After a malformed answer the backoff grows to at most this, not to
/// `backoff_max`: the PBX is up and answering, and a garbled answer is
/// usually one bad answer (a proxy's error page, a cut-off body), so the
/// next try is likely to work. The per-host limiter still bounds the rate.
/// (The full-size simulation saw retries drawn at the 300 s cap during
/// periods of 40 % garbled answers land 37 s before the token expired.)
pub const MALFORMED_BACKOFF_MAX_MS: u64 = 30_000;

#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    pub at_fraction: f64,
    pub jitter_fraction: f64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub rejected_retry_ms: u64,
}

impl RenewalPolicy {
    pub fn from_config(c: &RefreshConfig) -> Self {
        Self {
            at_fraction: c.at_fraction,
            jitter_fraction: c.jitter_fraction,
            backoff_initial_ms: c.backoff_initial_ms,
            backoff_max_ms: c.backoff_max_ms,
            rejected_retry_ms: c.rejected_retry_seconds.saturating_mul(1000),
        }
    }

    /// `issued_at + lifetime * (at_fraction ± jitter_fraction)`, with `rand`
    /// in [0, 1) choosing the point in the jitter band. Always strictly before
    /// expiry (validated config keeps at + jitter < 1), and after issue.
    pub fn renew_at(&self, token: &AccessToken, rand: f64) -> UnixMs {
        let lifetime = token.lifetime_ms().max(0) as f64;
        let rand = rand.clamp(0.0, 1.0);
        let fraction = self.at_fraction + self.jitter_fraction * (2.0 * rand - 1.0);
        let offset = (lifetime * fraction.clamp(0.0, 1.0)) as i64;
        let latest = token.expires_at.0 - MIN_HEADROOM_MS.min(token.lifetime_ms() / 10);
        UnixMs(
            (token.issued_at.0 + offset)
                .min(latest)
                .max(token.issued_at.0),
        )
    }

    /// Before this moment a renewal is premature: someone (an on-demand
    /// fetch) already renewed. The low edge of the jitter band.
    pub fn earliest_renewal(&self, token: &AccessToken) -> UnixMs {
        self.renew_at(token, 0.0)
    }

    /// Exponential backoff with full jitter: a uniform delay in
    /// [MIN, min(max, initial * 2^(failures-1))]. Full jitter spreads the
    /// retries of many tenants that failed together (AWS architecture blog,
    /// "Exponential Backoff And Jitter").
    pub fn backoff(&self, failures: u32, rand: f64) -> Duration {
        self.backoff_up_to(self.backoff_max_ms, failures, rand)
    }

    /// [`Self::backoff`] after a malformed answer: the same growth, capped
    /// at [`MALFORMED_BACKOFF_MAX_MS`] (or `backoff_max`, if lower).
    pub fn backoff_after_malformed(&self, failures: u32, rand: f64) -> Duration {
        self.backoff_up_to(
            self.backoff_max_ms.min(MALFORMED_BACKOFF_MAX_MS),
            failures,
            rand,
        )
    }

    fn backoff_up_to(&self, max_ms: u64, failures: u32, rand: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(40);
        let cap = self
            .backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(max_ms)
            .max(MIN_BACKOFF_MS);
        let delay = (cap as f64 * rand.clamp(0.0, 1.0)) as u64;
        Duration::from_millis(delay.max(MIN_BACKOFF_MS))
    }

    /// A failed renewal's retry time, brought forward so a still-valid held
    /// token is never waited out: at most half of its remaining validity
    /// away (and never sooner than the minimum backoff). Retries thus close
    /// in on the expiry instead of sleeping past it; without a valid held
    /// token the plain backoff stands. (The full-size simulation found
    /// tenants whose backoff, drawn during a period of malformed answers,
    /// outlasted their token.)
    pub fn retry_before_expiry(
        &self,
        retry_at: UnixMs,
        now: UnixMs,
        held: Option<&AccessToken>,
    ) -> UnixMs {
        let Some(token) = held.filter(|t| t.expires_at > now) else {
            return retry_at;
        };
        let half_left = (token.expires_at.0 - now.0) / 2;
        let latest = now.plus_ms(half_left.max(MIN_BACKOFF_MS as i64));
        retry_at.min(latest)
    }

    /// After the PBX rejected the credentials: retry rarely, slightly jittered
    /// (up to +10 %) so rejected tenants don't retry in lockstep.
    pub fn rejected_retry(&self, rand: f64) -> Duration {
        let base = self.rejected_retry_ms;
        Duration::from_millis(base + (base as f64 * 0.1 * rand.clamp(0.0, 1.0)) as u64)
    }

    /// After a 429: not before the throttle ends, then spread over a short
    /// window so every tenant of the host doesn't retry in the same instant.
    pub fn after_throttle(&self, throttle_ends: UnixMs, rand: f64) -> UnixMs {
        throttle_ends.plus_ms((self.backoff_initial_ms as f64 * 2.0 * rand.clamp(0.0, 1.0)) as i64)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn policy() -> RenewalPolicy {
        RenewalPolicy::from_config(&RefreshConfig::default())
    }

    fn token(issued: i64, lifetime_ms: i64) -> AccessToken {
        AccessToken {
            value: Secret::new("t".into()),
            token_type: "Bearer".into(),
            issued_at: UnixMs(issued),
            expires_at: UnixMs(issued + lifetime_ms),
        }
    }

    #[test]
    fn renews_within_band_and_before_expiry() {
        let p = policy();
        let t = token(1_000_000, 3_600_000);
        for i in 0..=100 {
            let r = p.renew_at(&t, i as f64 / 100.0);
            assert!(r.0 >= 1_000_000 + (3_600_000.0 * 0.75) as i64, "{r:?}");
            assert!(r.0 <= 1_000_000 + (3_600_000.0 * 0.85) as i64, "{r:?}");
            assert!(r < t.expires_at);
        }
    }

    #[test]
    fn renewal_before_expiry_even_for_tiny_lifetimes() {
        let p = policy();
        for lifetime in [1, 10, 100, 1000, 3000] {
            let t = token(0, lifetime);
            for rand in [0.0, 0.5, 0.999] {
                let r = p.renew_at(&t, rand);
                assert!(r < t.expires_at || lifetime <= 1, "{lifetime} {rand} {r:?}");
                assert!(r >= t.issued_at);
            }
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(1000));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(2000));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(4000));
        assert_eq!(p.backoff(40, 1.0), Duration::from_millis(300_000));
        assert_eq!(p.backoff(u32::MAX, 1.0), Duration::from_millis(300_000));
        assert_eq!(p.backoff(5, 0.0), Duration::from_millis(MIN_BACKOFF_MS));
        for f in 0..50 {
            for r in [0.0, 0.3, 0.99] {
                let d = p.backoff(f, r);
                assert!(d >= Duration::from_millis(MIN_BACKOFF_MS));
                assert!(d <= Duration::from_millis(300_000));
            }
        }
    }

    #[test]
    fn backoff_after_a_malformed_answer_stops_growing_at_30_s() {
        let p = policy();
        for (failures, rand, ms) in [
            (1, 1.0, 1000),
            (5, 1.0, 16_000),
            (6, 1.0, 30_000),
            (40, 1.0, 30_000),
            (40, 0.5, 15_000),
            (5, 0.0, MIN_BACKOFF_MS),
        ] {
            assert_eq!(
                p.backoff_after_malformed(failures, rand),
                Duration::from_millis(ms),
                "{failures} failures, draw {rand}"
            );
        }
    }

    #[test]
    fn rejected_retry_is_rare() {
        let p = policy();
        assert_eq!(p.rejected_retry(0.0), Duration::from_secs(900));
        assert!(p.rejected_retry(0.99) <= Duration::from_secs(990));
    }

    #[test]
    fn throttle_retry_not_before_reset() {
        let p = policy();
        for r in [0.0, 0.5, 0.99] {
            assert!(p.after_throttle(UnixMs(5000), r) >= UnixMs(5000));
        }
    }
}
