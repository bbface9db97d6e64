//! A scenario with renewal demand above the budget (issue 29): every
//! tenant on one host, more of them than its rate limit can keep warm, a
//! share of them *busy* (each asked for every `ask_every_s`, well inside
//! `[refresh] idle_after_seconds`) and the rest idle until a random first
//! use. It runs the production engine (`process.rs`) against the provider
//! model on a calm PBX (no faults: the question is the budget alone) and
//! checks, as it runs:
//!
//! - no GetToken of a busy tenant fails or serves an expired token
//!   (`busy-refused`, `expired-token-served`);
//! - no first use of an idle tenant fails or serves an expired token
//!   (`idle-first-use-refused`, `expired-token-served`);
//! - the PBX never sees more than the rate or concurrency limit (the
//!   provider model records those violations at each arrival).
//!
//! It reports how often a busy tenant's ask found no usable token in
//! memory after the warm-up (one idle period plus one token lifetime: at
//! the start every tenant counts as busy, see broker/activity/), and the
//! latency of idle tenants' first use (p50, p99, max), in simulated time.
//!
//! Not the fault campaign (`mod.rs`): its checker owes every tenant a
//! valid token at all times, which is exactly what a short budget gives up
//! for idle tenants.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::plan::{Plan, T0};
use super::process::Process;
use super::provider_model::ProviderModel;
use super::record::{Recorder, Violation};
use super::world::World;
use super::{seed_tenants, SimError, SimSpec, TempDir};
use crate::broker::Broker;
use crate::clock::{SharedClock, TokioClock, UnixMs};
use crate::crypto::Keyring;
use crate::renewal::capacity;

/// A caller gives up after this long (a gRPC deadline).
const DEADLINE: Duration = Duration::from_secs(30);

/// Who is busy and how the idle ones are used.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSpec {
    /// Share of the tenants that are busy (0..=1).
    pub busy_share: f64,
    /// Each busy tenant is asked for this often (keep it below
    /// `idle_after_seconds`).
    pub ask_every_s: u64,
    /// Idle tenants used for the first time per simulated second (after
    /// the warm-up), each at most once.
    pub first_uses_per_sec: f64,
}

#[derive(Debug, Clone)]
pub struct BudgetReport {
    pub seed: u64,
    pub tenants: usize,
    pub busy: usize,
    pub hours: f64,
    pub wall: Duration,
    pub digest: u64,
    /// Renewal demand of every tenant / the host's budget.
    pub demand_ratio: f64,
    pub busy_asks: u64,
    /// Busy asks after the warm-up that found no token valid for
    /// min_valid in memory (they fetched on demand).
    pub busy_misses_after_warmup: u64,
    pub idle_first_uses: u64,
    /// First-use latency in simulated ms: p50, p99, max.
    pub idle_latency_ms: (i64, i64, i64),
    pub pbx_requests: u64,
    pub max_per_second: u32,
    pub rate_limit: u32,
    pub violations: Vec<Violation>,
    pub violation_counts: Vec<(&'static str, u64)>,
}

impl BudgetReport {
    pub fn violation_total(&self) -> u64 {
        self.violation_counts.iter().map(|(_, n)| n).sum()
    }

