//! The world and its fault plan: which tenants live on which PBX host, and
//! everything that will go wrong during one simulated run (outages, 429
//! storms, slow and malformed answers, revoked credentials, daemon
//! restarts), all drawn up front from the seed. A run is a pure function of
//! (spec, seed), and the plan can be printed before anything runs.
//!
//! Also the eligibility model the invariants use: when a tenant is owed a
//! valid token ("the PBX answers" and has answered long enough for a
//! recovery to finish).
//!
//! Does not: run anything, or read a clock.

use rand::rngs::StdRng;
use rand::Rng;

use super::SimSpec;
use crate::clock::UnixMs;

/// Virtual time zero of every run (2023-11-14): any fixed instant will do.
pub const T0: UnixMs = UnixMs(1_700_000_000_000);
const MIN: i64 = 60_000;

/// Half-open `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: UnixMs,
    pub end: UnixMs,
}

impl Window {
    pub fn contains(&self, t: UnixMs) -> bool {
        self.start <= t && t < self.end
    }
    pub fn overlaps(&self, a: UnixMs, b: UnixMs) -> bool {
        self.start <= b && a < self.end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// Connection refused: fails at once.
    Refused,
    /// HTTP 503 after a normal latency.
    Unavailable,
    /// No answer: the client's request timeout fires.
    Hang,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMode {
    /// `Retry-After` and `X-RateLimit-Reset` say exactly when the storm ends.
    Exact,
    /// `Retry-After` says this many seconds, shorter than the storm.
    Short(u32),
    /// No header: the parser's default applies.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    Outage(OutageMode),
    /// Every token request answered 429.
    Storm(ResetMode),
    /// Answers take `lo_ms..hi_ms`; above the request timeout they time out.
    Slow {
        lo_ms: u64,
        hi_ms: u64,
    },
    /// This share (per mille) of answers are 200 with a body the parser
    /// must refuse.
    Malformed {
        per_mille: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostFault {
    pub host: usize,
    pub window: Window,
    pub kind: FaultKind,
    /// The PBX does not really answer (outage, storm, answers too slow for
    /// the host's renewal load): tenants are not owed a token during it and
    /// get `grace` after it to recover.
    pub disrupts: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub tenant: usize,
    pub at: UnixMs,
    /// The PBX accepts the credentials again (an operator fixed them there).
    pub restore: Option<UnixMs>,
}

/// The daemon is killed at `window.start` and started again at `window.end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub window: Window,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub end: UnixMs,
    pub hosts: usize,
    pub faults: Vec<HostFault>,
    /// Indexes into `faults`, per host.
    pub by_host: Vec<Vec<usize>>,
    pub revocations: Vec<Revocation>,
    /// Index into `revocations` per tenant (at most one each).
    pub revoked: Vec<Option<usize>>,
    pub restarts: Vec<Restart>,
    /// After a disruption (or a restart) ends, how long a host's tenants may
    /// take to hold a valid token again.
    pub grace_ms: Vec<i64>,
    /// The same after credentials are restored (they are retried rarely).
    pub revocation_grace_ms: Vec<i64>,
}

/// Tenant `i` lives on host `i % hosts`.
pub fn host_of(tenant: usize, hosts: usize) -> usize {
    tenant % hosts.max(1)
}

/// How many tenants live on `host`.
pub fn tenants_on(host: usize, tenants: usize, hosts: usize) -> usize {
    let hosts = hosts.max(1);
    tenants / hosts + usize::from(host < tenants % hosts)
}

/// Knuth's method; fine for the small means used here.
fn poisson(rng: &mut StdRng, mean: f64) -> u32 {
    let l = (-mean).exp();
    let mut k = 0;
    let mut p = 1.0;
    loop {
        p *= rng.gen::<f64>();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

fn window_in(rng: &mut StdRng, end: UnixMs, min_ms: i64, max_ms: i64) -> Window {
    let len = rng.gen_range(min_ms..=max_ms);
    // Faults start after 5 minutes so every tenant's first token is real.
    let latest = (end.0 - T0.0 - len).max(5 * MIN + 1);
    let start = T0.plus_ms(rng.gen_range(5 * MIN..latest));
    Window {
        start,
        end: start.plus_ms(len),
    }
}

impl Plan {
    pub fn draw(spec: &SimSpec, rng: &mut StdRng) -> Plan {
        let end = T0.plus_ms((spec.hours * 3_600_000.0) as i64);
        let hosts = spec.hosts.max(1);
        let cfg = &spec.config;
        let rps = f64::from(cfg.limits.per_host_requests_per_second);
        let lifetime_s = spec.lifetime_secs as f64;
        // Renewals per second a host must carry when healthy.
        let demand = |h: usize| {
            tenants_on(h, spec.tenants, hosts) as f64 / (lifetime_s * cfg.refresh.at_fraction)
        };
        let grace_ms: Vec<i64> = (0..hosts)
            .map(|h| {
                // Every failed tenant retries within the backoff cap; then
                // the whole host can be fetched again at half the rate limit
                // (the other half is on-demand fetches), plus a minute.
                let refetch_ms = 2.0 * tenants_on(h, spec.tenants, hosts) as f64 / rps * 1000.0;
                cfg.refresh.backoff_max_ms as i64 + refetch_ms as i64 + MIN
            })
            .collect();
        let revocation_grace_ms = grace_ms
            .iter()
            .map(|g| (cfg.refresh.rejected_retry_seconds * 1100) as i64 + g)
            .collect();
        let mut plan = Plan {
            end,
            hosts,
            faults: Vec::new(),
            by_host: vec![Vec::new(); hosts],
            revocations: Vec::new(),
            revoked: vec![None; spec.tenants],
            restarts: Vec::new(),
            grace_ms,
            revocation_grace_ms,
        };
        if !spec.faults {
            return plan;
        }
        // Expected counts are per host per 6 simulated hours.
        let scale = spec.hours / 6.0;
        let timeout = cfg.pbx.request_timeout_ms;
        let concurrency = f64::from(
            cfg.limits
                .per_host_concurrent
                .min(cfg.refresh.max_concurrent_per_host),
        );
        for host in 0..hosts {
            let add = |plan: &mut Plan, window, kind, disrupts| {
                plan.by_host[host].push(plan.faults.len());
                plan.faults.push(HostFault {
                    host,
                    window,
                    kind,
                    disrupts,
                });
            };
            for _ in 0..poisson(rng, 0.5 * scale) {
                let w = window_in(rng, end, MIN, 30 * MIN);
                let mode = match rng.gen_range(0..3) {
                    0 => OutageMode::Refused,
                    1 => OutageMode::Unavailable,
                    _ => OutageMode::Hang,
                };
                add(&mut plan, w, FaultKind::Outage(mode), true);
            }
            for _ in 0..poisson(rng, 1.0 * scale) {
                let w = window_in(rng, end, 10_000, 10 * MIN);
                let mode = match rng.gen_range(0..3) {
                    0 => ResetMode::Exact,
                    1 => ResetMode::Short(rng.gen_range(1..=30)),
                    _ => ResetMode::Missing,
                };
                add(&mut plan, w, FaultKind::Storm(mode), true);
            }
            for _ in 0..poisson(rng, 0.5 * scale) {
                let w = window_in(rng, end, MIN, 20 * MIN);
                let lo_ms = 500;
                let hi_ms = rng.gen_range(2_000..=timeout + timeout / 5);
                // Answering, unless the host's renewals no longer fit through
                // its concurrency at this latency (with a factor 2 margin).
                let mean_s = (lo_ms + hi_ms) as f64 / 2000.0;
                let disrupts = concurrency / mean_s < 2.0 * demand(host);
                add(&mut plan, w, FaultKind::Slow { lo_ms, hi_ms }, disrupts);
            }
            for _ in 0..poisson(rng, 0.5 * scale) {
                let w = window_in(rng, end, MIN, 20 * MIN);
                let per_mille = rng.gen_range(50..=500);
                add(&mut plan, w, FaultKind::Malformed { per_mille }, false);
            }
        }
        // About 0.2 % of tenants have their credentials revoked at some
        // point; half of them are accepted again later.
        let revoked = ((spec.tenants as f64) * 0.002).ceil() as usize;
        for _ in 0..revoked.min(spec.tenants) {
            let tenant = rng.gen_range(0..spec.tenants);
            if plan.revoked[tenant].is_some() {
                continue;
            }
            let w = window_in(rng, end, 5 * MIN, 120 * MIN);
            let restore = rng.gen_bool(0.5).then_some(w.end);
            plan.revoked[tenant] = Some(plan.revocations.len());
            plan.revocations.push(Revocation {
                tenant,
                at: w.start,
                restore,
            });
        }
        // Daemon restarts: about one per 6 hours, down for 1.5 s to 5 min
        // (at least the limiter's window: a real restart takes that long,
        // and a new process knows nothing of the old one's recent requests).
        let mut kills: Vec<Window> = (0..poisson(rng, scale))
            .map(|_| window_in(rng, end, 1_500, 5 * MIN))
            .collect();
        kills.sort_by_key(|w| w.start);
        let mut last_end = T0;
        for w in kills {
            if w.start > last_end {
                last_end = w.end;
                plan.restarts.push(Restart { window: w });
            }
        }
        plan.spread_disruption();
        plan
    }

    /// Slow or malformed answers are harmless to a tenant renewing on
    /// schedule (it retries within seconds), but not to one recovering from
    /// a disruption: it is then at the backoff cap, and each failed retry
    /// costs up to `backoff_max` (30 s after a malformed answer, still many
    /// retries in a row at high garbage rates). So such a fault that touches
    /// a recovery period counts as part of the disruption (until nothing
    /// changes).
    fn spread_disruption(&mut self) {
        loop {
            let mut changed = false;
            for i in 0..self.faults.len() {
                if self.faults[i].disrupts {
                    continue;
                }
                let f = self.faults[i];
                let grace = self.grace_ms[f.host];
                let touches = |w: &Window| f.window.overlaps(w.start, w.end.plus_ms(grace));
                let near = self.by_host[f.host]
                    .iter()
                    .any(|&j| self.faults[j].disrupts && touches(&self.faults[j].window))
                    || self.restarts.iter().any(|r| touches(&r.window));
                if near {
                    self.faults[i].disrupts = true;
                    changed = true;
                }
            }
            if !changed {
                return;
            }
        }
    }

    /// When `tenant` on `host` is next owed a valid token, at or after `t`:
    /// outside every disruption of its host, every daemon restart and its
    /// revocation, each extended by the time a recovery may take. `None`:
    /// never again (revoked for good).
    pub fn owed_from(&self, tenant: usize, host: usize, t: UnixMs) -> Option<UnixMs> {
        let mut t = t;
        // Each pass moves `t` past one blocking window; windows are few.
        'again: loop {
            let grace = self.grace_ms[host];
            for &i in &self.by_host[host] {
                let f = &self.faults[i];
                if f.disrupts && f.window.start <= t && t < f.window.end.plus_ms(grace) {
                    t = f.window.end.plus_ms(grace);
                    continue 'again;
                }
            }
            for r in &self.restarts {
                if r.window.start <= t && t < r.window.end.plus_ms(grace) {
                    t = r.window.end.plus_ms(grace);
                    continue 'again;
                }
            }
            if let Some(rev) = self.revoked[tenant].map(|i| self.revocations[i]) {
                if rev.at <= t {
                    match rev.restore {
                        None => return None,
                        Some(back) => {
                            let until = back.plus_ms(self.revocation_grace_ms[host]);
                            if t < until {
                                t = until;
                                continue 'again;
                            }
                        }
                    }
                }
            }
            return Some(t);
        }
    }

    pub fn is_owed(&self, tenant: usize, host: usize, t: UnixMs) -> bool {
        self.owed_from(tenant, host, t) == Some(t)
    }

    /// Whether [a, b] touches anything that legitimately moves renewals:
    /// a disruption on the host, a restart, the tenant's revocation (with
    /// its recovery).
    pub fn disturbed(&self, tenant: usize, host: usize, a: UnixMs, b: UnixMs) -> bool {
        self.by_host[host]
            .iter()
            .any(|&i| self.faults[i].disrupts && self.faults[i].window.overlaps(a, b))
            || self.restarts.iter().any(|r| r.window.overlaps(a, b))
            || self.revoked[tenant].is_some_and(|i| {
                let r = self.revocations[i];
                let until = r.restore.map_or(UnixMs(i64::MAX), |t| {
                    t.plus_ms(self.revocation_grace_ms[host])
                });
                r.at <= b && a < until
            })
    }

    /// The revocation state of `tenant` at `t`, as the PBX sees it.
    pub fn is_revoked(&self, tenant: usize, t: UnixMs) -> bool {
        self.revoked
            .get(tenant)
            .copied()
            .flatten()
            .is_some_and(|i| {
                let r = self.revocations[i];
                r.at <= t && r.restore.is_none_or(|back| t < back)
            })
    }

    /// The strongest fault of each kind in force on `host` at `t`.
    pub fn active(&self, host: usize, t: UnixMs) -> Active {
        let mut a = Active::default();
        for &i in &self.by_host[host] {
            let f = &self.faults[i];
            if !f.window.contains(t) {
                continue;
            }
            match f.kind {
                FaultKind::Outage(m) => a.outage = Some(m),
                FaultKind::Storm(m) => a.storm = Some((m, f.window.end)),
                FaultKind::Slow { lo_ms, hi_ms } => {
                    a.slow = Some(
                        a.slow
                            .map_or((lo_ms, hi_ms), |(l, h)| (l.max(lo_ms), h.max(hi_ms))),
                    )
                }
                FaultKind::Malformed { per_mille } => {
                    a.malformed = a.malformed.max(per_mille);
                }
            }
        }
        a
    }

    pub fn count(&self, pred: impl Fn(&FaultKind) -> bool) -> usize {
        self.faults.iter().filter(|f| pred(&f.kind)).count()
    }
}

/// Faults in force on one host at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Active {
    pub outage: Option<OutageMode>,
    /// The mode and when the storm ends.
    pub storm: Option<(ResetMode, UnixMs)>,
    pub slow: Option<(u64, u64)>,
    pub malformed: u32,
}

impl std::fmt::Display for Plan {
    /// One line per fault, times in seconds from the start.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |t: UnixMs| (t.0 - T0.0) as f64 / 1000.0;
        for x in &self.faults {
            writeln!(
                f,
                "host {} {:>9.1}..{:>9.1} s {:?}{}",
                x.host,
                s(x.window.start),
                s(x.window.end),
                x.kind,
                if x.disrupts { " (disrupts)" } else { "" }
            )?;
        }
        for r in &self.restarts {
            writeln!(
                f,
                "restart: killed at {:.1} s, up at {:.1} s",
                s(r.window.start),
                s(r.window.end)
            )?;
        }
        for r in &self.revocations {
            writeln!(
                f,
                "tenant {} revoked at {:.1} s, restored {}",
                r.tenant,
                s(r.at),
                r.restore
                    .map_or("never".to_string(), |t| format!("at {:.1} s", s(t)))
            )?;
        }
        write!(
            f,
            "grace per host (s): {:?}",
            self.grace_ms.iter().map(|g| g / 1000).collect::<Vec<_>>()
        )
    }
}
