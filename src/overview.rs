//! The numbers an operator looks at first, gathered in one place so the
//! Prometheus scrape and `AdminService.GetServerStatus` (`pbx-tokenctl
//! status`) always agree: tenants by state, tokens near or past expiry, the
//! renewal queue, limiter waits and renewal demand (busy and idle tenants)
//! per host, database writability, backups.
//!
//! Does not: change anything, or serve it (api/metrics_http.rs and api/admin.rs
//! do). Reads go to the store's reader connections, never the writer.
//! Its store, clock and limiter come in [`OverviewParts`], not through the
//! broker (which it asks only for its own numbers: settings, unstored tokens).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::broker::Broker;
use crate::clock::{SharedClock, UnixMs};
use crate::domain::{Tenant, TenantState};
use crate::health::Health;
use crate::metrics::ScrapeValues;
use crate::pbx::limiter::HostLimiters;
use crate::renewal::demand::HostDemand;
use crate::renewal::duty::Duty;
use crate::renewal::scheduler::SchedulerStatus;
use crate::store::{QueueStats, Store, StoreError, TokenHealth};

/// A job due for longer than this is overdue: the scheduler should have
/// started it long ago (same threshold as the maintenance sweep's warning).
pub const OVERDUE_GRACE_MS: i64 = 60_000;

/// What [`Overview`] reads, handed over when it is built.
pub struct OverviewParts {
    pub broker: Arc<Broker>,
    pub store: Store,
    pub clock: SharedClock,
    /// Read only: waits and throttles per host.
    pub limiter: Arc<HostLimiters>,
    pub scheduler: Arc<SchedulerStatus>,
    pub health: Arc<Health>,
    pub backup_dir: PathBuf,
    /// Several replicas on PostgreSQL: the lease rounds say whether the
    /// database is reachable. `None` on one node.
    pub duty: Option<Arc<Duty>>,
    /// This replica's name (`[cluster] replica_name` or host:port).
    pub replica_name: String,
}

pub struct Overview {
    broker: Arc<Broker>,
    store: Store,
    clock: SharedClock,
    limiter: Arc<HostLimiters>,
    scheduler: Arc<SchedulerStatus>,
    health: Arc<Health>,
    started_at: UnixMs,
    backup_dir: PathBuf,
    duty: Option<Arc<Duty>>,
    replica_name: String,
}

/// One replica as `GetServerStatus` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub name: String,
    pub last_heartbeat: UnixMs,
    /// Hosts whose renewal duty (lease) it holds.
    pub renewing_hosts: Vec<String>,
    /// Heartbeat within the last [`REPLICA_LIVE_MS`].
    pub live: bool,
}

/// A replica whose heartbeat is older than this is shown as not live.
pub const REPLICA_LIVE_MS: i64 = 5_000;

/// How long the figures read for status and metrics may take on a
/// networked database before this replica counts as cut off: a database
/// that accepts connections but never answers (a blackholed link that
/// keeps TCP alive) must not hang GetServerStatus or a scrape.
const READS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Replicas silent for longer than this are no longer listed.
pub const REPLICA_KEEP_MS: i64 = 24 * 3_600_000;

/// Per PBX host, from the limiter and the scheduler's last demand
/// assessment (renewal/demand.rs).
#[derive(Debug, Clone, PartialEq)]
pub struct HostStatus {
    pub host: String,
    pub rate_limit_waits: u64,
    pub throttled_until: Option<UnixMs>,
    /// Renewal demand / budget (0 before the first assessment).
    pub demand_ratio: f64,
    /// Renewing tenants asked for within idle_after (or streaming), and not.
    pub busy: u64,
    pub idle: u64,
}

#[derive(Debug, Clone)]
pub struct ServerOverview {
    pub now: UnixMs,
    pub started_at: UnixMs,
    pub database_writable: bool,
    pub tenants_by_state: Vec<(TenantState, u64)>,
    pub tokens: TokenHealth,
    pub queue: QueueStats,
    pub renewals_in_flight: u64,
    pub hosts: Vec<HostStatus>,
    /// The newest file in the backup directory, and when it was written.
    pub last_backup: Option<(PathBuf, UnixMs)>,
    /// Tokens fetched but not written to the database (served from memory).
    pub tokens_unstored: u64,
    /// Several replicas: whether this replica reaches its database (the
    /// figures read from it are empty while it does not). Always true on
    /// one SQLite node.
    pub database_reachable: bool,
}

