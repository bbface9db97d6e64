//! The invariants checked while a simulation runs:
//!
//! - every tenant that is owed a token (see [`Plan::owed_from`]) holds a
//!   valid one: checked at the exact moment each held token expires (an
//!   expiry queue), so no gap can slip between two sweeps;
//! - GetToken, called at random moments for random tenants, never serves an
//!   expired token, a token the PBX did not issue to that tenant, or one
//!   the broker thinks lives longer than the PBX does; and always answers an
//!   owed tenant with a token valid for the asked time;
//! - after each disruption ends, how long until every tenant of the host is
//!   back (measured; the expiry queue enforces the bound).
//!
//! The rate and concurrency limits are checked by the PBX itself at each
//! arrival, renewal timing after the run (`analysis`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::provider_model::ProviderModel;
use super::record::Recorder;
use super::world::World;
use crate::broker::Broker;
use crate::clock::{SharedClock, UnixMs};
use crate::domain::AccessToken;

/// A GetToken caller gives up after this long (a gRPC deadline).
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// After a gap is reported, the tenant is looked at again this much later
/// (one report per minute of gap, not one per check).
const GAP_RECHECK_MS: i64 = 60_000;
/// The recovery monitor looks this often.
const RECOVERY_STEP: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Clone)]
pub struct CheckStats {
    pub expiry_checks: u64,
    pub probes: u64,
    pub probes_ok: u64,
    pub probes_refused: u64,
    pub probes_timed_out: u64,
    /// Probes whose process was killed before they finished.
    pub probes_interrupted: u64,
    pub probes_while_down: u64,
    /// Disruption ends (and restarts) whose recovery was measured.
    pub recoveries: u64,
    pub recoveries_unfinished: u64,
    pub max_recovery_ms: i64,
}

/// What the checker tasks share.
pub struct Checker {
    pub clock: SharedClock,
    pub plan: Arc<Plan>,
    pub world: Arc<World>,
    pub pbx: Arc<ProviderModel>,
    pub rec: Arc<Recorder>,
    pub default_min_valid_ms: i64,
    /// The running process, with its epoch; `None` while the daemon is down.
    current: Mutex<Option<(u32, Arc<Broker>)>>,
    stats: Mutex<CheckStats>,
    pub stop: CancellationToken,
}

impl Checker {
    pub fn new(
        clock: SharedClock,
        plan: Arc<Plan>,
        world: Arc<World>,
        pbx: Arc<ProviderModel>,
        rec: Arc<Recorder>,
        default_min_valid_ms: i64,
    ) -> Self {
        Self {
            clock,
            plan,
            world,
            pbx,
            rec,
            default_min_valid_ms,
            current: Mutex::new(None),
            stats: Mutex::new(CheckStats::default()),
            stop: CancellationToken::new(),
        }
    }