    pub fn line(&self) -> String {
        let (p50, p99, max) = self.idle_latency_ms;
        format!(
            "seed {}: {} violations; {} tenants on one host, {} busy, demand ratio {:.2}; {} PBX requests (max {}/s of {}); busy asks {} ({} without a usable token in memory after the warm-up); idle first uses {}: latency p50 {} ms, p99 {} ms, max {} ms (simulated); digest {:016x}; {:.1} s wall",
            self.seed,
            self.violation_total(),
            self.tenants,
            self.busy,
            self.demand_ratio,
            self.pbx_requests,
            self.max_per_second,
            self.rate_limit,
            self.busy_asks,
            self.busy_misses_after_warmup,
            self.idle_first_uses,
            p50,
            p99,
            max,
            self.digest,
            self.wall.as_secs_f64(),
        )
    }
}

/// What the asking tasks share.
struct Asks {
    rec: Arc<Recorder>,
    clock: SharedClock,
    broker: Arc<Broker>,
    world: Arc<World>,
    min_valid_ms: i64,
    warmup_end: UnixMs,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    busy_asks: u64,
    busy_misses: u64,
    idle_latencies: Vec<i64>,
}

impl Asks {
    /// One GetToken of `tenant`; returns the latency in simulated ms, or
    /// `None` when it failed (recorded as `failure`).
    async fn ask(&self, tenant: usize, failure: &'static str) -> Option<i64> {
        let id = &self.world.tenant_ids[tenant];
        let start = self.clock.now();
        let in_memory = self
            .broker
            .held_token(id)
            .is_some_and(|t| t.valid_for(start, self.min_valid_ms));
        let result = tokio::time::timeout(DEADLINE, self.broker.get_token(id, 0)).await;
        let now = self.clock.now();
        let code = match &result {
            Ok(Ok(token)) if token.valid_for(now, 0) => 0,
            Ok(Ok(token)) => {
                self.rec.violation(
                    now,
                    "expired-token-served",
                    format!(
                        "GetToken({id}) served a token that expired at {}",
                        token.expires_at
                    ),
                );
                1
            }
            Ok(Err(e)) => {
                self.rec
                    .violation(now, failure, format!("GetToken({id}) failed: {e}"));
                2
            }
            Err(_) => {
                self.rec.violation(
                    now,
                    failure,
                    format!("GetToken({id}) took longer than {DEADLINE:?}"),
                );
                3
            }
        };
        self.rec.event(now, 5, tenant as i64, code);
        if failure == "busy-refused" {
            let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
            t.busy_asks += 1;
            if !in_memory && start >= self.warmup_end {
                t.busy_misses += 1;
            }
        }
        (code == 0).then_some(now.0 - start.0)
    }
}

/// Runs the scenario for one seed on its own paused current-thread runtime.
/// `spec.hosts` and `spec.faults` are ignored (one host, calm PBX).
pub fn run_seed(spec: &SimSpec, budget: BudgetSpec, seed: u64) -> Result<BudgetReport, SimError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(SimError::Runtime)?;
    rt.block_on(run(spec, budget, seed))
}

