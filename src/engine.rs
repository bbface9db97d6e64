//! The renewal engine, built in one place: the store (opened by the caller),
//! the per-host limiter, the broker (cache loaded), the overdue spread, the
//! renewal scheduler and the maintenance cron jobs (and backups).
//! [`Engine::start`] is what the daemon (`crate::daemon`) and the
//! deterministic simulation (`crate::simulation::process`) both call, so the
//! simulation runs exactly the wiring production runs; the end-to-end tests
//! reach it through `Daemon::start`.
//!
//! What differs between them comes in as [`EngineParts`]: the clock, the PBX
//! behind `PbxApi`, the store (`Store::open` vs the inline
//! `Store::open_inline`), the jitter source (entropy vs a seed), the metrics
//! registry and whether the cron jobs run (they read the wall clock, which a
//! replayable run cannot have).
//!
//! The engine is also where components get their dependencies: it builds
//! the per-host limiter and the gated PBX client (`pbx::gated`, the one
//! way to a PBX host through the limiter) once, hands the broker and the
//! scheduler theirs, and exposes the store, clock, limiter and gated client
//! to `daemon/startup.rs`, which hands the use cases theirs. Nothing reaches
//! them through the broker.
//!
//! Webhooks: with `[events] webhook_url` set, the engine turns the store's
//! outbox on before anything can write an event and runs the deliverer
//! (`events::deliver`) as a named task; SIGHUP does not change them (a
//! restart does).
//!
//! [`Engine::shutdown`] drains the named background tasks in one loop, then
//! the renewal workers (bounded by `shutdown.drain_timeout_ms`), the cron
//! jobs, and closes the database. [`Engine::abort`] is kill -9 for the
//! simulation.
//!
//! Does not: hold the state-directory lock, load the key or serve anything
//! (the daemon adds the transports).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background::Background;
use crate::broker::{Broker, BrokerSettings, Jitter};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::events::deliver::{Deliverer, WebhookError};
use crate::metrics::Metrics;
use crate::pbx::gated::GatedPbx;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::PbxApi;
use crate::renewal::budget::StoreBudget;
use crate::renewal::duty::Duty;
use crate::renewal::maintenance::{Maintenance, MaintenanceError};
use crate::renewal::scheduler::{spread_overdue_with, Scheduler, SchedulerLimits};
use crate::store::{EventSettings, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// Where the engine's random numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitterSource {
    /// Fresh randomness (production).
    Entropy,
    /// One seed for every draw, so a simulated run replays (simulation).
    Seeded(u64),
}

impl JitterSource {
    /// The broker's jitter and the start-up spread's. Two sequences, so the
    /// number of overdue jobs spread does not shift the broker's draws.
    fn split(self) -> (Jitter, Jitter) {
        match self {
            Self::Entropy => (Jitter::entropy(), Jitter::entropy()),
            Self::Seeded(seed) => (
                Jitter::seeded(seed),
                Jitter::seeded(seed.rotate_left(17) ^ 0x5eed),
            ),
        }
    }
}

/// Whether the maintenance cron jobs (overdue sweep, WAL checkpoint,
/// backups) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cron {
    Run,
    /// The simulation: cron reads the wall clock and would add timer tasks
    /// a seed cannot replay; the jobs only log, checkpoint and back up.
    Off,
}

/// What differs between the daemon and the simulation.
pub struct EngineParts<'a> {
    pub config: &'a Config,
    pub clock: SharedClock,
    pub pbx: Arc<dyn PbxApi>,
    pub store: Store,
    pub jitter: JitterSource,
    pub metrics: Arc<Metrics>,
    pub cron: Cron,
    /// Where the scheduler, the duty and the named tasks run.
    pub background: Background,
}

/// A background task the engine stops (by cancelling
/// [`Engine::background`]) and waits for on shutdown.
struct NamedTask {
    name: &'static str,
    task: JoinHandle<()>,
}