impl Overview {
    pub fn new(parts: OverviewParts) -> Self {
        let OverviewParts {
            broker,
            store,
            clock,
            limiter,
            scheduler,
            health,
            backup_dir,
            duty,
            replica_name,
        } = parts;
        let started_at = clock.now();
        Self {
            broker,
            store,
            clock,
            limiter,
            scheduler,
            health,
            started_at,
            backup_dir,
            duty,
            replica_name,
        }
    }

    /// Whether this replica reaches its database: on PostgreSQL, the last
    /// lease round and heartbeat worked; always true on one SQLite node.
    pub fn database_reachable(&self) -> bool {
        match &self.duty {
            Some(duty) => duty.database_reachable() && self.health.db_writable(),
            None => true,
        }
    }

    /// "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        self.store.backend_name()
    }

    /// Every replica seen in the last day, by name (not part of
    /// [`Overview::collect`]: the metrics scrape does not need it). A
    /// single SQLite node is one replica, itself, renewing every host.
    pub async fn replicas(&self) -> Result<Vec<ReplicaView>, StoreError> {
        let rows = self
            .store
            .replicas(REPLICA_LIVE_MS, REPLICA_KEEP_MS)
            .await?;
        if rows.is_empty() && self.store.backend_name() == "sqlite" {
            let hosts = self.store.host_loads().await?;
            return Ok(vec![ReplicaView {
                name: self.replica_name.clone(),
                last_heartbeat: self.clock.now(),
                renewing_hosts: hosts
                    .into_iter()
                    .filter(|h| h.renewing_tenants > 0)
                    .map(|h| h.host)
                    .collect(),
                live: true,
            }]);
        }
        Ok(rows
            .into_iter()
            .map(|r| ReplicaView {
                name: r.name,
                last_heartbeat: r.last_heartbeat,
                renewing_hosts: r.renewing_hosts,
                live: r.live,
            })
            .collect())
    }

    pub async fn collect(&self) -> Result<ServerOverview, StoreError> {
        let store = &self.store;
        let now = self.clock.now();
        let policy = self.broker.settings().policy.clone();
        // The share of a lifetime after the earliest planned renewal point.
        let window = (1.0 - policy.at_fraction + policy.jitter_fraction).clamp(0.0, 1.0);
        let reads = async {
            Ok::<_, StoreError>((
                store.count_by_state().await?,
                store.token_health(now, window).await?,
                store.queue_stats(now, OVERDUE_GRACE_MS).await?,
            ))
        };
        let mut database_reachable = self.database_reachable();
        let reads = async {
            // Known to be cut off (the lease rounds, bounded, failed): no
            // read that would wait on the database; figures empty.
            if self.duty.is_some() && !database_reachable {
                return Err(StoreError::Unavailable("cut off from the database".into()));
            }
            match self.duty {
                Some(_) => tokio::time::timeout(READS_WAIT, reads)
                    .await
                    .unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(format!(
                            "no answer within {READS_WAIT:?}"
                        )))
                    }),
                None => reads.await,
            }
        };
        let (tenants_by_state, tokens, queue) = match reads.await {
            Ok(r) => r,
            // A replica cut off from a networked database still answers
            // (it serves tokens from memory): the figures are empty and
            // `database_reachable` says why.
            Err(e) if e.is_transient() && self.duty.is_some() => {
                database_reachable = false;
                Default::default()
            }
            Err(e) => return Err(e),
        };
        let limiter = &self.limiter;
        // Hosts the limiter has seen and hosts with renewing tenants (not
        // asked since the start), in host order.
        let demand: BTreeMap<String, HostDemand> = self
            .scheduler
            .demand()
            .into_iter()
            .map(|d| (d.host.clone(), d))
            .collect();
        let mut names: BTreeSet<String> = limiter.hosts().into_iter().collect();
        names.extend(demand.keys().cloned());
        let hosts = names
            .into_iter()
            .map(|host| {
                let d = demand.get(&host);
                HostStatus {
                    rate_limit_waits: limiter.waits_total(&host),
                    throttled_until: limiter.throttled_until(&host),
                    demand_ratio: d.map_or(0.0, |d| d.demand_ratio),
                    busy: d.map_or(0, |d| d.busy),
                    idle: d.map_or(0, |d| d.idle),
                    host,
                }
            })
            .collect();
        let last_backup = self.last_backup().await;
        Ok(ServerOverview {
            now,
            started_at: self.started_at,
            database_writable: self.health.db_writable(),
            tenants_by_state,
            tokens,
            queue,
            renewals_in_flight: u64::try_from(self.scheduler.in_flight.load(Ordering::Relaxed))
                .unwrap_or(0),
            hosts,
            last_backup,
            tokens_unstored: self.broker.unstored_tokens(),
            database_reachable,
        })
    }

    /// Tenants whose renewals fail (RENEWAL_FAILING, then
    /// CREDENTIALS_REJECTED), at most `limit`, and how many there are.
    pub async fn failing_tenants(&self, limit: u32) -> Result<(Vec<Tenant>, u64), StoreError> {
        match self.failing_tenants_read(limit).await {
            // Cut off from a networked database: nothing to list.
            Err(e) if e.is_transient() && self.duty.is_some() => Ok((Vec::new(), 0)),
            other => other,
        }
    }

    async fn failing_tenants_read(&self, limit: u32) -> Result<(Vec<Tenant>, u64), StoreError> {
        let store = &self.store;
        let counts = store.count_by_state().await?;
        let failing_states = [
            TenantState::RenewalFailing,
            TenantState::CredentialsRejected,
        ];
        let total = counts
            .iter()
            .filter(|(s, _)| failing_states.contains(s))
            .map(|(_, n)| n)
            .sum();
        let mut out = Vec::new();
        for state in failing_states {
            let room = limit.saturating_sub(out.len() as u32);
            if room == 0 {
                break;
            }
            out.extend(store.list_tenants(None, room, Some(state)).await?);
        }
        Ok((out, total))
    }

    async fn last_backup(&self) -> Option<(PathBuf, UnixMs)> {
        let dir = self.backup_dir.clone();
        tokio::task::spawn_blocking(move || {
            let newest = crate::store::backup::list_backups(&dir).ok()?.pop()?;
            let modified = std::fs::metadata(&newest).ok()?.modified().ok()?;
            let ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())?;
            Some((newest, UnixMs(ms)))
        })
        .await
        .ok()
        .flatten()
    }
}

