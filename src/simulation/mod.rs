//! Deterministic simulation of the renewal engine: the real broker, renewal
//! scheduler, policy, per-host limiter and SQLite store run in one process
//! against an in-process model of the provider
//! ([`provider_model::ProviderModel`], behind the same `PbxApi` trait as the
//! HTTP client; not the `pbx-sim` crate, which serves real HTTP), on a
//! current-thread tokio runtime whose clock is paused and jumps to the next
//! timer whenever every task waits. Hours of renewals take seconds, and every
//! random choice (the faults, the PBX's answers, the daemon's jitter, the
//! probes) comes from one seed: the same seed replays the same run, event for
//! event ([`SeedReport::digest`]).
//!
//! Faults ([`plan`]): PBX outages up to 30 minutes (refused, 503, hanging),
//! 429 storms with and without reset headers, slow answers (some past the
//! request timeout), malformed answers, revoked (and restored) credentials,
//! and kill -9 restarts of the daemon at random moments.
//!
//! Invariants: see [`checker`] (tokens held and served), [`pbx`] (rate and
//! concurrency limits at the PBX) and [`analysis`] (renewal timing).
//!
//! What makes it deterministic: the store runs its SQL inline
//! ([`crate::store::Store::open_inline`]), the broker's jitter is seeded
//! ([`crate::broker::Jitter`]), the scheduler's `select!` is biased, hosts
//! are spread in a fixed order, and this module iterates nothing unordered.
//!
//! Built with the `simulation` feature (tokio's paused clock) or in tests.
//! Does not: run the gRPC server or the cron jobs; `tests/e2e` covers them.

pub mod analysis;
pub mod budget;
pub mod checker;
pub mod plan;
pub mod process;
pub mod provider_model;
pub mod record;
#[cfg(test)]
mod tests;
pub mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::{SharedClock, TokioClock};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantId, TenantState};
use crate::policy::RenewalPolicy;
use crate::secret::Secret;
use crate::store::{NewTenant, Store, StoreError};

use checker::{CheckStats, Checker};
use plan::{FaultKind, Plan, T0};
use process::Process;
use provider_model::ProviderModel;
use record::{Recorder, Violation};
use world::World;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub tenants: usize,
    pub hosts: usize,
    pub hours: f64,
    /// `expires_in` of every token the PBX issues.
    pub lifetime_secs: u64,
    /// Draw faults (outages, storms, ...) or run a calm PBX.
    pub faults: bool,
    /// GetToken probes per simulated second.
    pub probes_per_sec: f64,
    /// The daemon's configuration (limits, refresh policy, timeouts).
    pub config: Config,
    /// Where the temporary databases go (default: /dev/shm if present).
    pub db_dir: Option<PathBuf>,
    /// A deliberate bug, to show the checker catches it.
    pub mutation: Option<Mutation>,
    /// A host whose renewal timeline to report after the run (read from
    /// the PBX's ledger afterwards, so it cannot change the run).
    pub watch: Option<analysis::Watch>,
}

/// Deliberate faults in the system under test, for the checker's own tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The PBX's real limit is below what the daemon is configured with.
    PbxLimitBelowConfig,
    /// The PBX omits `expires_in` and the configured default lifetime is
    /// longer than the real one.
    DefaultLifetimeTooLong,
}

impl SimSpec {
    /// The CI size: 2,000 tenants on 4 hosts, 6 simulated hours.
    pub fn small() -> Self {
        Self {
            tenants: 2_000,
            hosts: 4,
            hours: 6.0,
            lifetime_secs: 3600,
            faults: true,
            probes_per_sec: 5.0,
            config: Config::default(),
            db_dir: None,
            mutation: None,
            watch: None,
        }
    }

