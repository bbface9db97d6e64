//! `--watch-propagation URL,URL,..`: how long a renewed token takes to
//! reach every replica (the cluster campaign, `scripts/cluster-campaign.sh`).
//!
//! Opens a WatchToken stream on every endpoint for each of `--watch-sample`
//! tenants spread evenly over `--tenants`, and notes when each replica first
//! streams each new token. A token's propagation time is the last replica's
//! first sighting minus the first replica's: the renewing replica's own
//! stream is the reference, so the figure is what replication adds, not the
//! PBX round trip. Only tokens every replica streamed as a live update
//! count: the first message of a (re)opened stream is the token the replica
//! already held, which says nothing about when it arrived, so a token first
//! seen that way on any replica is counted as `resynced`, not measured.
//! Tokens are compared in memory only (a hash); nothing is printed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use pbx_tokend::proto::token_service_client::TokenServiceClient;
use pbx_tokend::proto::WatchTokenRequest;

/// Streams per HTTP/2 connection: below the daemon's default
/// `max_watch_streams_per_connection` (192).
const STREAMS_PER_CONNECTION: usize = 150;

/// One sighting of a token on one replica.
#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    /// The first message of a (re)opened stream: not a live update.
    resync: bool,
}

/// Sightings per (tenant, token hash), one slot per replica.
type Sightings = HashMap<(usize, u64), Vec<Option<Seen>>>;

pub struct WatchPlan {
    pub endpoints: Vec<String>,
    pub tenants: Vec<String>,
    pub auth: Option<MetadataValue<Ascii>>,
    pub duration: Duration,
}

fn token_hash(token: &str) -> u64 {
    let mut h = DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

async fn channels(endpoint: &str, n: usize) -> Result<Vec<Channel>> {
    let ep = Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    // Lazy: a replica that is down now (killed by the campaign) is
    // connected to when it is back; tonic reconnects by itself.
    Ok((0..n.max(1)).map(|_| ep.connect_lazy()).collect())
}

/// Watches one tenant on one replica until `end`, reopening the stream
/// after an error.
async fn watch_one(
    channel: Channel,
    plan: Arc<WatchPlan>,
    replica: usize,
    tenant: usize,
    seen: Arc<Mutex<Sightings>>,
    end: Instant,
) {
    let replicas = plan.endpoints.len();
    let Some(tenant_id) = plan.tenants.get(tenant).cloned() else {
        return;
    };
    while Instant::now() < end {
        let mut client = TokenServiceClient::new(channel.clone());
        let mut req = Request::new(WatchTokenRequest {
            tenant_id: tenant_id.clone(),
        });
        if let Some(auth) = &plan.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        let opened = tokio::time::timeout_at(end, client.watch_token(req)).await;
        let Ok(Ok(response)) = opened else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let mut stream = response.into_inner();
        let mut first = true;
        while let Ok(Ok(Some(token))) = tokio::time::timeout_at(end, stream.message()).await {
            let at = Instant::now();
            let key = (tenant, token_hash(&token.access_token));
            let mut map = seen.lock().unwrap_or_else(|e| e.into_inner());
            let slots = map.entry(key).or_insert_with(|| vec![None; replicas]);
            if let Some(slot) = slots.get_mut(replica) {
                if slot.is_none() {
                    *slot = Some(Seen { at, resync: first });
                }
            }
            first = false;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What the sightings add up to.
fn summarize(seen: &Sightings, replicas: usize) -> Result<Value> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    let (mut resynced, mut partial, mut over_1s) = (0u64, 0u64, 0u64);
    for slots in seen.values() {
        let got: Vec<Seen> = slots.iter().flatten().copied().collect();
        if got.len() < replicas {
            partial += 1;
            continue;
        }
        if got.iter().any(|s| s.resync) {
            resynced += 1;
            continue;
        }
        let first = got.iter().map(|s| s.at).min();
        let last = got.iter().map(|s| s.at).max();
        if let (Some(first), Some(last)) = (first, last) {
            let us = u64::try_from((last - first).as_micros()).unwrap_or(u64::MAX);
            if us > 1_000_000 {
                over_1s += 1;
            }
            hist.saturating_record(us.max(1));
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "replicas": replicas,
        "tokens_measured": hist.len(),
        "tokens_resynced_after_reconnect": resynced,
        "tokens_not_seen_on_every_replica": partial,
        "measured_over_1s": over_1s,
        "propagation_ms": {
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99),
            "max": hist.max() as f64 / 1000.0,
        },
    }))
}

pub async fn run(plan: WatchPlan) -> Result<Value> {
    let plan = Arc::new(plan);
    let seen: Arc<Mutex<Sightings>> = Arc::default();
    let end = Instant::now() + plan.duration;
    let per_replica = plan.tenants.len().div_ceil(STREAMS_PER_CONNECTION);
    let mut tasks = tokio::task::JoinSet::new();
    for (r, endpoint) in plan.endpoints.iter().enumerate() {
        let chans = channels(endpoint, per_replica).await?;
        for t in 0..plan.tenants.len() {
            let channel = chans
                .get(t / STREAMS_PER_CONNECTION)
                .cloned()
                .ok_or_else(|| anyhow!("no connection"))?;
            tasks.spawn(watch_one(channel, plan.clone(), r, t, seen.clone(), end));
        }
    }
    while tasks.join_next().await.is_some() {}
    let map = seen.lock().unwrap_or_else(|e| e.into_inner());
    summarize(&map, plan.endpoints.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64, resync: bool) -> Option<Seen> {
        Some(Seen {
            at: base + Duration::from_millis(ms),
            resync,
        })
    }

    #[test]
    fn only_live_updates_on_every_replica_are_measured() -> Result<()> {
        let b = Instant::now();
        let mut s: Sightings = HashMap::new();
        s.insert(
            (0, 1),
            vec![at(b, 0, false), at(b, 5, false), at(b, 20, false)],
        );
        s.insert(
            (0, 2),
            vec![at(b, 0, true), at(b, 5, false), at(b, 9, false)],
        );
        s.insert((1, 3), vec![at(b, 0, false), None, at(b, 9, false)]);
        s.insert(
            (1, 4),
            vec![at(b, 0, false), at(b, 1500, false), at(b, 9, false)],
        );
        let v = summarize(&s, 3)?;
        assert_eq!(v["tokens_measured"], 2);
        assert_eq!(v["tokens_resynced_after_reconnect"], 1);
        assert_eq!(v["tokens_not_seen_on_every_replica"], 1);
        assert_eq!(v["measured_over_1s"], 1);
        let max = v["propagation_ms"]["max"].as_f64().unwrap_or(0.0);
        assert!((1499.0..1502.0).contains(&max), "{max}");
        Ok(())
    }
}
