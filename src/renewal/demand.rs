//! Renewal demand per PBX host against its budget, and what the scheduler
//! does when it does not fit.
//!
//! `demand_ratio` = proactive renewals per second that the host's renewing
//! tenants need (from their token lifetimes and `[refresh] at_fraction`,
//! `capacity::renewals_per_second`) / the requests per second its limiter
//! sustains (`[limits] per_host_requests_per_second`, less the window
//! guard: `capacity::budget_per_second`). Every renewing tenant counts,
//! busy or idle.
//!
//! While a host's ratio is <= 1 nothing changes: every tenant is renewed
//! ahead of expiry. Above 1 the host is *short*: the scheduler renews busy
//! tenants (broker/activity/) as before, in due order, and parks the due
//! renewals of idle ones (their jobs move `idle_after` ahead in one batched
//! write per pass, not a write per skip); an idle tenant's next GetToken
//! fetches on demand, in the limiter's demand lane, ahead of proactive
//! work. A parked tenant that is asked for again, or every parked tenant
//! of a host that stops being short, has its job moved back to now.
//!
//! The ratio is computed from the broker's cache every [`ASSESS_EVERY_MS`]
//! (one pass over the slots, no store read); a warning is logged when a
//! host's ratio rises above [`WARN_RATIO`] (once per crossing), and an info
//! line when it falls back.
//!
//! Does not: run renewals or write jobs (scheduler.rs).

use std::collections::BTreeMap;

use super::capacity;
use crate::broker::HostActivity;

/// How often the scheduler re-assesses the hosts' demand.
pub const ASSESS_EVERY_MS: i64 = 5_000;

/// A host's ratio above this is worth a warning: on-demand fetches,
/// retries and onboarding need headroom too.
pub const WARN_RATIO: f64 = 0.8;

/// One host's demand, as the operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDemand {
    pub host: String,
    /// Renewal demand / budget (see the module doc); 0 without tenants.
    pub demand_ratio: f64,
    pub renewing: u64,
    pub busy: u64,
    pub idle: u64,
}

impl HostDemand {
    /// Idle tenants are renewed on demand only while this holds.
    pub fn is_short(&self) -> bool {
        self.demand_ratio > 1.0
    }
}

/// What the ratio is computed from (config and broker settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemandInputs {
    pub default_lifetime_secs: u64,
    pub at_fraction: f64,
    pub per_host_rps: u32,
}

/// Each host's demand from the broker's view of its tenants.
pub fn assess(activity: &[HostActivity], inputs: DemandInputs) -> Vec<HostDemand> {
    let budget = capacity::budget_per_second(inputs.per_host_rps);
    activity
        .iter()
        .map(|a| {
            let needed = capacity::renewals_per_second(
                a.renewing,
                a.with_token,
                a.lifetime_ms_sum,
                inputs.default_lifetime_secs,
                inputs.at_fraction,
            );
            HostDemand {
                host: a.host.clone(),
                demand_ratio: if budget > 0.0 { needed / budget } else { 0.0 },
                renewing: a.renewing,
                busy: a.busy,
                idle: a.idle,
            }
        })
        .collect()
}

/// Remembers the last assessment, to log crossings once and to tell the
/// scheduler which hosts stopped being short.
#[derive(Debug, Default)]
pub struct DemandWatch {
    last: BTreeMap<String, f64>,
}

/// What changed with one assessment.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DemandChanges {
    /// Hosts whose ratio rose above [`WARN_RATIO`] (warned once each).
    pub warned: Vec<String>,
    /// Hosts that were short and are not any more (gone hosts included).
    pub relieved: Vec<String>,
}