    fn current(&self) -> MutexGuard<'_, Option<(u32, Arc<Broker>)>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, CheckStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_current(&self, process: Option<(u32, Arc<Broker>)>) {
        *self.current() = process;
    }

    pub fn snapshot(&self) -> CheckStats {
        self.stats().clone()
    }

    fn broker(&self) -> Option<(u32, Arc<Broker>)> {
        self.current().clone()
    }

    /// The token the running process holds for `tenant` (no fetch).
    fn held(&self, tenant: usize) -> Option<Arc<AccessToken>> {
        let (_, broker) = self.broker()?;
        let watch = broker.watch(&self.world.tenant_ids[tenant]).ok()?;
        let token = watch.tokens.borrow().clone();
        token
    }

    async fn sleep_until(&self, t: UnixMs) -> bool {
        let wait = self.clock.now().until(t);
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// The expiry queue: each tenant is looked at when its held token
    /// expires. `initial` holds each tenant's first token expiry.
    pub async fn watch_expiries(self: Arc<Self>, initial: Vec<UnixMs>) {
        let mut queue: BinaryHeap<Reverse<(i64, u32)>> = initial
            .iter()
            .enumerate()
            .map(|(i, t)| Reverse((t.0, i as u32)))
            .collect();
        while let Some(&Reverse((t, tenant))) = queue.peek() {
            if t >= self.plan.end.0 {
                break;
            }
            if t > self.clock.now().0 {
                if !self.sleep_until(UnixMs(t)).await {
                    break;
                }
                continue;
            }
            queue.pop();
            if let Some(next) = self.check_expiry(tenant as usize) {
                queue.push(Reverse((next.0, tenant)));
            }
        }
    }

    /// Returns when to look at the tenant next.
    fn check_expiry(&self, tenant: usize) -> Option<UnixMs> {
        let now = self.clock.now();
        self.stats().expiry_checks += 1;
        let held = self.held(tenant);
        if let Some(t) = held.as_ref().filter(|t| t.valid_for(now, 0)) {
            return Some(t.expires_at);
        }
        let host = self.world.host_of(tenant);
        if self.plan.is_owed(tenant, host, now) {
            self.rec.violation(
                now,
                "no-valid-token",
                format!(
                    "tenant {} on {} holds no valid token (held expired at {}) though the PBX has answered for longer than the recovery bound ({} s)",
                    self.world.tenant_ids[tenant],
                    self.world.hosts[host],
                    held.map_or("never".to_string(), |t| t.expires_at.to_string()),
                    self.plan.grace_ms[host] / 1000,
                ),
            );
            return Some(now.plus_ms(GAP_RECHECK_MS));
        }
        self.plan.owed_from(tenant, host, now)
    }

    /// Calls GetToken for random tenants at random moments, `per_sec` on
    /// average, until stopped.
    pub async fn probe(self: Arc<Self>, per_sec: f64, mut rng: StdRng) {
        if per_sec <= 0.0 || self.world.tenant_ids.is_empty() {
            return;
        }
        let mean_gap_ms = 1000.0 / per_sec;
        loop {
            let gap = (-(1.0 - rng.gen::<f64>()).ln() * mean_gap_ms).max(1.0) as i64;
            if !self.sleep_until(self.clock.now().plus_ms(gap)).await {
                return;
            }
            if self.clock.now() >= self.plan.end {
                return;
            }
            let tenant = rng.gen_range(0..self.world.tenant_ids.len());
            let min_valid_secs = [0u32, 0, 10, 60][rng.gen_range(0..4)];
            let Some((epoch, broker)) = self.broker() else {
                self.stats().probes_while_down += 1;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.one_probe(epoch, broker, tenant, min_valid_secs).await;
            });
        }
    }

    async fn one_probe(&self, epoch: u32, broker: Arc<Broker>, tenant: usize, min_valid_secs: u32) {
        let start = self.clock.now();
        let host = self.world.host_of(tenant);
        let owed = self.plan.is_owed(tenant, host, start);
        let id = &self.world.tenant_ids[tenant];
        let result =
            tokio::time::timeout(PROBE_DEADLINE, broker.get_token(id, min_valid_secs)).await;
        drop(broker);
        let now = self.clock.now();
        if self.broker().map(|(e, _)| e) != Some(epoch) {
            self.stats().probes_interrupted += 1;
            return;
        }
        let min_valid_ms = if min_valid_secs == 0 {
            self.default_min_valid_ms
        } else {
            i64::from(min_valid_secs) * 1000
        };
        self.stats().probes += 1;
        let code = match result {
            Ok(Ok(token)) => {
                self.stats().probes_ok += 1;
                self.check_served(tenant, &token, start, now, owed, min_valid_ms);
                0
            }
            Ok(Err(e)) => {
                self.stats().probes_refused += 1;
                if owed {
                    self.rec.violation(
                        now,
                        "owed-tenant-refused",
                        format!(
                            "GetToken({id}, {min_valid_secs}) failed while the PBX answers: {e}"
                        ),
                    );
                }
                1
            }
            Err(_) => {
                self.stats().probes_timed_out += 1;
                if owed {
                    self.rec.violation(
                        now,
                        "owed-tenant-timeout",
                        format!(
                            "GetToken({id}, {min_valid_secs}) took longer than {PROBE_DEADLINE:?}"
                        ),
                    );
                }
                2
            }
        };
        self.rec.event(now, 2, tenant as i64, code);
    }

    fn check_served(
        &self,
        tenant: usize,
        token: &AccessToken,
        start: UnixMs,
        now: UnixMs,
        owed: bool,
        min_valid_ms: i64,
    ) {
        let id = &self.world.tenant_ids[tenant];
        if !token.valid_for(now, 0) {
            self.rec.violation(
                now,
                "expired-token-served",
                format!(
                    "GetToken({id}) served a token that expired at {}",
                    token.expires_at
                ),
            );
        }
        match self.pbx.lookup(token.value.expose()) {
            None => self.rec.violation(
                now,
                "unknown-token-served",
                format!("GetToken({id}) served a token the PBX never issued"),
            ),
            Some((owner, _)) if owner != tenant => self.rec.violation(
                now,
                "wrong-tenant-token",
                format!(
                    "GetToken({id}) served a token of {}",
                    self.world.tenant_ids[owner]
                ),
            ),
            Some((_, pbx_expires)) => {
                if pbx_expires <= now {
                    self.rec.violation(
                        now,
                        "pbx-expired-token-served",
                        format!(
                            "GetToken({id}) served a token the PBX let expire at {pbx_expires}"
                        ),
                    );
                }
                if token.expires_at > pbx_expires {
                    self.rec.violation(
                        now,
                        "token-outlives-pbx",
                        format!(
                            "the broker thinks {id}'s token lives until {}, the PBX until {pbx_expires}",
                            token.expires_at
                        ),
                    );
                }
            }
        }
        if owed && !token.valid_for(start, min_valid_ms) {
            self.rec.violation(
                now,
                "short-token",
                format!(
                    "GetToken({id}) served a token valid for less than the asked {min_valid_ms} ms while the PBX answers"
                ),
            );
        }
    }

    /// Another disruption of one of `hosts` began after `ended`: this
    /// recovery is no longer measurable on its own.
    fn superseded(&self, hosts: &[usize], ended: UnixMs, now: UnixMs) -> bool {
        let after = |t: UnixMs| ended < t && t <= now;
        hosts.iter().any(|&h| {
            self.plan.by_host[h].iter().any(|&i| {
                let f = &self.plan.faults[i];
                f.disrupts && after(f.window.start)
            })
        }) || self.plan.restarts.iter().any(|r| after(r.window.start))
    }

    /// After a disruption of `host` (or of every host after a restart)
    /// ends at `ended`: how long until no tenant of the host has a failing
    /// last request and every one that is owed a token holds a valid one.
    pub async fn measure_recovery(self: Arc<Self>, hosts: Vec<usize>, ended: UnixMs) {
        if !self.sleep_until(ended).await {
            return;
        }
        let horizon = hosts
            .iter()
            .map(|&h| self.plan.grace_ms[h])
            .max()
            .unwrap_or(0);
        let deadline = ended.plus_ms(horizon);
        let mut pending: Vec<usize> = (0..self.world.tenant_ids.len())
            .filter(|&t| {
                let h = self.world.host_of(t);
                hosts.contains(&h) && self.plan.owed_from(t, h, deadline) == Some(deadline)
            })
            .collect();
        loop {
            let now = self.clock.now();
            pending.retain(|&t| !self.held(t).is_some_and(|tok| tok.valid_for(now, 0)));
            let failing: u32 = hosts.iter().map(|&h| self.pbx.failing(h)).sum();
            if pending.is_empty() && failing == 0 {
                let mut s = self.stats();
                s.recoveries += 1;
                s.max_recovery_ms = s.max_recovery_ms.max(now.0 - ended.0);
                return;
            }
            if now >= self.plan.end || self.superseded(&hosts, ended, now) {
                return;
            }
            if now >= deadline {
                self.stats().recoveries_unfinished += 1;
                return;
            }
            if !self.sleep_until(now.plus(RECOVERY_STEP)).await {
                return;
            }
        }
    }
}