/// The running engine.
pub struct Engine {
    clock: SharedClock,
    store: Store,
    /// Read by the overview (waits, throttles); reconfigured on SIGHUP.
    limiter: Arc<HostLimiters>,
    /// Every token request to a PBX host goes through this.
    pbx: Arc<GatedPbx>,
    broker: Arc<Broker>,
    scheduler: Arc<Scheduler>,
    /// Several replicas (PostgreSQL): this replica's host leases.
    duty: Option<Arc<Duty>>,
    /// Cancelled first on shutdown: stops the scheduler loop and every
    /// task spawned with [`Engine::spawn`].
    background: CancellationToken,
    /// Renewal workers (and other work that should finish before the
    /// database closes), waited for up to `drain_timeout`.
    workers: TaskTracker,
    tasks: Vec<NamedTask>,
    /// Where the scheduler, the duty and the named tasks run (`background.rs`).
    runtime: Background,
    maintenance: Option<Maintenance>,
    drain_timeout: Duration,
    tenants_loaded: usize,
    /// The change feed's last id when the cache was filled.
    change_position: i64,
}

impl Engine {
    /// Checks the master key against the store, builds the limiter and the
    /// broker, fills the cache, spreads renewals that fell due while
    /// stopped, starts the scheduler and (with [`Cron::Run`]) maintenance.
    /// On an error nothing is left running.
    pub async fn start(parts: EngineParts<'_>) -> Result<Engine, EngineError> {
        let EngineParts {
            config,
            clock,
            pbx,
            store,
            jitter,
            metrics,
            cron,
            background,
        } = parts;
        let (broker_jitter, spread_jitter) = jitter.split();
        // A wrong key stops here, before the cache or anything else is read.
        store.check_master_key().await?;
        let webhooks = start_webhooks(config, &clock, &store, &metrics).await?;
        let (limiter, pbx) = build_gated_pbx(config, &clock, pbx, &store, &metrics);
        let broker = build_broker(config, &clock, &store, &pbx, broker_jitter, &metrics);
        // Read before the cache is filled: a change committed meanwhile is
        // read again by the cache sync (`cluster/`), never missed.
        let change_position = store.latest_change_id().await?;
        let tenants_loaded = broker.load().await?;
        spread_overdue(config, &clock, &store, &spread_jitter).await?;
        let maintenance = match cron {
            Cron::Run => Some(start_maintenance(config, &clock, &store, &metrics).await?),
            Cron::Off => None,
        };
        // Several replicas share a PostgreSQL database: renewal duty per
        // host by lease. One SQLite node keeps today's scheduler as it was.
        let duty = (store.backend_name() == "postgres").then(|| {
            Arc::new(Duty::new(
                store.clone(),
                config.cluster.replica_name(&config.grpc.listen),
                config.cluster.lease_ttl_ms,
                config.pbx.request_timeout_ms,
                metrics.clone(),
            ))
        });
        let mut scheduler = Scheduler::new(
            broker.clone(),
            store.clone(),
            clock.clone(),
            SchedulerLimits::from_config(config),
        );
        if let Some(duty) = &duty {
            scheduler = scheduler.with_duty(duty.clone());
        }
        let mut engine = Engine {
            scheduler: Arc::new(scheduler),
            duty: duty.clone(),
            clock,
            store,
            limiter,
            pbx,
            broker,
            background: CancellationToken::new(),
            workers: TaskTracker::new(),
            tasks: Vec::new(),
            runtime: background,
            maintenance,
            drain_timeout: Duration::from_millis(config.shutdown.drain_timeout_ms),
            tenants_loaded,
            change_position,
        };
        let run = engine
            .scheduler
            .clone()
            .run(engine.background.clone(), engine.workers.clone());
        engine.tasks.push(NamedTask {
            name: "renewal scheduler",
            task: engine.runtime.handle().spawn(run),
        });
        if let Some(duty) = duty {
            let run = duty.run(engine.background.clone());
            engine.tasks.push(NamedTask {
                name: "renewal duty",
                task: engine.runtime.handle().spawn(run),
            });
        }
        if let Some(deliverer) = webhooks {
            let run = deliverer.run(engine.background.clone());
            engine.spawn("webhook deliverer", run);
        }
        Ok(engine)
    }

    /// How many tenants the cache was filled with at start.
    pub fn tenants_loaded(&self) -> usize {
        self.tenants_loaded
    }

