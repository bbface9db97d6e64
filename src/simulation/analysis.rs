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
//!
//! Also, on request, one host's timeline ([`host_timeline`]): tokens issued
//! and tenants waiting per step, to tell a renewal that waited in the host's
//! queue from one that was started late.

use super::plan::{Plan, T0};
use super::provider_model::Ledger;
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

/// What to watch on one host after a run (`pbx-simulate --watch-host`): a
/// timeline of its renewals, to see whether a late renewal waited in a
/// queue (many tenants due, few tokens per second) or was started late.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    pub host: usize,
    /// Plan time in seconds (0 is the start of the run).
    pub from_s: f64,
    pub to_s: f64,
    pub step_s: f64,
}

/// One step of a host's timeline, read from the PBX's ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRow {
    /// Start of the step, plan time in seconds.
    pub at_s: f64,
    /// Tokens the host issued during the step.
    pub issued: u32,
    /// At the end of the step: tenants whose token is older than the start
    /// of the renewal band (`lifetime x (at - jitter)`), i.e. may be due,
    /// and of those, tenants older than its end (`lifetime x (at +
    /// jitter)`): certainly due and still not renewed.
    pub in_band: u32,
    pub past_band: u32,
    /// The oldest token among them, in seconds.
    pub oldest_s: f64,
}

impl std::fmt::Display for TimelineRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>9.0} s  {:>5} issued  {:>5} due or nearly  {:>5} past the jitter band  oldest token {:>6.0} s",
            self.at_s, self.issued, self.in_band, self.past_band, self.oldest_s
        )
    }
}

/// The timeline of `watch.host`: per step, the tokens it issued and how
/// many of its tenants were waiting for one. Tenants whose credentials were
/// ever revoked are left out (their tokens stop on purpose).
pub fn host_timeline(
    plan: &Plan,
    world: &World,
    ledgers: &[Ledger],
    config: &Config,
    watch: Watch,
) -> Vec<TimelineRow> {
    let lifetime_ms = world.lifetime_secs as f64 * 1000.0;
    let band_start = (config.refresh.at_fraction - config.refresh.jitter_fraction) * lifetime_ms;
    let band_end = (config.refresh.at_fraction + config.refresh.jitter_fraction) * lifetime_ms;
    let tenants: Vec<&Ledger> = ledgers
        .iter()
        .enumerate()
        .filter(|&(i, _)| world.host_of(i) == watch.host && plan.revoked[i].is_none())
        .map(|(_, l)| l)
        .collect();
    let step_ms = (watch.step_s * 1000.0).max(1.0) as i64;
    let mut rows = Vec::new();
    let mut start = T0.0 + (watch.from_s * 1000.0) as i64;
    let stop = T0.0 + (watch.to_s * 1000.0) as i64;
    while start < stop {
        let end = start + step_ms;
        let mut row = TimelineRow {
            at_s: (start - T0.0) as f64 / 1000.0,
            issued: 0,
            in_band: 0,
            past_band: 0,
            oldest_s: 0.0,
        };
        for ledger in &tenants {
            let issued = &ledger.issued;
            // Tokens issued before the end of the step; the last of them is
            // the one the tenant held at that moment.
            let held = issued.partition_point(|x| x.at.0 < end);
            let before = issued.partition_point(|x| x.at.0 < start);
            row.issued += (held - before) as u32;
            let Some(last) = held.checked_sub(1).map(|i| issued[i]) else {
                continue;
            };
            let age = (end - last.at.0) as f64;
            if age >= band_start {
                row.in_band += 1;
                row.oldest_s = row.oldest_s.max(age / 1000.0);
            }
            if age > band_end {
                row.past_band += 1;
            }
        }
        rows.push(row);
        start = end;
    }
    rows
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::simulation::plan::T0;
    use crate::simulation::provider_model::Issued;
    use crate::simulation::SimSpec;

    /// A calm run's spec, world and plan for `tenants` on `hosts`, with
    /// 3,600 s tokens.
    fn calm(tenants: usize, hosts: usize) -> (SimSpec, World, Plan) {
        let spec = SimSpec {
            tenants,
            hosts,
            faults: false,
            ..SimSpec::small()
        };
        let mut rng = StdRng::seed_from_u64(1);
        let world = World::new(spec.tenants, spec.hosts, 3600, &mut rng);
        let plan = Plan::draw(&spec, &mut rng);
        (spec, world, plan)
    }

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
        let (spec, world, plan) = calm(4, 1);
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
    fn a_host_timeline_counts_tokens_issued_and_tenants_still_waiting() {
        let (spec, world, plan) = calm(4, 2);
        // Host 0 holds tenants 0 and 2; the band is 2,700..3,060 s of age.
        // Tenant 0 renews on time at 2,880 s; tenant 2 waits until 3,200 s.
        // Tenant 1 (host 1) renews at 2,900 s and must not be counted.
        let ledgers = vec![
            ledger(2_880, false),
            ledger(2_900, false),
            ledger(3_200, false),
            ledger(2_880, false),
        ];
        let watch = Watch {
            host: 0,
            from_s: 2_600.0,
            to_s: 3_300.0,
            step_s: 100.0,
        };
        let rows = host_timeline(&plan, &world, &ledgers, &spec.config, watch);
        let seen: Vec<(f64, u32, u32, u32)> = rows
            .iter()
            .map(|r| (r.at_s, r.issued, r.in_band, r.past_band))
            .collect();
        assert_eq!(
            seen,
            vec![
                (2_600.0, 0, 2, 0),
                (2_700.0, 0, 2, 0),
                (2_800.0, 1, 1, 0),
                (2_900.0, 0, 1, 0),
                (3_000.0, 0, 1, 1),
                (3_100.0, 0, 1, 1),
                (3_200.0, 1, 0, 0),
            ]
        );
        // At the end of the 3,100 s step, tenant 2's token is 3,200 s old.
        assert!((rows[5].oldest_s - 3_200.0).abs() < 1e-9);
        assert!(rows[6].to_string().contains("1 issued"));
    }

    #[test]
    fn the_largest_gap_at_the_first_attempt_is_located_apart_from_retries() {
        let (spec, world, plan) = calm(3, 1);
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
