//! pbx-loadgen: load generator for `TokenService.GetToken`.
//!
//! Opens `--connections` HTTP/2 connections, runs `--concurrency` tasks spread
//! over them, each calling GetToken for a random tenant in a closed loop.
//! After `--warmup`, every call that starts and ends inside the `--duration`
//! window is counted: requests/s, errors by gRPC code and the latency
//! percentiles of the successful calls (in microseconds, from per-task
//! HDR histograms merged at the end; `load.rs`). `--json` also writes the
//! recorded histogram, so several runs can be pooled.
//!
//! With `--rate N` the calls are open-loop at a steady N/s instead
//! (`rate.rs`). Every answer's `expires_at` is checked against this
//! machine's clock: a token that had expired when the call was sent is
//! counted as `expired_served` (the goal is zero).
//!
//! `--watch-propagation URL,URL,..` instead measures how long a renewed
//! token takes to reach every replica's WatchToken streams
//! (`propagation.rs`).
//!
//! `--make-h2load-body FILE --tenant ID` instead writes one pre-encoded gRPC
//! request for driving the server with h2load (see `--help`).

mod baseline;
mod load;
mod propagation;
mod rate;
mod seed;
mod series;

#[path = "../pbx-tokenctl/codes.rs"]
mod codes;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use prost::Message;
use serde_json::{json, Value};

use pbx_tokend::proto::GetTokenRequest;

use crate::load::{connect, run_load, Tally};

const AFTER_HELP: &str = "\
Tenant ids:
  Each call asks for <tenants-prefix><index> with index drawn uniformly from
  [first-index, first-index + tenants), zero-padded to --id-width digits:
  with the defaults, bench-000000 .. bench-099999 (e.g. bench-000042).

Output:
  requests/s over the measured window, errors by gRPC code, and the
  p50/p90/p99/p99.9/max latency of successful calls in microseconds.
  --json adds latency_histogram_us ([[us, count], ...]) for pooling runs.
  Exits 1 when no call succeeded.

h2load:
  To take this client out of the measurement, write a request body once and
  drive the server with h2load (nghttp2):
    pbx-loadgen --make-h2load-body getbody.bin --tenant bench-000042
    h2load -n 200000 -c 4 -m 50 \\
      -H 'content-type: application/grpc' -H 'te: trailers' \\
      -H 'authorization: Bearer KEY' \\
      -d getbody.bin http://127.0.0.1:50051/pbxtokend.v1.TokenService/GetToken
  (-c connections, -m concurrent streams per connection.) h2load counts
  HTTP status only: a gRPC error still answers HTTP 200, with the code in the
  grpc-status trailer, so check a sample with pbx-tokenctl first.";

/// Load generator for pbx-tokend's TokenService.GetToken.
#[derive(Debug, Parser)]
#[command(name = "pbx-loadgen", version, after_help = AFTER_HELP)]
struct Args {
    /// gRPC endpoint of the daemon.
    #[arg(
        long,
        env = "PBX_TOKEND_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    endpoint: String,

    /// API key sent as `authorization: Bearer <key>` (a READER key matching
    /// the benchmark tenants is enough).
    #[arg(
        long,
        env = "PBX_TOKEND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,

    /// Prefix of the tenant ids.
    #[arg(long, default_value = "bench-", value_name = "PREFIX")]
    tenants_prefix: String,

    /// Number of distinct tenants to spread the calls over.
    #[arg(long, default_value_t = 100_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    tenants: u64,

    /// Index of the first tenant.
    #[arg(long, default_value_t = 0, value_name = "N")]
    first_index: u64,

    /// Zero-pad the tenant index to this many digits (0 = no padding).
    #[arg(long, default_value_t = 6, value_name = "DIGITS")]
    id_width: usize,

    /// Calls in flight at any time (one task each, closed loop); with
    /// --rate, the most calls in flight (the tasks share the schedule).
    #[arg(long, default_value_t = 50, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    /// HTTP/2 connections; the tasks are spread over them round-robin.
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,

    /// Measured time, e.g. 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    duration: Duration,

    /// Unmeasured time before the measurement starts.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    warmup: Duration,

    /// Open loop: N calls/s on a fixed schedule, latency counted from when
    /// each call was due (see rate.rs). Without it: closed loop. With
    /// --seed-from-sim: register N tenants/s.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,

    /// Length of the slices of the latency series (`series` in the JSON
    /// output: p50/p99/max per slice), e.g. 10s.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    series_interval: Duration,

    /// GetTokenRequest.min_valid_seconds (0 = the daemon's default).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    min_valid: u32,

    /// Deadline of each call; late calls count as DEADLINE_EXCEEDED.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Duration,

    /// Runtime worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,

    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,

    /// Do not run: write a pre-encoded gRPC GetToken request body for h2load
    /// to FILE (needs --tenant).
    #[arg(long, value_name = "FILE", requires = "tenant")]
    make_h2load_body: Option<PathBuf>,

    /// Tenant id of the request written by --make-h2load-body.
    #[arg(long, value_name = "TENANT", requires = "make_h2load_body")]
    tenant: Option<String>,

