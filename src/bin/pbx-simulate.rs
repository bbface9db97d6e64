//! pbx-simulate: the deterministic simulation of the renewal engine (see
//! `pbx_tokend::simulation`) over many seeds. Exits non-zero when any seed
//! breaks an invariant, printing the seed and the command that replays it.
//!
//! ```sh
//! cargo run --release --features simulation --bin pbx-simulate -- \
//!     --tenants 100000 --hosts 20 --hours 24 --seeds 100
//! cargo run --release --features simulation --bin pbx-simulate -- --seed 17   # replay one
//! # demand above the budget: every tenant on one host, 20 % busy
//! cargo run --release --features simulation --bin pbx-simulate -- \
//!     --busy-share 0.2 --tenants 100000 --hours 3 --seeds 1
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use pbx_tokend::simulation::analysis::Watch;
use pbx_tokend::simulation::budget::{self, BudgetSpec};
use pbx_tokend::simulation::{plan_for, run_seed, SeedReport, SimSpec};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Deterministic simulation of pbx-tokend's renewal engine"
)]
struct Args {
    /// Tenants (spread evenly over the hosts).
    #[arg(long, default_value_t = 2_000)]
    tenants: usize,
    /// PBX hosts.
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Simulated hours per seed.
    #[arg(long, default_value_t = 6.0)]
    hours: f64,
    /// Token lifetime the PBX grants, in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime_secs: u64,
    /// How many seeds, starting at --first-seed.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run just this seed (replay).
    #[arg(long)]
    seed: Option<u64>,
    /// A calm PBX: no faults.
    #[arg(long)]
    calm: bool,
    /// GetToken probes per simulated second.
    #[arg(long)]
    probes_per_sec: Option<f64>,
    /// Seeds run in parallel (each on its own thread and database).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Directory for the temporary databases (default /dev/shm).
    #[arg(long)]
    db_dir: Option<PathBuf>,
    /// Print every violation kept, not only the counts.
    #[arg(long)]
    verbose: bool,
    /// Print each seed's fault plan before running it.
    #[arg(long)]
    show_plan: bool,
    /// After the run, print this host's renewal timeline (tokens issued and
    /// tenants waiting per step), read from the PBX's ledger; the run itself
    /// and its digest are unchanged.
    #[arg(long)]
    watch_host: Option<usize>,
    /// Start of the timeline, plan time in seconds (as `--show-plan` prints).
    #[arg(long, default_value_t = 0.0)]
    watch_from: f64,
    /// End of the timeline, plan time in seconds (default: the run's end).
    #[arg(long)]
    watch_to: Option<f64>,
    /// Step of the timeline in seconds.
    #[arg(long, default_value_t = 60.0)]
    watch_step: f64,
    /// Run the short-budget scenario instead of the fault campaign: every
    /// tenant on one host, this share of them busy (asked every
    /// --ask-every-secs), the rest idle until a random first use.
    #[arg(long)]
    busy_share: Option<f64>,
    /// Short-budget scenario: how often each busy tenant is asked for.
    #[arg(long, default_value_t = 300)]
    ask_every_secs: u64,
    /// Short-budget scenario: idle tenants' first uses per simulated second.
    #[arg(long, default_value_t = 1.0)]
    first_uses_per_sec: f64,
    /// Short-budget scenario: [refresh] idle_after_seconds.
    #[arg(long, default_value_t = 900)]
    idle_after_secs: u64,
    /// Short-budget scenario: [limits] per_host_requests_per_second (the
    /// provider model enforces the same).
    #[arg(long, default_value_t = 20)]
    per_host_rps: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut spec = SimSpec {
        tenants: args.tenants,
        hosts: args.hosts,
        hours: args.hours,
        lifetime_secs: args.lifetime_secs,
        faults: !args.calm,
        db_dir: args.db_dir.clone(),
        watch: args.watch_host.map(|host| Watch {
            host,
            from_s: args.watch_from,
            to_s: args.watch_to.unwrap_or(args.hours * 3600.0),
            step_s: args.watch_step,
        }),
        ..SimSpec::small()
    };
    if let Some(share) = args.busy_share {
        return run_budget(&args, spec, share);
    }
    spec.probes_per_sec =
        args.probes_per_sec
            .unwrap_or(if args.tenants >= 50_000 { 20.0 } else { 5.0 });
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    eprintln!(
        "simulating {} tenants on {} hosts for {} h, token lifetime {} s, {} seed(s), {} job(s){}",
        spec.tenants,
        spec.hosts,
        spec.hours,
        spec.lifetime_secs,
        seeds.len(),
        args.jobs,
        if spec.faults { "" } else { ", calm PBX" }
    );
    let next = AtomicU64::new(0);
    let reports: Mutex<Vec<SeedReport>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let spec = Arc::new(spec);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                if args.show_plan {
                    println!("seed {seed} plan:\n{}", plan_for(&spec, seed));
                }
                match run_seed(&spec, seed) {
                    Ok(r) => {
                        println!("{}", r.line());
                        if let (true, Some(gap)) = (args.verbose, &r.timing.max_gap) {
                            // When the largest gap was a retry, also say where
                            // the largest first-attempt gap lies, to look at
                            // it in the plan.
                            let first_try = match &r.timing.max_first_try_gap {
                                Some(at) if at != gap => format!(": {at}"),
                                _ => String::new(),
                            };
                            println!(
                                "  seed {seed}: largest undisturbed gap: {gap}; largest at the first attempt {:.3} x lifetime x at{first_try}",
                                r.timing.max_first_try_ratio
                            );
                        }
                        if let Some(w) = spec.watch.filter(|_| !r.timeline.is_empty()) {
                            println!("  seed {seed}: host {} timeline (plan time):", w.host);
                            for row in &r.timeline {
                                println!("    {row}");
                            }
                        }
                        if r.violation_total() > 0 {
                            print_failure(&r, &args);
                        }
                        reports.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    }
                    Err(e) => errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("seed {seed}: {e}")),
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    summary(&reports);
    for e in &errors {
        eprintln!("error: {e}");
    }
    let failed: Vec<u64> = reports
        .iter()
        .filter(|r| r.violation_total() > 0)
        .map(|r| r.seed)
        .collect();
    if !errors.is_empty() {
        eprintln!("{} seed(s) could not run", errors.len());
        std::process::exit(2);
    }
    if !failed.is_empty() {
        eprintln!("invariants broken in seed(s) {failed:?}");
        std::process::exit(1);
    }
    Ok(())
}