    /// The full size: 100,000 tenants on 20 hosts, 24 simulated hours.
    pub fn full() -> Self {
        Self {
            tenants: 100_000,
            hosts: 20,
            hours: 24.0,
            probes_per_sec: 20.0,
            ..Self::small()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot build the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot prepare the database directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("bad simulation input: {0}")]
    Input(String),
}

/// Everything one seed produced.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub tenants: usize,
    pub hosts: usize,
    pub hours: f64,
    pub wall: Duration,
    /// Digest of every event: equal for two runs of one seed.
    pub digest: u64,
    pub violations: Vec<Violation>,
    pub violation_counts: Vec<(&'static str, u64)>,
    pub outages: usize,
    pub storms: usize,
    pub slow: usize,
    pub malformed: usize,
    pub revocations: usize,
    pub restarts: usize,
    pub pbx_requests: u64,
    /// Per outcome name (see [`provider_model::OUTCOMES`]).
    pub outcomes: Vec<(&'static str, u64)>,
    /// Highest count of arrivals in one second at any host, and the limit.
    pub max_per_second: u32,
    pub rate_limit: u32,
    pub max_in_flight: u32,
    pub concurrency_limit: u32,
    pub checks: CheckStats,
    pub timing: analysis::Timing,
    /// The watched host's timeline (empty unless `SimSpec::watch`).
    pub timeline: Vec<analysis::TimelineRow>,
}

impl SeedReport {
    pub fn violation_total(&self) -> u64 {
        self.violation_counts.iter().map(|(_, n)| n).sum()
    }

    /// One line for logs and the summary table.
    pub fn line(&self) -> String {
        format!(
            "seed {}: {} violations; {} PBX requests (max {}/s of {}, {} in flight of {}); probes {} ok / {} refused / {} timed out; renewal gap {:.3} (min {:.3}, max {:.3}) x lifetime x at, {} late after failed answers (max {:.3}); max recovery {:.0} s; faults: {} outages, {} storms, {} slow, {} malformed, {} revoked, {} restarts; digest {:016x}; {:.1} s wall",
            self.seed,
            self.violation_total(),
            self.pbx_requests,
            self.max_per_second,
            self.rate_limit,
            self.max_in_flight,
            self.concurrency_limit,
            self.checks.probes_ok,
            self.checks.probes_refused,
            self.checks.probes_timed_out,
            self.timing.mean_ratio,
            self.timing.min_ratio,
            self.timing.max_ratio,
            self.timing.late_after_failure,
            self.timing.late_after_failure_max_ratio,
            self.checks.max_recovery_ms as f64 / 1000.0,
            self.outages,
            self.storms,
            self.slow,
            self.malformed,
            self.revocations,
            self.restarts,
            self.digest,
            self.wall.as_secs_f64(),
        )
    }
}

/// The fault plan `run_seed(spec, seed)` will follow (for `--show-plan`).
pub fn plan_for(spec: &SimSpec, seed: u64) -> Plan {
    let mut master = StdRng::seed_from_u64(seed);
    let _world: u64 = master.gen();
    Plan::draw(spec, &mut StdRng::seed_from_u64(master.gen()))
}

/// Runs one seed on its own paused current-thread runtime.
pub fn run_seed(spec: &SimSpec, seed: u64) -> Result<SeedReport, SimError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(SimError::Runtime)?;
    rt.block_on(run(spec, seed))
}

/// A database directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create(spec: &SimSpec, seed: u64) -> Result<TempDir, SimError> {
        let base = spec.db_dir.clone().unwrap_or_else(|| {
            let shm = PathBuf::from("/dev/shm");
            // tmpfs: fsync is free, and the simulation's "crashes" never
            // lose the page cache anyway, so durability costs nothing here.
            if shm.is_dir() {
                shm
            } else {
                std::env::temp_dir()
            }
        });
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("pbx-simulate-{}-{seed}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| SimError::Dir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(spec: &SimSpec, seed: u64) -> Result<SeedReport, SimError> {
    let wall = Instant::now();
    if spec.tenants == 0 || spec.hosts == 0 || spec.hours <= 0.0 {
        return Err(SimError::Input(
            "tenants, hosts and hours must be positive".into(),
        ));
    }
    if let Some(w) = spec.watch {
        let finite = w.from_s.is_finite() && w.to_s.is_finite() && w.step_s.is_finite();
        if w.host >= spec.hosts
            || !finite
            || w.step_s <= 0.0
            || w.to_s <= w.from_s
            || (w.to_s - w.from_s) / w.step_s > 100_000.0
        {
            return Err(SimError::Input(format!(
                "the watched host must be below {} and the watch window non-empty, with a positive step and at most 100,000 steps",
                spec.hosts
            )));
        }
    }
    let mut config = spec.config.clone();
    let mut master = StdRng::seed_from_u64(seed);
    let sub = |m: &mut StdRng| StdRng::seed_from_u64(m.gen());
    let world = Arc::new(World::new(
        spec.tenants,
        spec.hosts,
        spec.lifetime_secs,
        &mut sub(&mut master),
    ));
    let plan = Arc::new(Plan::draw(spec, &mut sub(&mut master)));
    let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
    let rec = Arc::new(Recorder::default());
    // PBX_SIMULATE_TRACE=PREFIX writes every event to PREFIX.<seed>.<n>, to
    // find where two runs that should be equal diverge.
    let trace_to = std::env::var_os("PBX_SIMULATE_TRACE");
    if trace_to.is_some() {
        rec.keep_trace();
    }
    let mut pbx_config = config.clone();
    if spec.mutation == Some(Mutation::PbxLimitBelowConfig) {
        pbx_config.limits.per_host_requests_per_second =
            (config.limits.per_host_requests_per_second / 2).max(1);
    }
    if spec.mutation == Some(Mutation::DefaultLifetimeTooLong) {
        config.token.default_lifetime_seconds = spec.lifetime_secs * 2;
    }
    let pbx = Arc::new(ProviderModel::new(
        clock.clone(),
        world.clone(),
        plan.clone(),
        rec.clone(),
        &pbx_config,
        sub(&mut master),
        spec.mutation == Some(Mutation::DefaultLifetimeTooLong),
    ));
    let dir = TempDir::create(spec, seed)?;
    let db = dir.0.join("pbx-tokend.db");
    let keyring = Arc::new(Keyring::from_key(&[0x5a; 32]));
    let initial = seed_tenants(
        spec,
        &config,
        &world,
        &pbx,
        &db,
        &keyring,
        &mut sub(&mut master),
    )
    .await?;

    let checker = Arc::new(Checker::new(
        clock.clone(),
        plan.clone(),
        world.clone(),
        pbx.clone(),
        rec.clone(),
        i64::from(config.token.default_min_valid_seconds) * 1000,
    ));
    let mut epoch = 0u32;
    let mut process = Process::start(
        &db,
        keyring.clone(),
        &config,
        clock.clone(),
        pbx.clone(),
        master.gen(),
    )
    .await?;
    checker.set_current(Some((epoch, process.broker.clone())));
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(checker.clone().watch_expiries(initial)));
    tasks.push(tokio::spawn(
        checker.clone().probe(spec.probes_per_sec, sub(&mut master)),
    ));
    for f in plan.faults.iter().filter(|f| f.disrupts) {
        tasks.push(tokio::spawn(
            checker.clone().measure_recovery(vec![f.host], f.window.end),
        ));
    }
    for r in &plan.restarts {
        tasks.push(tokio::spawn(
            checker
                .clone()
                .measure_recovery((0..plan.hosts).collect(), r.window.end),
        ));
    }
    // PBX_SIMULATE_PROGRESS=1 prints each simulated hour with the wall time
    // spent (a full-size seed runs for an hour or more). Off by default: an
    // extra timer task must not exist in runs whose digests are compared.
    if std::env::var_os("PBX_SIMULATE_PROGRESS").is_some() {
        let clock = clock.clone();
        let end = plan.end;
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut hour = 0;
            while clock.now() < end {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                hour += 1;
                eprintln!(
                    "seed {seed}: simulated hour {hour} done after {:.0} s of wall time",
                    started.elapsed().as_secs_f64()
                );
            }
        }));
    }
    for r in &plan.restarts {
        tokio::time::sleep(clock.now().until(r.window.start)).await;
        checker.set_current(None);
        rec.event(clock.now(), 3, i64::from(epoch), 0);
        process.kill().await;
        tokio::time::sleep(clock.now().until(r.window.end)).await;
        epoch += 1;
        process = Process::start(
            &db,
            keyring.clone(),
            &config,
            clock.clone(),
            pbx.clone(),
            master.gen(),
        )
        .await?;
        checker.set_current(Some((epoch, process.broker.clone())));
        rec.event(clock.now(), 4, i64::from(epoch), 0);
    }
    tokio::time::sleep(clock.now().until(plan.end)).await;
    checker.stop.cancel();
    checker.set_current(None);
    process.kill().await;
    for t in tasks {
        let _ = t.await;
    }

    if let (Some(prefix), Some(text)) = (trace_to, rec.trace()) {
        static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut path = prefix;
        path.push(format!(".{seed}.{n}"));
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("cannot write the event trace: {e}");
        }
    }
    let ledgers = pbx.ledgers();
    let timing = analysis::renewal_timing(&plan, &world, &ledgers, &config, spec.hours, &rec);
    let timeline = spec
        .watch
        .map(|w| analysis::host_timeline(&plan, &world, &ledgers, &config, w))
        .unwrap_or_default();
    let meters = pbx.meters();
    let outcomes = pbx.outcomes();
    let (violations, counts) = rec.violations();
    Ok(SeedReport {
        seed,
        tenants: spec.tenants,
        hosts: spec.hosts,
        hours: spec.hours,
        wall: wall.elapsed(),
        digest: rec.digest(),
        violations,
        violation_counts: counts.into_iter().collect(),
        outages: plan.count(|k| matches!(k, FaultKind::Outage(_))),
        storms: plan.count(|k| matches!(k, FaultKind::Storm(_))),
        slow: plan.count(|k| matches!(k, FaultKind::Slow { .. })),
        malformed: plan.count(|k| matches!(k, FaultKind::Malformed { .. })),
        revocations: plan.revocations.len(),
        restarts: plan.restarts.len(),
        pbx_requests: meters.iter().map(|m| m.requests).sum(),
        outcomes: provider_model::OUTCOMES
            .iter()
            .copied()
            .zip(outcomes)
            .collect(),
        max_per_second: meters.iter().map(|m| m.max_per_second).max().unwrap_or(0),
        rate_limit: pbx_config.limits.per_host_requests_per_second,
        max_in_flight: meters.iter().map(|m| m.max_in_flight).max().unwrap_or(0),
        concurrency_limit: pbx_config.limits.per_host_concurrent,
        checks: checker.snapshot(),
        timing,
        timeline,
    })
}