async fn run(spec: &SimSpec, budget: BudgetSpec, seed: u64) -> Result<BudgetReport, SimError> {
    let wall = Instant::now();
    if spec.tenants == 0 || spec.hours <= 0.0 || !(0.0..=1.0).contains(&budget.busy_share) {
        return Err(SimError::Input(
            "tenants and hours must be positive and the busy share within 0..=1".into(),
        ));
    }
    let spec = SimSpec {
        hosts: 1,
        faults: false,
        ..spec.clone()
    };
    let config = spec.config.clone();
    let mut master = StdRng::seed_from_u64(seed);
    let sub = |m: &mut StdRng| StdRng::seed_from_u64(m.gen());
    let world = Arc::new(World::new(
        spec.tenants,
        1,
        spec.lifetime_secs,
        &mut sub(&mut master),
    ));
    let plan = Arc::new(Plan::draw(&spec, &mut sub(&mut master)));
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let rec = Arc::new(Recorder::default());
    let pbx = Arc::new(ProviderModel::new(
        clock.clone(),
        world.clone(),
        plan.clone(),
        rec.clone(),
        &config,
        sub(&mut master),
        false,
    ));
    let dir = TempDir::create(&spec, seed)?;
    let db = dir.0.join("pbx-tokend.db");
    let keyring = Arc::new(Keyring::from_key(&[0x5b; 32]));
    seed_tenants(
        &spec,
        &config,
        &world,
        &pbx,
        &db,
        &keyring,
        &mut sub(&mut master),
    )
    .await?;
    let process = Process::start(
        &db,
        keyring,
        &config,
        clock.clone(),
        pbx.clone(),
        master.gen(),
    )
    .await?;

    let mut rng = sub(&mut master);
    let mut order: Vec<usize> = (0..spec.tenants).collect();
    order.shuffle(&mut rng);
    let n_busy = ((spec.tenants as f64) * budget.busy_share).round() as usize;
    let (busy, idle) = order.split_at(n_busy.min(spec.tenants));
    let idle_after_ms = i64::try_from(config.refresh.idle_after_seconds)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    let lifetime_ms = i64::try_from(spec.lifetime_secs).unwrap_or(0) * 1000;
    let asks = Arc::new(Asks {
        rec: rec.clone(),
        clock: clock.clone(),
        broker: process.broker.clone(),
        world: world.clone(),
        min_valid_ms: i64::from(config.token.default_min_valid_seconds) * 1000,
        warmup_end: T0.plus_ms(idle_after_ms.saturating_add(lifetime_ms)),
        tally: Mutex::default(),
    });
    let period_ms = i64::try_from(budget.ask_every_s.max(1)).unwrap_or(1) * 1000;
    let mut phases: Vec<(i64, usize)> = busy
        .iter()
        .map(|&t| (rng.gen_range(0..period_ms), t))
        .collect();
    phases.sort_unstable();
    let end = plan.end;
    let busy_task = {
        let (asks, clock) = (asks.clone(), clock.clone());
        tokio::spawn(async move {
            let mut cycle = T0;
            while cycle < end && !phases.is_empty() {
                for &(phase, tenant) in &phases {
                    let at = cycle.plus_ms(phase);
                    if at >= end {
                        break;
                    }
                    tokio::time::sleep(clock.now().until(at)).await;
                    let asks = asks.clone();
                    tokio::spawn(async move { asks.ask(tenant, "busy-refused").await });
                }
                cycle = cycle.plus_ms(period_ms);
            }
        })
    };
    let idle_task = {
        let (asks, clock) = (asks.clone(), clock.clone());
        let idle: Vec<usize> = idle.to_vec();
        let mut rng = sub(&mut master);
        let mean_gap_ms = 1000.0 / budget.first_uses_per_sec.max(1e-6);
        let from = asks.warmup_end;
        tokio::spawn(async move {
            tokio::time::sleep(clock.now().until(from)).await;
            let mut handles = Vec::new();
            for tenant in idle {
                let gap = (-(1.0 - rng.gen::<f64>()).ln() * mean_gap_ms).max(1.0) as i64;
                tokio::time::sleep(Duration::from_millis(gap as u64)).await;
                if clock.now() >= end {
                    break;
                }
                let asks = asks.clone();
                handles.push(tokio::spawn(async move {
                    if let Some(ms) = asks.ask(tenant, "idle-first-use-refused").await {
                        let mut t = asks.tally.lock().unwrap_or_else(|p| p.into_inner());
                        t.idle_latencies.push(ms);
                    }
                }));
            }
            for h in handles {
                let _ = h.await;
            }
        })
    };
    tokio::time::sleep(clock.now().until(end)).await;
    let _ = busy_task.await;
    let _ = idle_task.await;
    process.kill().await;

    let tally = std::mem::take(&mut *asks.tally.lock().unwrap_or_else(|p| p.into_inner()));
    let mut lat = tally.idle_latencies;
    lat.sort_unstable();
    let pick = |q: f64| -> i64 {
        if lat.is_empty() {
            return 0;
        }
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i]
    };
    let needed = capacity::renewals_per_second(
        spec.tenants as u64,
        spec.tenants as u64,
        lifetime_ms.saturating_mul(spec.tenants as i64),
        config.token.default_lifetime_seconds,
        config.refresh.at_fraction,
    );
    let meters = pbx.meters();
    let (violations, counts) = rec.violations();
    Ok(BudgetReport {
        seed,
        tenants: spec.tenants,
        busy: busy.len(),
        hours: spec.hours,
        wall: wall.elapsed(),
        digest: rec.digest(),
        demand_ratio: needed
            / capacity::budget_per_second(config.limits.per_host_requests_per_second),
        busy_asks: tally.busy_asks,
        busy_misses_after_warmup: tally.busy_misses,
        idle_first_uses: lat.len() as u64,
        idle_latency_ms: (pick(0.5), pick(0.99), lat.last().copied().unwrap_or(0)),
        pbx_requests: meters.iter().map(|m| m.requests).sum(),
        max_per_second: meters.iter().map(|m| m.max_per_second).max().unwrap_or(0),
        rate_limit: config.limits.per_host_requests_per_second,
        violations,
        violation_counts: counts.into_iter().collect(),
    })
}