    /// The change feed's last id read before the cache was filled (0 on a
    /// backend without a feed).
    pub fn change_position(&self) -> i64 {
        self.change_position
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The per-host limiter, for reading its waits and throttles (the
    /// overview); requests go through [`Engine::pbx`].
    pub fn limiter(&self) -> &Arc<HostLimiters> {
        &self.limiter
    }

    /// The gated PBX client: token requests through the per-host limiter.
    pub fn pbx(&self) -> &Arc<GatedPbx> {
        &self.pbx
    }

    /// SIGHUP: the broker's settings, the host limits, the abandoned
    /// requests' grace and the scheduler's caps.
    pub fn reload(&self, config: &Config) {
        self.broker
            .set_settings(BrokerSettings::from_config(config));
        self.limiter.reconfigure(
            config.limits.per_host_requests_per_second,
            config.limits.per_host_concurrent,
        );
        self.pbx
            .set_request_timeout_ms(config.pbx.request_timeout_ms);
        self.scheduler
            .set_limits(SchedulerLimits::from_config(config));
    }

    /// This replica's renewal duty (several replicas on PostgreSQL).
    pub fn duty(&self) -> Option<&Arc<Duty>> {
        self.duty.as_ref()
    }

    /// Whether the database answered the last lease round trip (always
    /// true on one SQLite node, which has no lease round trips).
    pub fn database_reachable(&self) -> bool {
        self.duty.as_ref().is_none_or(|d| d.database_reachable())
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Cancelled when the engine shuts down.
    pub fn background(&self) -> &CancellationToken {
        &self.background
    }

    /// Tracks work the shutdown waits for (up to `drain_timeout_ms`).
    pub fn workers(&self) -> &TaskTracker {
        &self.workers
    }

    /// Runs `task` beside the scheduler; it must return once
    /// [`Engine::background`] is cancelled. Shutdown waits for it by name.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(NamedTask {
            name,
            task: self.runtime.handle().spawn(task),
        });
    }

    /// Ordered drain: cancel the background, wait for each named task, wait
    /// for in-flight renewals (up to the drain timeout), stop the cron
    /// jobs, close the database.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.background.cancel();
        for NamedTask { name, task } in self.tasks {
            match task.await {
                Ok(()) => tracing::debug!("{name} stopped"),
                Err(e) => tracing::error!("{name} ended abnormally: {e}"),
            }
        }
        self.workers.close();
        if tokio::time::timeout(self.drain_timeout, self.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight renewals did not finish within {} ms; they will be retried after restart",
                self.drain_timeout.as_millis()
            );
        } else {
            tracing::info!("renewal workers stopped");
        }
        if let Some(maintenance) = self.maintenance {
            maintenance.shutdown().await;
        }
        let closed = self.store.close().await;
        drop(self.runtime);
        closed
    }

    /// kill -9 (the simulation's restarts): nothing is waited for. The
    /// named tasks are aborted, parked workers never reach the database
    /// again because its handle is closed.
    pub async fn abort(self) {
        self.background.cancel();
        for NamedTask { task, .. } in &self.tasks {
            task.abort();
        }
        if let Some(maintenance) = self.maintenance {
            maintenance.shutdown().await;
        }
        // Committed transactions are what a real kill -9 leaves; closing
        // (a checkpoint) does not change what the next process reads.
        if let Err(e) = self.store.close().await {
            tracing::warn!("closing the killed engine's store: {e}");
        }
        drop(self.runtime);
    }
}

/// The webhook deliverer when `[events] webhook_url` is set, with the
/// outbox turned on before any event can be written (so none is missed);
/// otherwise the outbox stays off, and rows left from an earlier
/// configuration are reported (they are kept, and delivered once webhooks
/// are on again).
async fn start_webhooks(
    config: &Config,
    clock: &SharedClock,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> Result<Option<Deliverer>, EngineError> {
    let deliverer = Deliverer::from_config(
        config,
        store.clone(),
        clock.clone(),
        metrics.clone(),
        store.backend_name() == "postgres",
    )?;
    store.set_event_settings(EventSettings {
        outbox: deliverer.is_some(),
    });
    if deliverer.is_none() {
        match store.outbox_depth().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                undelivered = n,
                "webhook events from an earlier configuration wait in the outbox and are kept; set [events] webhook_url to deliver them"
            ),
            Err(e) => tracing::debug!("reading the webhook outbox: {e}"),
        }
    }
    Ok(deliverer)
}

