//! The scheduler's half of "busy and idle" (the rule is in `demand.rs`):
//! which hosts are short, which due jobs to park instead of running, and
//! moving parked jobs back when their tenant is asked for again or their
//! host stops being short.
//!
//! Writes are batched: one `reschedule_many` per pass for the jobs parked
//! in it, one for the jobs woken since the last pass. A parked job leaves
//! the due range (its due time moves `idle_after` ahead), so later passes
//! neither read nor write it again until then.
//!
//! Does not: decide busy or idle (broker/activity/), or run jobs.

use std::collections::HashSet;
use std::sync::Arc;

use super::demand::{self, DemandInputs, DemandWatch};
use super::scheduler::SchedulerStatus;
use crate::broker::Broker;
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::Store;

/// A parked job is looked at again after at most this long, even if its
/// tenant stays idle (then it is parked again): bounds how long a job can
/// stay parked after a restart forgot which jobs were parked.
const MIN_PARK_MS: i64 = 1_000;

#[derive(Debug, Default)]
pub struct Parking {
    watch: DemandWatch,
    assessed_at: Option<UnixMs>,
    short: HashSet<String>,
}

impl Parking {
    /// At the start of a pass: re-assesses the hosts when due (publishing
    /// the numbers in `status`), and moves back to `now` the jobs of
    /// tenants woken since the last pass and of hosts no longer short.
    pub async fn before_pass(
        &mut self,
        broker: &Broker,
        store: &Store,
        status: &SchedulerStatus,
        per_host_rps: u32,
        now: UnixMs,
    ) {
        let mut back: Vec<TenantId> = broker.take_woken();
        if self
            .assessed_at
            .is_none_or(|at| now.0 - at.0 >= demand::ASSESS_EVERY_MS || now < at)
        {
            self.assessed_at = Some(now);
            let settings = broker.settings();
            let inputs = DemandInputs {
                default_lifetime_secs: u64::try_from(settings.default_lifetime_ms / 1000)
                    .unwrap_or(0),
                at_fraction: settings.policy.at_fraction,
                per_host_rps,
            };
            let hosts = demand::assess(&broker.activity(now), inputs);
            for host in self.watch.update(&hosts).relieved {
                back.extend(broker.unpark_host(&host));
            }
            self.short = hosts
                .iter()
                .filter(|h| h.is_short())
                .map(|h| h.host.clone())
                .collect();
            status.set_demand(hosts);
        }
        if back.is_empty() {
            return;
        }
        let n = back.len();
        let moves = back.into_iter().map(|id| (id, now)).collect();
        if let Err(e) = store.reschedule_many(moves).await {
            // The jobs run at their parked due time instead (at most
            // idle_after later); the tenants' next GetToken still fetches.
            tracing::warn!("cannot move {n} parked renewal jobs back to now: {e}");
        }
    }

    /// Whether the due job of `tenant` on `host` is to be parked: its host
    /// is short and the tenant idle.
    pub fn should_park(&self, broker: &Broker, host: &str, tenant: &TenantId, now: UnixMs) -> bool {
        self.short.contains(host) && !broker.is_busy(tenant, now)
    }

    /// Parks `ids`: their jobs move `idle_after` ahead (one write), then
    /// the broker marks them so their next ask wakes them. On a failed
    /// write nothing is marked; the jobs stay due and are looked at again.
    pub async fn park(&self, broker: &Arc<Broker>, store: &Store, ids: Vec<TenantId>, now: UnixMs) {
        if ids.is_empty() {
            return;
        }
        let until = now.plus_ms(broker.settings().idle_after_ms.max(MIN_PARK_MS));
        let moves = ids.iter().map(|id| (id.clone(), until)).collect();
        match store.reschedule_many(moves).await {
            Ok(()) => {
                tracing::debug!(parked = ids.len(), %until, "idle tenants' renewals parked (host budget short)");
                for id in &ids {
                    broker.park(id);
                }
            }
            Err(e) => tracing::warn!("cannot park {} idle tenants' renewal jobs: {e}", ids.len()),
        }
    }
}

#[cfg(test)]
mod tests;
