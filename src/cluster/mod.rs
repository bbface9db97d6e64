//! Keeping this replica's caches current when several replicas share one
//! database: the broker's tenants and tokens and the API-client key table
//! follow the database's change feed (`store::ChangeFeed`).
//!
//! How: the backend's LISTEN connection (`store/postgres/listen.rs`) sends
//! hints; on every hint, on every (re)connect and every
//! [`POLL_INTERVAL`] anyway, [`ChangeSync`] reads the changes after the
//! last one it applied (and re-reads gaps, `position.rs`), reloads each
//! changed tenant from the database into the broker (which publishes a
//! newer token to WatchToken streams and ends streams of a disabled or
//! deleted tenant) and reloads the key table when a client changed. A lost
//! notification costs at most one poll interval, never correctness. A
//! replica that fell behind the pruned feed (cut off for longer than
//! [`KEEP_CHANGES_MS`]) reloads everything. Each pass ends with a
//! heartbeat in the `replicas` table carrying the id applied, which admin
//! calls wait on (`crate::replicas`). It records the metrics
//! `change_feed_listener_connected` (from the listener's hints) and
//! `change_feed_lag_seconds` (each change's age on the database clock when
//! read, plus the time this replica took to apply it: no clocks compared).
//!
//! On SQLite there is no feed (one process): nothing runs.
//!
//! Does not: write tenants or tokens, or decide anything about them.

mod position;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::Clients;
use crate::broker::Broker;
use crate::clock::{SharedClock, UnixMs};
use crate::domain::TenantId;
use crate::metrics::Metrics;
use crate::store::{ChangeKind, Hint, Store, StoreError};

pub use position::Position;

/// The catch-up read when no hint came.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often the heartbeat is written without changes.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long change rows are kept.
pub const KEEP_CHANGES_MS: i64 = 3_600_000;

/// How often a replica prunes old change rows.
const PRUNE_EVERY_MS: i64 = 60_000;

/// Changes read per query.
const BATCH: u32 = 1_000;

/// A call asks for a pass now (`broker/catch_up.rs`).
async fn nudged(broker: &Broker) {
    broker.catch_up().nudged().await
}

/// Notes every `catch_up::TICK` that the process runs, so a resumed
/// replica knows it was paused (`broker/catch_up.rs`). Apart from the
/// passes, which can hang on a silent network while the process runs.
pub async fn watch_for_pauses(broker: Arc<Broker>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(crate::broker::catch_up::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // No more ticks: without this, calls still draining would
                // take the silence for a pause.
                broker.catch_up().disable();
                return;
            }
            _ = tick.tick() => broker.catch_up().tick(),
        }
    }
}

/// The cache sync of one replica.
pub struct ChangeSync {
    store: Store,
    broker: Arc<Broker>,
    clients: Arc<Clients>,
    clock: SharedClock,
    name: String,
    position: Position,
    last_prune: UnixMs,
    failing: bool,
    metrics: Option<Arc<Metrics>>,
}

impl ChangeSync {
    /// The sync, starting after change `start_at` (read before the cache
    /// was filled), or `None` when the backend has no feed (SQLite).
    pub fn new(
        store: Store,
        broker: Arc<Broker>,
        clients: Arc<Clients>,
        clock: SharedClock,
        name: String,
        start_at: i64,
    ) -> Option<(ChangeSync, mpsc::Receiver<Hint>)> {
        let hints = store.change_hints()?;
        Some((
            ChangeSync {
                store,
                broker,
                clients,
                clock,
                name,
                position: Position::at(start_at),
                last_prune: UnixMs(0),
                failing: false,
                metrics: None,
            },
            hints,
        ))
    }