/// Inserts every tenant with a token issued some time before the start, as
/// if the daemon had been running for a while: the renewal points are then
/// spread over the lifetime instead of all falling together. Returns each
/// tenant's first token expiry.
async fn seed_tenants(
    spec: &SimSpec,
    config: &Config,
    world: &World,
    pbx: &ProviderModel,
    db: &std::path::Path,
    keyring: &Arc<Keyring>,
    rng: &mut StdRng,
) -> Result<Vec<crate::clock::UnixMs>, SimError> {
    let store = Store::open_inline(db, keyring.clone())?;
    let policy = RenewalPolicy::from_config(&config.refresh);
    let lifetime_ms = spec.lifetime_secs as i64 * 1000;
    let max_age = ((config.refresh.at_fraction - config.refresh.jitter_fraction)
        * lifetime_ms as f64)
        .max(1.0) as i64;
    let bases: Vec<PbxBaseUrl> = world
        .hosts
        .iter()
        .map(|h| PbxBaseUrl::from_trusted(&format!("https://{h}")))
        .collect::<Result<_, _>>()
        .map_err(|e| SimError::Input(e.to_string()))?;
    let mut expiries = Vec::with_capacity(spec.tenants);
    let mut batch = Vec::new();
    for i in 0..spec.tenants {
        let issued = T0.plus_ms(-rng.gen_range(0..max_age));
        let value = pbx.seed_token(i, issued);
        let token = AccessToken {
            value: Secret::new(value),
            token_type: "Bearer".into(),
            issued_at: issued,
            expires_at: issued.plus_ms(lifetime_ms),
        };
        expiries.push(token.expires_at);
        let renew_at = policy.renew_at(&token, rng.gen());
        batch.push(NewTenant {
            id: TenantId::parse(&world.tenant_ids[i])
                .map_err(|e| SimError::Input(e.to_string()))?,
            display_name: format!("Simulated tenant {i}"),
            base_url: bases[world.host_of(i)].clone(),
            state: TenantState::Active,
            trusted_app: Some(AppCredentials {
                client_id: world.client_ids[i].clone(),
                client_secret: Secret::new(world.secrets[i].clone()),
            }),
            public_app: None,
            token: Some(token),
            renew_at: Some(renew_at),
            now: T0,
        });
        if batch.len() == 5_000 {
            store.insert_tenants(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        store.insert_tenants(batch).await?;
    }
    store.close().await?;
    Ok(expiries)
}
