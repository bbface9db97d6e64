//! Can a PBX host's rate limit carry its tenants' renewals? With one-hour
//! tokens renewed at 80 % of their life, 20 requests/s carry about 52,800
//! tenants per host; past that, not every token can be kept warm (see
//! `demand.rs` for what the scheduler does then). This module does the
//! arithmetic (shared with `demand.rs`) and words the warning.

use crate::store::HostLoad;

/// Renewal demand beyond this share of the host's rate limit is flagged:
/// on-demand fetches and retries need headroom too.
const WARN_SHARE: f64 = 0.9;

/// Proactive renewals per second that `renewing` tenants need: each is
/// renewed once per `at_fraction` of its token's lifetime (the average of
/// the `with_token` held tokens, whose lifetimes sum to `lifetime_ms_sum`;
/// `default_lifetime_secs` when none is held).
pub fn renewals_per_second(
    renewing: u64,
    with_token: u64,
    lifetime_ms_sum: i64,
    default_lifetime_secs: u64,
    at_fraction: f64,
) -> f64 {
    let avg_lifetime_s = if with_token > 0 && lifetime_ms_sum > 0 {
        lifetime_ms_sum as f64 / 1000.0 / with_token as f64
    } else {
        default_lifetime_secs as f64
    };
    let interval_s = (avg_lifetime_s * at_fraction).max(1.0);
    renewing as f64 / interval_s
}

/// The token requests per second a host's limiter sustains: its window is
/// a little longer than a second (see `pbx::limiter::WINDOW_GUARD_MS`), so
/// a little less than `per_host_rps`.
pub fn budget_per_second(per_host_rps: u32) -> f64 {
    f64::from(per_host_rps) * 1000.0 / (1000 + crate::pbx::limiter::WINDOW_GUARD_MS) as f64
}

/// One warning per overloaded host.
pub fn warnings(
    loads: &[HostLoad],
    default_lifetime_secs: u64,
    at_fraction: f64,
    per_host_rps: u32,
) -> Vec<String> {
    let mut out = Vec::new();
    for load in loads {
        if load.renewing_tenants == 0 {
            continue;
        }
        let needed_per_s = renewals_per_second(
            load.renewing_tenants,
            load.tenants_with_token,
            load.lifetime_ms_sum,
            default_lifetime_secs,
            at_fraction,
        );
        let capacity = budget_per_second(per_host_rps);
        if needed_per_s > capacity * WARN_SHARE {
            out.push(format!(
                "PBX host {}: {} tenants need about {:.1} renewals/s ({:.0}/h) but limits.per_host_requests_per_second = {} ({:.0}/h); renewals cannot keep every token warm: busy tenants (asked for within refresh.idle_after_seconds) are renewed ahead of expiry, idle ones on their next GetToken. Raise the limit if the provider allows it, or spread these tenants over more hosts.",
                load.host,
                load.renewing_tenants,
                needed_per_s,
                needed_per_s * 3600.0,
                per_host_rps,
                f64::from(per_host_rps) * 3600.0,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(tenants: u64) -> HostLoad {
        HostLoad {
            host: "pbx.example.com".into(),
            renewing_tenants: tenants,
            lifetime_ms_sum: tenants as i64 * 3_600_000,
            tenants_with_token: tenants,
        }
    }

    #[test]
    fn within_capacity_says_nothing() {
        assert!(warnings(&[load(40_000)], 3300, 0.8, 20).is_empty());
    }

    #[test]
    fn over_capacity_names_host_and_numbers() {
        let w = warnings(&[load(80_000)], 3300, 0.8, 20);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("pbx.example.com"), "{}", w[0]);
        assert!(w[0].contains("80000 tenants"), "{}", w[0]);
        assert!(
            w[0].contains("per_host_requests_per_second = 20"),
            "{}",
            w[0]
        );
    }

    #[test]
    fn uses_default_lifetime_without_tokens() {
        let l = HostLoad {
            host: "h".into(),
            renewing_tenants: 60_000,
            lifetime_ms_sum: 0,
            tenants_with_token: 0,
        };
        assert_eq!(warnings(&[l], 3300, 0.8, 20).len(), 1);
    }
}