impl ServerOverview {
    pub fn scrape_values(&self) -> ScrapeValues {
        ScrapeValues {
            tenants_by_state: self
                .tenants_by_state
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect(),
            tokens_in_renewal_window: self.tokens.in_renewal_window,
            tokens_expired: self.tokens.expired,
            renewing_without_token: self.tokens.renewing.saturating_sub(self.tokens.with_token),
            jobs_due: self.queue.due,
            jobs_overdue: self.queue.overdue,
            oldest_due_age_secs: self
                .queue
                .oldest_due_at
                .map_or(0.0, |at| at.until(self.now).as_secs_f64()),
            renewals_in_flight: self.renewals_in_flight,
            rate_limit_waits: self
                .hosts
                .iter()
                .map(|h| (h.host.clone(), h.rate_limit_waits))
                .collect(),
            hosts_throttled: self
                .hosts
                .iter()
                .map(|h| (h.host.clone(), u64::from(h.throttled_until.is_some())))
                .collect(),
            host_demand_ratio: self
                .hosts
                .iter()
                .map(|h| (h.host.clone(), h.demand_ratio))
                .collect(),
            tenants_busy: self
                .hosts
                .iter()
                .map(|h| (h.host.clone(), h.busy))
                .collect(),
            tenants_idle: self
                .hosts
                .iter()
                .map(|h| (h.host.clone(), h.idle))
                .collect(),
            database_writable: self.database_writable,
            tokens_unstored: self.tokens_unstored,
        }
    }
}