fn print_failure(r: &SeedReport, args: &Args) {
    println!(
        "  seed {} FAILED; replay: cargo run --release --features simulation --bin pbx-simulate -- --tenants {} --hosts {} --hours {} --lifetime-secs {}{} --seed {}",
        r.seed,
        args.tenants,
        args.hosts,
        args.hours,
        args.lifetime_secs,
        if args.calm { " --calm" } else { "" },
        r.seed
    );
    for (kind, n) in &r.violation_counts {
        println!("    {kind}: {n}");
    }
    let shown = if args.verbose { r.violations.len() } else { 5 };
    for v in r.violations.iter().take(shown) {
        println!("    {v}");
    }
}

fn summary(reports: &[SeedReport]) {
    if reports.is_empty() {
        return;
    }
    let n = reports.len() as f64;
    let total_violations: u64 = reports.iter().map(SeedReport::violation_total).sum();
    let requests: u64 = reports.iter().map(|r| r.pbx_requests).sum();
    let max_rate = reports.iter().map(|r| r.max_per_second).max().unwrap_or(0);
    let max_inflight = reports.iter().map(|r| r.max_in_flight).max().unwrap_or(0);
    let mean_ratio = reports.iter().map(|r| r.timing.mean_ratio).sum::<f64>() / n;
    let min_ratio = reports
        .iter()
        .map(|r| r.timing.min_ratio)
        .fold(f64::INFINITY, f64::min);
    let max_ratio = reports
        .iter()
        .map(|r| r.timing.max_ratio)
        .fold(0.0, f64::max);
    let max_recovery = reports
        .iter()
        .map(|r| r.checks.max_recovery_ms)
        .max()
        .unwrap_or(0);
    let unfinished: u64 = reports.iter().map(|r| r.checks.recoveries_unfinished).sum();
    let late: u64 = reports.iter().map(|r| r.timing.late_after_failure).sum();
    let late_max = reports
        .iter()
        .map(|r| r.timing.late_after_failure_max_ratio)
        .fold(0.0, f64::max);
    let probes: u64 = reports.iter().map(|r| r.checks.probes).sum();
    let wall: f64 = reports.iter().map(|r| r.wall.as_secs_f64()).sum();
    println!(
        "summary: {} seed(s), {} violation(s); {} PBX requests; max {}/s and {} in flight at any host (limits {} and {}); undisturbed renewal gap mean {:.3}, min {:.3}, max {:.3} x lifetime x at_fraction, {} late after failed answers (max {:.3}); {} probes; max recovery {:.0} s, {} unfinished; {:.0} s of seed wall time",
        reports.len(),
        total_violations,
        requests,
        max_rate,
        max_inflight,
        reports[0].rate_limit,
        reports[0].concurrency_limit,
        mean_ratio,
        min_ratio,
        max_ratio,
        late,
        late_max,
        probes,
        max_recovery as f64 / 1000.0,
        unfinished,
        wall
    );
}

/// The short-budget scenario (`--busy-share`), one seed after the other.
fn run_budget(args: &Args, mut spec: SimSpec, busy_share: f64) -> anyhow::Result<()> {
    spec.config.refresh.idle_after_seconds = args.idle_after_secs;
    spec.config.limits.per_host_requests_per_second = args.per_host_rps;
    spec.config
        .validate()
        .map_err(|e| anyhow::anyhow!("--idle-after-secs or --per-host-rps: {e}"))?;
    let budget = BudgetSpec {
        busy_share,
        ask_every_s: args.ask_every_secs,
        first_uses_per_sec: args.first_uses_per_sec,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    eprintln!(
        "short budget: {} tenants on one host for {} h, token lifetime {} s, {:.0} % busy (asked every {} s), idle_after_seconds {}, {} seed(s)",
        spec.tenants,
        spec.hours,
        spec.lifetime_secs,
        busy_share * 100.0,
        args.ask_every_secs,
        args.idle_after_secs,
        seeds.len()
    );
    let mut failed = Vec::new();
    for seed in seeds {
        let r = budget::run_seed(&spec, budget, seed)?;
        println!("{}", r.line());
        if r.violation_total() > 0 {
            for (kind, n) in &r.violation_counts {
                println!("  {kind}: {n}");
            }
            for v in r.violations.iter().take(if args.verbose { 20 } else { 3 }) {
                println!("  {v}");
            }
            failed.push(seed);
        }
    }
    if !failed.is_empty() {
        eprintln!("seeds with violations: {failed:?}");
        std::process::exit(1);
    }
    Ok(())
}
