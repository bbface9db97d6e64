//! After a run: renewal timing from the PBX's ledger of issued tokens.
//!
//! Between two consecutive tokens of one tenant, when nothing disturbed the
//! tenant (no disruption on its host, no restart, no revocation), the gap
//! must lie within 10 % of the policy's band, `lifetime x (at_fraction ±
//! jitter_fraction)`: shorter is a duplicate renewal, longer a missed one.
//! One exception: a gap past the band whose token came from a retry (the
//! PBX failed one of the tenant's requests in between, e.g. during a
//! garbled-answer period, which is not a host disruption) was not missed
//! but held up by the PBX; such gaps are counted and reported, not flagged.
//! The expiry checker still holds them to the hard rule (a valid token
//! whenever one is owed). The mean of the other gaps must be within 10 % of
//! `lifetime x at_fraction`, i.e. renewals per lifetime within 10 % of `1 /
//! at_fraction`. Tenants whose credentials were revoked must not have been
//! retried more often than the rare retry interval allows.

use super::pbx::Ledger;
use super::plan::{Plan, T0};
use super::record::Recorder;
use super::world::World;
use crate::clock::UnixMs;
use crate::config::Config;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Timing {
    /// Undisturbed gaps between consecutive tokens of one tenant.
    pub gaps: u64,
    /// Mean, min and max gap divided by `lifetime x at_fraction`.
    pub mean_ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
    /// Tokens issued, over tenant-lifetimes simulated (all tenants).
    pub renewals_per_lifetime: f64,
    pub revoked_tenants_checked: u64,
    pub max_rejected_requests: u32,
    /// Gaps past the band whose token came from a retry after a failed
    /// answer, and the longest of them (x `lifetime x at_fraction`).
    pub late_after_failure: u64,
    pub late_after_failure_max_ratio: f64,
    /// Where the largest undisturbed gap lies, to look at it in the plan
    /// (`--show-plan --verbose`).
    pub max_gap: Option<GapAt>,
    /// The largest undisturbed gap whose token came at the first attempt
    /// (x `lifetime x at_fraction`): the scheduler's own punctuality, without
    /// retries after failed answers (which `max_ratio` includes when they
    /// land inside the band).
    pub max_first_try_ratio: f64,
    /// Where that gap lies (the same as `max_gap` when the largest gap came
    /// at the first attempt).
    pub max_first_try_gap: Option<GapAt>,
}

/// One gap between two consecutive tokens of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct GapAt {
    pub tenant: String,
    pub host: usize,
    /// When the two tokens were issued.
    pub from: UnixMs,
    pub to: UnixMs,
    /// The PBX failed one of the tenant's requests in between.
    pub after_failure: bool,
}

impl std::fmt::Display for GapAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (host {}) renewed {:.1} s after its previous token, issued at {:.1} s (plan time), {}",
            self.tenant,
            self.host,
            (self.to.0 - self.from.0) as f64 / 1000.0,
            (self.from.0 - T0.0) as f64 / 1000.0,
            if self.after_failure {
                "after a failed answer"
            } else {
                "at the first attempt"
            }
        )
    }
}