/// The per-host limiter and the one client that passes it.
fn build_gated_pbx(
    config: &Config,
    clock: &SharedClock,
    pbx: Arc<dyn PbxApi>,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> (Arc<HostLimiters>, Arc<GatedPbx>) {
    let limiter = Arc::new(HostLimiters::new(
        clock.clone(),
        config.limits.per_host_requests_per_second,
        config.limits.per_host_concurrent,
    ));
    let mut gated = GatedPbx::new(pbx, limiter.clone(), config.pbx.request_timeout_ms)
        .with_metrics(metrics.clone());
    // Several replicas: the per-host limits hold for the cluster as a
    // whole, through a budget shared in the database.
    if store.backend_name() == "postgres" {
        gated = gated.with_shared_budget(Arc::new(StoreBudget::new(
            store.clone(),
            config.cluster.replica_name(&config.grpc.listen),
            config.pbx.request_timeout_ms,
        )));
    }
    (limiter, Arc::new(gated))
}

fn build_broker(
    config: &Config,
    clock: &SharedClock,
    store: &Store,
    pbx: &Arc<GatedPbx>,
    jitter: Jitter,
    metrics: &Arc<Metrics>,
) -> Arc<Broker> {
    Arc::new(
        Broker::new(
            clock.clone(),
            store.clone(),
            pbx.clone(),
            BrokerSettings::from_config(config),
        )
        .with_jitter(jitter)
        .with_metrics(metrics.clone())
        // Several replicas write tokens to one database: fence every write.
        .with_fenced_writes(store.backend_name() == "postgres")
        // Several replicas share a networked database: a tenant created on
        // another one is served at once, read through on the first miss.
        .with_read_through(store.backend_name() != "sqlite"),
    )
}

/// Renewals that fell due while the daemon was stopped are spread over
/// time instead of all hitting the PBX at once.
async fn spread_overdue(
    config: &Config,
    clock: &SharedClock,
    store: &Store,
    jitter: &Jitter,
) -> Result<(), StoreError> {
    let now = clock.now();
    // Several replicas: hosts another replica renews now (an unexpired
    // lease) are left alone. On a restart of one replica of a running
    // cluster, moving the holder's backlog (one large transaction over the
    // rows its writes touch) stalled the database for seconds.
    let renewed_elsewhere: Vec<String> = if store.backend_name() == "postgres" {
        store
            .leases()
            .await?
            .into_iter()
            .filter(|lease| lease.expires_at > now)
            .map(|lease| lease.host)
            .collect()
    } else {
        Vec::new()
    };
    let spread = spread_overdue_with(
        store,
        now,
        config.limits.per_host_requests_per_second,
        &renewed_elsewhere,
        jitter,
    )
    .await?;
    if spread > 0 {
        tracing::info!(
            jobs = spread,
            "renewals that fell due while stopped are spread over time"
        );
    }
    Ok(())
}

async fn start_maintenance(
    config: &Config,
    clock: &SharedClock,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> Result<Maintenance, MaintenanceError> {
    let maintenance = Maintenance::start(&config.maintenance, store.clone(), clock.clone()).await?;
    let pruning = maintenance
        .schedule_event_pruning(&config.events, store.clone(), clock.clone())
        .await;
    if let Err(e) = pruning {
        maintenance.shutdown().await;
        return Err(e);
    }
    if config.store.backend == crate::config::StoreBackend::Postgres {
        // PostgreSQL is backed up by its own tools, not by `VACUUM INTO`.
        if !config.backup.cron.is_empty() {
            tracing::info!("[backup] cron is not used with store.backend = \"postgres\": back the database up with pg_dump or base backups");
        }
        return Ok(maintenance);
    }
    let backups = maintenance
        .schedule_backups(
            &config.backup,
            store.clone(),
            config.backup_dir(),
            clock.clone(),
            metrics.clone(),
        )
        .await;
    if let Err(e) = backups {
        maintenance.shutdown().await;
        return Err(e);
    }
    Ok(maintenance)
}