    /// Do not run load: register --tenants benchmark tenants through
    /// CreateTenant against the simulator at this base URL (start it with
    /// `pbx-sim --trusted-apps N`; tenant <prefix>000000 gets app-000001).
    #[arg(long, value_name = "SIM_BASE_URL")]
    seed_from_sim: Option<String>,

    /// Do not run load: serve a bare tonic TokenService answering GetToken
    /// from a HashMap of --tenants tokens at ADDR (the comparison baseline).
    #[arg(long, value_name = "ADDR")]
    serve_baseline: Option<std::net::SocketAddr>,

    /// Do not run load: for --duration, watch --watch-sample tenants
    /// (spread over --tenants) on every replica in this comma-separated
    /// list of endpoints and report how long each renewed token took to
    /// reach all of them (JSON).
    #[arg(long, value_name = "URL,URL,..", value_delimiter = ',')]
    watch_propagation: Option<Vec<String>>,

    /// Tenants watched by --watch-propagation.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    watch_sample: u64,
}

// ---------------------------------------------------------------- helpers

/// "10s", "500ms", "2m", "1h", "1.5s"; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let factor = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * factor).map_err(|e| format!("{s:?}: {e}"))
}

/// `bench-000042`: prefix, then the index zero-padded to `width` digits.
fn tenant_id(prefix: &str, index: u64, width: usize) -> String {
    format!("{prefix}{index:0width$}")
}

/// The tenants `--watch-propagation` watches: `--watch-sample` of them,
/// evenly spread over `--tenants` (seeded in order, so neighbours renew
/// at about the same time; spreading samples the whole renewal cycle).
fn watch_sample(args: &Args) -> Vec<String> {
    let k = args.watch_sample.min(args.tenants);
    (0..k)
        .map(|i| {
            let index = args.first_index + i * args.tenants / k;
            tenant_id(&args.tenants_prefix, index, args.id_width)
        })
        .collect()
}

/// A gRPC length-prefixed message: compressed flag 0, 4-byte big-endian
/// length, then the message.
fn grpc_frame(message: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(message.len()).context("message too large for one gRPC frame")?;
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(out)
}

fn h2load_body(tenant: &str, min_valid_seconds: u32) -> Result<Vec<u8>> {
    let req = GetTokenRequest {
        tenant_id: tenant.to_string(),
        min_valid_seconds,
    };
    grpc_frame(&req.encode_to_vec())
}

/// "2s", "500ms", "1500ms": as a person would write it.
fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

// ---------------------------------------------------------------- report

fn per_second(n: u64, window: Duration) -> f64 {
    let secs = window.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 5] {
    [
        ("p50", h.value_at_quantile(0.50)),
        ("p90", h.value_at_quantile(0.90)),
        ("p99", h.value_at_quantile(0.99)),
        ("p99.9", h.value_at_quantile(0.999)),
        ("max", h.max()),
    ]
}

/// Every recorded latency value with its count, `[[us, count], ...]`:
/// lets a benchmark pool the calls of several runs and take the pooled
/// percentiles (one run's p99 swings with a few calls more or fewer near
/// the knee; the pooled one does not).
fn recorded_counts(h: &Histogram<u64>) -> Value {
    h.iter_recorded()
        .map(|v| {
            json!([
                h.highest_equivalent(v.value_iterated_to()),
                v.count_at_value()
            ])
        })
        .collect()
}

fn report_json(args: &Args, t: &Tally, series: Value) -> Value {
    let requests = t.ok + t.error_total();
    let latency: serde_json::Map<String, Value> = percentiles(&t.latency)
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .chain(std::iter::once((
            "mean".to_string(),
            json!(t.latency.mean()),
        )))
        .collect();
    json!({
        "endpoint": args.endpoint,
        "connections": args.connections,
        "concurrency": args.concurrency,
        "tenants": args.tenants,
        "tenants_prefix": args.tenants_prefix,
        "duration_seconds": args.duration.as_secs_f64(),
        "warmup_seconds": args.warmup.as_secs_f64(),
        "requests": requests,
        "ok": t.ok,
        "errors_total": t.error_total(),
        "errors": t.errors,
        "rate": args.rate,
        "expired_served": t.expired,
        "late_sends": t.late,
        "requests_per_second": per_second(requests, args.duration),
        "ok_per_second": per_second(t.ok, args.duration),
        "latency_us": latency,
        "latency_histogram_us": recorded_counts(&t.latency),
        "series_interval_seconds": args.series_interval.as_secs_f64(),
        "series": series,
    })
}