pub fn renewal_timing(
    plan: &Plan,
    world: &World,
    ledgers: &[Ledger],
    config: &Config,
    hours: f64,
    rec: &Recorder,
) -> Timing {
    let lifetime_ms = world.lifetime_secs as f64 * 1000.0;
    let at = config.refresh.at_fraction;
    let jitter = config.refresh.jitter_fraction;
    let nominal = lifetime_ms * at;
    let lo = 0.9 * (at - jitter) * lifetime_ms;
    let hi = 1.1 * (at + jitter) * lifetime_ms;
    let mut t = Timing {
        min_ratio: f64::INFINITY,
        ..Timing::default()
    };
    let mut sum = 0.0;
    let mut issued_total = 0u64;
    for (tenant, ledger) in ledgers.iter().enumerate() {
        let host = world.host_of(tenant);
        // The first entry is the token the tenant started with.
        issued_total += ledger.issued.len().saturating_sub(1) as u64;
        for pair in ledger.issued.windows(2) {
            let (a, b) = (pair[0].at, pair[1].at);
            if plan.disturbed(tenant, host, a, b) {
                continue;
            }
            let gap = (b.0 - a.0) as f64;
            if gap > hi && pair[1].after_failure {
                t.late_after_failure += 1;
                t.late_after_failure_max_ratio = t.late_after_failure_max_ratio.max(gap / nominal);
                continue;
            }
            t.gaps += 1;
            sum += gap;
            t.min_ratio = t.min_ratio.min(gap / nominal);
            let at = || GapAt {
                tenant: world.tenant_ids[tenant].clone(),
                host,
                from: a,
                to: b,
                after_failure: pair[1].after_failure,
            };
            if gap / nominal > t.max_ratio {
                t.max_ratio = gap / nominal;
                t.max_gap = Some(at());
            }
            if !pair[1].after_failure && gap / nominal > t.max_first_try_ratio {
                t.max_first_try_ratio = gap / nominal;
                t.max_first_try_gap = Some(at());
            }
            if gap < lo || gap > hi {
                rec.violation(
                    b,
                    "renewal-interval",
                    format!(
                        "{} renewed {:.1} s after its previous token; the undisturbed band is {:.1}..{:.1} s",
                        world.tenant_ids[tenant],
                        gap / 1000.0,
                        lo / 1000.0,
                        hi / 1000.0
                    ),
                );
            }
        }
        if let Some(i) = plan.revoked[tenant] {
            let r = plan.revocations[i];
            let until = r.restore.unwrap_or(plan.end).min(plan.end);
            let shaken = plan.by_host[host]
                .iter()
                .any(|&f| plan.faults[f].disrupts && plan.faults[f].window.overlaps(r.at, until))
                || plan.restarts.iter().any(|x| x.window.overlaps(r.at, until));
            if !shaken && until > r.at {
                t.revoked_tenants_checked += 1;
                t.max_rejected_requests = t.max_rejected_requests.max(ledger.requests_revoked);
                let retry_ms = config.refresh.rejected_retry_seconds as f64 * 1000.0;
                let allowed = ((until.0 - r.at.0) as f64 / retry_ms).ceil() as u32 + 2;
                if ledger.requests_revoked > allowed {
                    rec.violation(
                        r.at,
                        "rejected-retries",
                        format!(
                            "{} was tried {} times while its credentials were rejected ({} allowed)",
                            world.tenant_ids[tenant], ledger.requests_revoked, allowed
                        ),
                    );
                }
            }
        }
    }
    if t.gaps > 0 {
        t.mean_ratio = sum / t.gaps as f64 / nominal;
        if !(0.9..=1.1).contains(&t.mean_ratio) {
            rec.violation(
                plan.end,
                "renewal-rate",
                format!(
                    "mean undisturbed renewal gap is {:.3} x lifetime x at_fraction (allowed 0.9..1.1)",
                    t.mean_ratio
                ),
            );
        }
    } else {
        t.min_ratio = 0.0;
    }
    let tenant_lifetimes = ledgers.len() as f64 * hours * 3_600_000.0 / lifetime_ms;
    if tenant_lifetimes > 0.0 {
        t.renewals_per_lifetime = issued_total as f64 / tenant_lifetimes;
    }
    t
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::simulation::pbx::Issued;
    use crate::simulation::plan::T0;
    use crate::simulation::SimSpec;

    /// A ledger whose second token came `gap_s` after the first.
    fn ledger(gap_s: i64, after_failure: bool) -> Ledger {
        let issued = |at: crate::clock::UnixMs, after_failure| Issued {
            at,
            expires: at.plus_ms(3_600_000),
            after_failure,
        };
        let mut l = Ledger::default();
        l.issued = vec![
            issued(T0, false),
            issued(T0.plus_ms(gap_s * 1000), after_failure),
        ];
        l
    }

    #[test]
    fn a_late_renewal_is_excused_only_when_the_pbx_failed_a_request() {
        let spec = SimSpec {
            tenants: 4,
            hosts: 1,
            faults: false,
            ..SimSpec::small()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let world = World::new(spec.tenants, spec.hosts, 3600, &mut rng);
        let plan = Plan::draw(&spec, &mut rng);
        // The band for 3,600 s tokens at 0.8 ± 0.05: 2,430..3,366 s.
        let ledgers = vec![
            ledger(2_880, false),
            ledger(3_400, true),
            ledger(3_400, false),
            ledger(2_000, true),
        ];
        let rec = Recorder::default();
        let t = renewal_timing(&plan, &world, &ledgers, &spec.config, spec.hours, &rec);
        let (kept, counts) = rec.violations();
        // Missed (late with nothing failing) and duplicate (early, failed
        // answer or not) are flagged; late after a failed answer is counted.
        assert_eq!(counts.get("renewal-interval"), Some(&2), "{kept:?}");
        assert!(kept
            .iter()
            .any(|v| v.detail.starts_with("t000002 renewed 3400.0 s")));
        assert!(kept
            .iter()
            .any(|v| v.detail.starts_with("t000003 renewed 2000.0 s")));
        assert_eq!(t.late_after_failure, 1);
        assert!((t.late_after_failure_max_ratio - 3_400.0 / 2_880.0).abs() < 1e-9);
        assert_eq!(t.gaps, 3);
        // The largest counted gap is t000002's missed renewal, found again.
        let at = t.max_gap.clone().expect("a largest gap");
        assert_eq!(
            (at.tenant.as_str(), at.from, at.to),
            ("t000002", T0, T0.plus_ms(3_400_000))
        );
        assert!(!at.after_failure);
        assert!(at
            .to_string()
            .starts_with("t000002 (host 0) renewed 3400.0 s"));
        assert!((t.max_first_try_ratio - 3_400.0 / 2_880.0).abs() < 1e-9);
        assert_eq!(t.max_first_try_gap, t.max_gap);
    }

    #[test]
    fn the_largest_gap_at_the_first_attempt_is_located_apart_from_retries() {
        let spec = SimSpec {
            tenants: 3,
            hosts: 1,
            faults: false,
            ..SimSpec::small()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let world = World::new(spec.tenants, spec.hosts, 3600, &mut rng);
        let plan = Plan::draw(&spec, &mut rng);
        // All inside the band (2,430..3,366 s); the largest is a retry.
        let ledgers = vec![
            ledger(2_880, false),
            ledger(3_300, true),
            ledger(3_000, false),
        ];
        let rec = Recorder::default();
        let t = renewal_timing(&plan, &world, &ledgers, &spec.config, spec.hours, &rec);
        assert!(rec.violations().0.is_empty());
        let largest = t.max_gap.expect("a largest gap");
        assert_eq!(
            (largest.tenant.as_str(), largest.after_failure),
            ("t000001", true)
        );
        let first_try = t.max_first_try_gap.expect("a largest first-attempt gap");
        assert_eq!(
            (first_try.tenant.as_str(), first_try.to),
            ("t000002", T0.plus_ms(3_000_000))
        );
        assert!((t.max_first_try_ratio - 3_000.0 / 2_880.0).abs() < 1e-9);
    }
}