impl DemandWatch {
    /// Takes a new assessment: logs hosts that crossed [`WARN_RATIO`] (a
    /// warning up, an info line down), once per crossing.
    pub fn update(&mut self, hosts: &[HostDemand]) -> DemandChanges {
        let mut warned = Vec::new();
        let mut relieved = Vec::new();
        let mut next = BTreeMap::new();
        for h in hosts {
            let before = self.last.get(&h.host).copied().unwrap_or(0.0);
            if h.demand_ratio > WARN_RATIO && before <= WARN_RATIO {
                warned.push(h.host.clone());
                tracing::warn!(
                    host = %h.host,
                    demand_ratio = h.demand_ratio,
                    busy = h.busy,
                    idle = h.idle,
                    "PBX host {}: renewal demand is {:.2} of its budget (limits.per_host_requests_per_second){}",
                    h.host,
                    h.demand_ratio,
                    if h.is_short() {
                        "; busy tenants are renewed ahead of expiry, idle ones (not asked for within refresh.idle_after_seconds) on their next GetToken"
                    } else {
                        "; above 1, idle tenants will be renewed on demand only"
                    }
                );
            } else if h.demand_ratio <= WARN_RATIO && before > WARN_RATIO {
                tracing::info!(host = %h.host, demand_ratio = h.demand_ratio, "PBX host {}: renewal demand is back to {:.2} of its budget", h.host, h.demand_ratio);
            }
            if before > 1.0 && !h.is_short() {
                relieved.push(h.host.clone());
            }
            next.insert(h.host.clone(), h.demand_ratio);
        }
        for (host, ratio) in &self.last {
            if *ratio > 1.0 && !next.contains_key(host) {
                relieved.push(host.clone());
            }
        }
        self.last = next;
        DemandChanges { warned, relieved }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(host: &str, renewing: u64, lifetime_s: i64) -> HostActivity {
        HostActivity {
            host: host.into(),
            renewing,
            with_token: renewing,
            lifetime_ms_sum: renewing as i64 * lifetime_s * 1000,
            busy: 1,
            idle: renewing - 1,
        }
    }

    const INPUTS: DemandInputs = DemandInputs {
        default_lifetime_secs: 3300,
        at_fraction: 0.8,
        per_host_rps: 20,
    };

    #[test]
    fn ratio_is_renewals_per_second_over_the_sustained_budget() {
        // 60 tenants on 20 s tokens renewed at 50 %: 6/s against 2/s less
        // the window guard (1.82/s).
        let inputs = DemandInputs {
            at_fraction: 0.5,
            per_host_rps: 2,
            ..INPUTS
        };
        let d = assess(&[activity("h", 60, 20)], inputs);
        assert!(
            (d[0].demand_ratio - 6.0 / (2.0 / 1.1)).abs() < 1e-9,
            "{d:?}"
        );
        assert!(d[0].is_short());
        // 40,000 one-hour tokens at 80 % on 20/s: 13.9/s of 18.2/s.
        let d = assess(&[activity("h", 40_000, 3600)], INPUTS);
        assert!(
            d[0].demand_ratio > 0.76 && d[0].demand_ratio < 0.77,
            "{d:?}"
        );
        assert!(!d[0].is_short());
    }

    #[test]
    fn crossings_are_reported_once_and_relief_is_returned() {
        let mut w = DemandWatch::default();
        let at = |ratio: f64| {
            vec![HostDemand {
                host: "h".into(),
                demand_ratio: ratio,
                renewing: 10,
                busy: 1,
                idle: 9,
            }]
        };
        let h = || vec!["h".to_owned()];
        let none = DemandChanges::default();
        assert_eq!(w.update(&at(0.5)), none);
        // Warned when crossing 0.8, not again on the next passes above it.
        let up = DemandChanges {
            warned: h(),
            relieved: vec![],
        };
        assert_eq!(w.update(&at(1.5)), up);
        assert_eq!(w.update(&at(1.6)), none);
        // Below 1 but above 0.8: relieved (parked jobs come back), no warning.
        let relief = DemandChanges {
            warned: vec![],
            relieved: h(),
        };
        assert_eq!(w.update(&at(0.9)), relief);
        assert_eq!(w.update(&at(1.2)), none);
        assert_eq!(w.update(&at(0.5)), relief);
        assert_eq!(w.update(&at(0.85)), up);
        assert_eq!(w.update(&at(1.1)), none);
        // A host whose tenants all went away is relieved too.
        assert_eq!(w.update(&[]), relief);
    }
}