    /// Records the change-feed metrics into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `cancel`.
    pub async fn run(mut self, mut hints: mpsc::Receiver<Hint>, cancel: CancellationToken) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                hint = hints.recv() => {
                    match hint {
                        // The listener is gone for good (cannot happen
                        // while we hold the receiver): keep polling.
                        None => hints = mpsc::channel(1).1,
                        Some(Hint::Disconnected) => {
                            self.listener_connected(false);
                            continue;
                        }
                        Some(Hint::Connected) => self.listener_connected(true),
                        Some(Hint::Notified) => {}
                    }
                    self.pass().await;
                }
                _ = poll.tick() => {
                    self.pass().await;
                    self.prune().await;
                }
                _ = beat.tick() => self.heartbeat().await,
                // This replica was paused (a call or the ticker found
                // out): read the feed now.
                _ = nudged(&self.broker) => self.pass().await,
            }
        }
    }

    fn listener_connected(&self, up: bool) {
        if let Some(m) = &self.metrics {
            m.set_change_feed_listener(up);
        }
    }

    /// One catch-up and the heartbeat after it; errors are logged once per
    /// failing streak (the next hint or poll tries again).
    async fn pass(&mut self) {
        let started = self.broker.catch_up().pass_starts();
        let read = self.catch_up().await;
        self.broker.catch_up().pass_done(started);
        match read {
            Ok(()) => {
                if self.failing {
                    tracing::info!("replica cache sync: reading the change feed again");
                }
                self.failing = false;
                self.heartbeat().await;
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("replica cache sync: cannot read the change feed ({e}); tokens held are served, changes made on other replicas arrive when the database answers again");
                }
                self.failing = true;
            }
        }
    }

    /// Reads and applies every change after the position.
    pub async fn catch_up(&mut self) -> Result<(), StoreError> {
        loop {
            let after = self.position.highest();
            let batch = self
                .store
                .changes_after(after, self.position.gaps(), BATCH)
                .await?;
            let read_at = std::time::Instant::now();
            let first_new = batch.iter().map(|c| c.id).find(|id| *id > after);
            if let Some(first) = first_new {
                if first > after + 1 && self.pruned_past(after).await? {
                    return self.reload_all().await;
                }
            }
            let new = batch.iter().filter(|c| c.id > after).count();
            let mut tenants = BTreeSet::new();
            let mut clients = false;
            for c in &batch {
                match c.kind {
                    ChangeKind::Tenant => {
                        tenants.insert(c.key.clone());
                    }
                    ChangeKind::Client => clients = true,
                }
            }
            let ids: Vec<TenantId> = tenants
                .into_iter()
                .filter_map(|key| match TenantId::parse(&key) {
                    Ok(id) => Some(id),
                    Err(_) => {
                        tracing::warn!("change feed: {key:?} is not a tenant id; skipped");
                        None
                    }
                })
                .collect();
            // One read for the batch: a burst of renewals (this replica's
            // own included) costs one statement, not one per tenant.
            let stored = self.store.cached_tenants(&ids).await?;
            for (id, stored) in ids.iter().zip(stored) {
                self.broker.apply_stored(id, stored);
            }
            if clients {
                self.clients.reload().await?;
            }
            if let Some(m) = &self.metrics {
                // Every row read is new here (past the position, or a gap
                // that just became visible), and now in the cache.
                let applying = read_at.elapsed();
                for c in &batch {
                    let age = Duration::from_millis(u64::try_from(c.age_ms).unwrap_or(0));
                    m.change_applied(age + applying);
                }
            }
            let ids: Vec<i64> = batch.iter().map(|c| c.id).collect();
            let now = self.clock.now();
            self.position.observe(&ids, now);
            self.position.expire(now);
            if new < BATCH as usize {
                return Ok(());
            }
        }
    }

    /// Whether changes after `after` were pruned before this replica read
    /// them.
    async fn pruned_past(&self, after: i64) -> Result<bool, StoreError> {
        Ok(self
            .store
            .oldest_change_id()
            .await?
            .is_some_and(|oldest| oldest > after + 1))
    }

    /// Fell behind the kept feed: everything again.
    async fn reload_all(&mut self) -> Result<(), StoreError> {
        tracing::warn!("replica cache sync: changes were pruned before this replica read them (cut off for over an hour?); reloading every tenant and client");
        let latest = self.store.latest_change_id().await?;
        let load = self.store.load_cache_checked().await?;
        self.broker.resync(load.tenants);
        self.clients.reload().await?;
        self.position.reset(latest);
        Ok(())
    }

    async fn heartbeat(&mut self) {
        let applied = self.position.applied(self.clock.now());
        if let Err(e) = self.store.replica_heartbeat(&self.name, applied).await {
            tracing::debug!("replica heartbeat not written: {e}");
        }
    }

    async fn prune(&mut self) {
        let now = self.clock.now();
        if now.0 - self.last_prune.0 < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune = now;
        match self.store.prune_changes(KEEP_CHANGES_MS).await {
            Ok(n) if n > 0 => tracing::debug!(pruned = n, "old change rows pruned"),
            Ok(_) => {}
            Err(e) => tracing::debug!("change rows not pruned: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