fn report_text(args: &Args, t: &Tally) -> String {
    let requests = t.ok + t.error_total();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20}{v}\n"));
    line("endpoint", args.endpoint.clone());
    line(
        "tenants",
        format!(
            "{} ({} .. {})",
            args.tenants,
            tenant_id(&args.tenants_prefix, args.first_index, args.id_width),
            tenant_id(
                &args.tenants_prefix,
                args.first_index + args.tenants - 1,
                args.id_width
            )
        ),
    );
    line(
        "load",
        format!(
            "{} connections, {} concurrent calls",
            args.connections, args.concurrency
        ),
    );
    line(
        "window",
        format!(
            "{} after {} warm-up",
            short_duration(args.duration),
            short_duration(args.warmup)
        ),
    );
    line(
        "requests",
        format!("{requests} ({:.1}/s)", per_second(requests, args.duration)),
    );
    line(
        "ok",
        format!("{} ({:.1}/s)", t.ok, per_second(t.ok, args.duration)),
    );
    line("errors", t.error_total().to_string());
    line("expired served", t.expired.to_string());
    if let Some(r) = args.rate {
        line("open loop", format!("{r} calls/s, {} sent late", t.late));
    }
    for (code, n) in &t.errors {
        line(&format!("  {code}"), n.to_string());
    }
    if t.latency.is_empty() {
        out.push_str("latency             no successful calls\n");
        return out;
    }
    out.push_str("latency of successful calls (µs):\n");
    for (name, v) in percentiles(&t.latency) {
        out.push_str(&format!("  {name:<18}{v}\n"));
    }
    out
}

// ---------------------------------------------------------------- main

fn write_h2load_body(path: &PathBuf, tenant: &str, min_valid: u32) -> Result<()> {
    let body = h2load_body(tenant, min_valid)?;
    std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} bytes to {}; now run for example:\n  \
         h2load -n 200000 -c 4 -m 50 -H 'content-type: application/grpc' -H 'te: trailers' \
         -H 'authorization: Bearer KEY' -d {} http://127.0.0.1:50051/pbxtokend.v1.TokenService/GetToken",
        body.len(),
        path.display(),
        path.display()
    );
    Ok(())
}

fn run(args: Args) -> Result<ExitCode> {
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            bail!("--rate must be a positive number of calls per second");
        }
    }
    if let Some(path) = &args.make_h2load_body {
        let tenant = args
            .tenant
            .as_deref()
            .ok_or_else(|| anyhow!("--make-h2load-body needs --tenant"))?;
        write_h2load_body(path, tenant, args.min_valid)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(addr) = args.serve_baseline {
        let runtime = runtime(&args)?;
        runtime.block_on(baseline::serve(
            addr,
            &args.tenants_prefix,
            args.tenants,
            args.first_index,
            args.id_width,
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(sim) = &args.seed_from_sim {
        let runtime = runtime(&args)?;
        runtime.block_on(async {
            let channels = connect(&args.endpoint, args.connections).await?;
            seed::seed(
                channels,
                seed::SeedPlan {
                    count: args.tenants,
                    first_index: args.first_index,
                    prefix: args.tenants_prefix.clone(),
                    width: args.id_width,
                    sim_base_url: sim.clone(),
                    concurrency: args.concurrency,
                    api_key: args.api_key.clone(),
                    rate: args.rate,
                },
            )
            .await
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    if args.series_interval.is_zero() {
        bail!("--series-interval must be more than 0");
    }
    if let Some(endpoints) = &args.watch_propagation {
        let plan = propagation::WatchPlan {
            endpoints: endpoints.clone(),
            tenants: watch_sample(&args),
            auth: load::bearer(args.api_key.as_deref())?,
            duration: args.duration,
        };
        let report = runtime(&args)?.block_on(propagation::run(plan))?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = runtime(&args)?;
    let (tally, series) = runtime.block_on(run_load(&args))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&args, &tally, series))?
        );
    } else {
        print!("{}", report_text(&args, &tally));
    }
    Ok(if tally.ok > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn runtime(args: &Args) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    Ok(builder.enable_all().build()?)
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn args_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn short_durations() {
        assert_eq!(short_duration(Duration::ZERO), "0s");
        assert_eq!(short_duration(Duration::from_secs(10)), "10s");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn tenant_ids() {
        assert_eq!(tenant_id("bench-", 42, 6), "bench-000042");
        assert_eq!(tenant_id("bench-", 1_234_567, 6), "bench-1234567");
        assert_eq!(tenant_id("t", 7, 0), "t7");
    }

    #[test]
    fn h2load_body_is_a_grpc_frame() -> Result<()> {
        let body = h2load_body("bench-000042", 0)?;
        // field 1 (tenant_id), wire type 2, length 12, then the bytes.
        let mut expected = vec![0u8, 0, 0, 0, 14, 0x0a, 12];
        expected.extend_from_slice(b"bench-000042");
        assert_eq!(body, expected);
        let decoded = GetTokenRequest::decode(&body[5..])?;
        assert_eq!(decoded.tenant_id, "bench-000042");

        let with_min = h2load_body("a", 30)?;
        assert_eq!(with_min, vec![0, 0, 0, 0, 5, 0x0a, 1, b'a', 0x10, 30]);
        Ok(())
    }

    #[test]
    fn frame_length_is_big_endian() -> Result<()> {
        let msg = vec![7u8; 300];
        let f = grpc_frame(&msg)?;
        assert_eq!(&f[..5], &[0, 0, 0, 1, 44]);
        assert_eq!(f.len(), 305);
        Ok(())
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(100, Duration::from_secs(10)), 10.0);
        assert_eq!(per_second(100, Duration::ZERO), 0.0);
    }
}
