//! The load itself: `--concurrency` tasks calling GetToken for random
//! tenants, closed loop or on the open-loop schedule of `rate.rs`, each
//! with its own tally, merged at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::GetTokenRequest;

use crate::codes::code_name;
use crate::series::{Series, TaskSlice};
use crate::{rate, short_duration, tenant_id, Args};

fn latency_histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What every task needs, shared.
pub struct Plan {
    prefix: String,
    first_index: u64,
    tenants: u64,
    id_width: usize,
    min_valid: u32,
    timeout: Duration,
    auth: Option<MetadataValue<Ascii>>,
    /// Open loop: calls/s, when the schedule starts, how many tasks share it.
    rate: Option<f64>,
    start: Instant,
    tasks: u64,
    measure_start: Instant,
    end: Instant,
    /// p99 per slice of the measured window.
    series: Series,
}

/// One task's counts for the measured window.
pub struct Tally {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Answers whose token had expired when the call was sent.
    pub expired: u64,
    /// Open loop: calls sent later than their due time (the task was busy).
    pub late: u64,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Tally {
            latency: latency_histogram()?,
            ok: 0,
            errors: BTreeMap::new(),
            expired: 0,
            late: 0,
        })
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency
            .add(&other.latency)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
        self.ok += other.ok;
        self.expired += other.expired;
        self.late += other.late;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        Ok(())
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn timestamp_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// Closed loop: calls back to back. Open loop (`plan.rate`): this task's
/// share of the schedule, call `slot`, `slot + tasks`, ...
async fn worker(
    mut client: TokenServiceClient<Channel>,
    plan: Arc<Plan>,
    slot: u64,
) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut slice = TaskSlice::new()?;
    let result = calls(&mut client, &plan, slot, &mut tally, &mut slice).await;
    slice.flush(&plan.series)?;
    result.map(|()| tally)
}

async fn calls(
    client: &mut TokenServiceClient<Channel>,
    plan: &Plan,
    slot: u64,
    tally: &mut Tally,
    slice: &mut TaskSlice,
) -> Result<()> {
    let mut rng = StdRng::from_entropy();
    let mut next = slot;
    loop {
        let due = match plan.rate {
            Some(r) => {
                let due = rate::due(plan.start, r, next);
                next += plan.tasks;
                if due >= plan.end {
                    return Ok(());
                }
                tokio::time::sleep_until(due).await;
                Some(due)
            }
            None => None,
        };
        let index = plan.first_index + rng.gen_range(0..plan.tenants);
        let mut req = Request::new(GetTokenRequest {
            tenant_id: tenant_id(&plan.prefix, index, plan.id_width),
            min_valid_seconds: plan.min_valid,
        });
        if let Some(auth) = &plan.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req.set_timeout(plan.timeout);
        let start = Instant::now();
        if start >= plan.end {
            return Ok(());
        }
        let sent_at = wall_ms();
        let result = tokio::time::timeout(plan.timeout, client.get_token(req)).await;
        let done = Instant::now();
        let origin = due.map_or(start, |d| rate::latency_origin(d, start));
        if origin < plan.measure_start || done > plan.end {
            continue;
        }
        if due.is_some_and(|d| rate::is_late(d, start)) {
            tally.late += 1;
        }
        let code = match result {
            Ok(Ok(answer)) => {
                let expires = answer.get_ref().expires_at.as_ref().map_or(0, timestamp_ms);
                if expires <= sent_at {
                    tally.expired += 1;
                }
                Code::Ok
            }
            Ok(Err(status)) => status.code(),
            Err(_) => Code::DeadlineExceeded,
        };
        if code == Code::Ok {
            tally.ok += 1;
            let us = micros(done - origin).max(1);
            tally.latency.saturating_record(us);
            slice.record(
                &plan.series,
                plan.series.slice_of(origin - plan.measure_start),
                us,
            )?;
        } else {
            *tally.errors.entry(code_name(code)).or_default() += 1;
        }
    }
}

pub async fn connect(endpoint: &str, n: u32) -> Result<Vec<Channel>> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid --endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut channels = Vec::new();
    for i in 0..n {
        // One connect() per channel: a separate TCP connection each.
        let ch = ep
            .connect()
            .await
            .with_context(|| format!("connection {} to {endpoint}", i + 1))?;
        channels.push(ch);
    }
    Ok(channels)
}

/// `authorization: Bearer <key>`, marked sensitive (never logged).
pub fn bearer(key: Option<&str>) -> Result<Option<MetadataValue<Ascii>>> {
    match key {
        Some(key) => {
            let mut v = MetadataValue::try_from(format!("Bearer {}", key.trim()))
                .map_err(|_| anyhow!("the API key contains characters not allowed in a header"))?;
            v.set_sensitive(true);
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

/// The merged tally and the latency series (`series.rs`) as JSON.
pub async fn run_load(args: &Args) -> Result<(Tally, serde_json::Value)> {
    let auth = bearer(args.api_key.as_deref())?;
    let channels = connect(&args.endpoint, args.connections).await?;
    let now = Instant::now();
    let measure_start = now + args.warmup;
    let plan = Arc::new(Plan {
        prefix: args.tenants_prefix.clone(),
        first_index: args.first_index,
        tenants: args.tenants,
        id_width: args.id_width,
        min_valid: args.min_valid,
        timeout: args.timeout,
        auth,
        rate: args.rate,
        start: now,
        tasks: u64::from(args.concurrency),
        measure_start,
        end: measure_start + args.duration,
        series: Series::new(args.series_interval),
    });
    if !args.json {
        eprintln!(
            "{} connections, {} tasks{}: warming up {}, then measuring {}",
            args.connections,
            args.concurrency,
            args.rate
                .map(|r| format!(" at {r} calls/s (open loop)"))
                .unwrap_or_default(),
            short_duration(args.warmup),
            short_duration(args.duration)
        );
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.concurrency {
        let idx = usize::try_from(i)? % channels.len().max(1);
        let channel = channels
            .get(idx)
            .cloned()
            .ok_or_else(|| anyhow!("no connection"))?;
        tasks.spawn(worker(
            TokenServiceClient::new(channel),
            plan.clone(),
            u64::from(i),
        ));
    }
    let mut total = Tally::new()?;
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined??)?;
    }
    Ok((total, plan.series.to_json()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() -> Result<()> {
        let mut a = Tally::new()?;
        a.ok = 2;
        a.latency.saturating_record(100);
        a.latency.saturating_record(200);
        a.errors.insert("NOT_FOUND", 1);
        let mut b = Tally::new()?;
        b.ok = 1;
        b.latency.saturating_record(1000);
        b.errors.insert("NOT_FOUND", 2);
        b.errors.insert("UNAVAILABLE", 1);
        a.merge(b)?;
        assert_eq!(a.ok, 3);
        assert_eq!(a.latency.len(), 3);
        assert_eq!(a.errors.get("NOT_FOUND"), Some(&3));
        assert_eq!(a.error_total(), 4);
        assert!(a.latency.max() >= 1000);
        Ok(())
    }
}
