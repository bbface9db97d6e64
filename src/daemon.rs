//! Wiring and life cycle. [`Daemon::start`] takes a validated config, a
//! bound listener and a clock (production passes real ones, tests their
//! own), locks the state directory, opens the key and the database, fills
//! the cache, starts the scheduler, maintenance (and backups), the health
//! probe, the gRPC server and the metrics endpoint. [`Daemon::shutdown`]
//! drains in order: health NOT_SERVING, stop serving (gRPC, metrics), stop
//! the scheduler and the probe, wait for in-flight renewals (up to
//! `shutdown.drain_timeout_ms`), stop maintenance, close the database,
//! release the lock.
//!
//! Does not: parse flags, handle signals or talk to systemd's socket (the
//! binary does), so tests can run many daemons in one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::admin::AdminApi;
use crate::api::token::TokenApi;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::{CryptoError, Keyring};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::overview::Overview;
use crate::pbx::client::PbxClient;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::PbxApi;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::token_service_server::TokenServiceServer;
use crate::renewal::maintenance::{Maintenance, MaintenanceError};
use crate::renewal::scheduler::{self, Scheduler, SchedulerLimits, SchedulerStatus};
use crate::statelock::{LockError, StateLock};
use crate::store::{BackupInfo, Store, StoreError};
use crate::tenants::{CapacitySettings, Tenants};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key {path}: {source}")]
    MasterKey { path: PathBuf, source: CryptoError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the PBX HTTP client: {0}")]
    PbxClient(String),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(String),
    #[error("cannot read the listener address: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    MetricsListen {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Daemon {
    local_addr: std::net::SocketAddr,
    broker: Arc<Broker>,
    tenants: Arc<Tenants>,
    scheduler: Arc<Scheduler>,
    serving: CancellationToken,
    background: CancellationToken,
    workers: TaskTracker,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    scheduler_task: JoinHandle<()>,
    maintenance: Maintenance,
    health: Arc<Health>,
    probe_task: JoinHandle<()>,
    metrics: Arc<Metrics>,
    overview: Arc<Overview>,
    metrics_server: Option<(std::net::SocketAddr, JoinHandle<std::io::Result<()>>)>,
    backup_dir: PathBuf,
    backup_keep: u32,
    drain_timeout: Duration,
    /// Released last, when the daemon is dropped after `shutdown`.
    _lock: StateLock,
}

/// Where the master key is: explicit file, systemd credential, or generated
/// next to the database (with a warning: it then sits beside what it protects).
fn master_key_location(config: &Config) -> (PathBuf, bool) {
    if let Some(path) = &config.master_key_file {
        return (path.clone(), false);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        return (PathBuf::from(dir).join("master.key"), false);
    }
    (config.state_dir.join("master.key"), true)
}

pub fn load_keyring(config: &Config) -> Result<Keyring, DaemonError> {
    let (path, may_create) = master_key_location(config);
    let (keyring, created) =
        Keyring::load_or_create(&path, may_create).map_err(|source| DaemonError::MasterKey {
            path: path.clone(),
            source,
        })?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "generated a new master key next to the database; for production keep it elsewhere (master_key_file, or systemd LoadCredential=master.key)"
        );
    }
    Ok(keyring)
}

fn create_state_dir(config: &Config) -> Result<(), DaemonError> {
    let err = |source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.state_dir).map_err(err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(err)?;
    }
    Ok(())
}

impl Daemon {
    /// Starts everything with the real PBX HTTP client.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
    ) -> Result<Daemon, DaemonError> {
        let metrics = Arc::new(Metrics::new());
        let pbx = PbxClient::new(&config.pbx, &config.token)
            .map_err(|e| DaemonError::PbxClient(e.to_string()))?
            .with_metrics(metrics.clone());
        Self::start_inner(config, listener, clock, Arc::new(pbx), metrics).await
    }

    /// Starts everything with the given PBX implementation.
    pub async fn start_with(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        pbx: Arc<dyn PbxApi>,
    ) -> Result<Daemon, DaemonError> {
        Self::start_inner(config, listener, clock, pbx, Arc::new(Metrics::new())).await
    }

    async fn start_inner(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        pbx: Arc<dyn PbxApi>,
        metrics: Arc<Metrics>,
    ) -> Result<Daemon, DaemonError> {
        let started = std::time::Instant::now();
        create_state_dir(&config)?;
        let lock = StateLock::acquire(&config.state_dir)?;
        let keyring = Arc::new(load_keyring(&config)?);
        let store = Store::open(&config.database_path(), keyring)?;
        let limiter = Arc::new(HostLimiters::new(
            clock.clone(),
            config.limits.per_host_requests_per_second,
            config.limits.per_host_concurrent,
        ));
        let broker = Arc::new(
            Broker::new(
                clock.clone(),
                store.clone(),
                pbx,
                limiter,
                BrokerSettings::from_config(&config),
            )
            .with_metrics(metrics.clone()),
        );
        let tenants_loaded = broker.load().await?;
        let spread = scheduler::spread_overdue(
            &store,
            clock.now(),
            config.limits.per_host_requests_per_second,
        )
        .await?;
        if spread > 0 {
            tracing::info!(
                jobs = spread,
                "renewals that fell due while stopped are spread over time"
            );
        }
        let tenants = Arc::new(Tenants::new(
            broker.clone(),
            config.url_policy(),
            capacity_settings(&config),
        ));
        for warning in tenants.capacity_warnings().await.unwrap_or_default() {
            tracing::warn!("{warning}");
        }

        let background = CancellationToken::new();
        let workers = TaskTracker::new();
        let scheduler = Arc::new(Scheduler::new(broker.clone(), scheduler_limits(&config)));
        let scheduler_task =
            tokio::spawn(scheduler.clone().run(background.clone(), workers.clone()));
        let maintenance =
            Maintenance::start(&config.maintenance, store.clone(), clock.clone()).await?;
        maintenance
            .schedule_backups(
                &config.backup,
                store.clone(),
                config.backup_dir(),
                clock.clone(),
                metrics.clone(),
            )
            .await?;

        let serving = CancellationToken::new();
        let (health, health_service) = Health::new(serving.clone()).await;
        health.probe(&store, &clock).await;
        let probe_task = tokio::spawn(health.clone().run_probe(
            store.clone(),
            clock.clone(),
            Duration::from_millis(config.health.probe_interval_ms),
            background.clone(),
        ));
        let overview = Arc::new(Overview::new(
            broker.clone(),
            scheduler.status(),
            health.clone(),
            config.backup_dir(),
        ));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| DaemonError::Reflection(e.to_string()))?;
        let local_addr = listener.local_addr().map_err(DaemonError::Listener)?;
        let router = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(TokenServiceServer::new(
                TokenApi::new(broker.clone(), serving.clone()).with_metrics(metrics.clone()),
            ))
            .add_service(AdminServiceServer::new(
                AdminApi::new(tenants.clone()).with_overview(overview.clone()),
            ));
        let stop = serving.clone();
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
        });
        let metrics_server = match config.metrics_listen() {
            Some(addr) => {
                let l =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| DaemonError::MetricsListen {
                            addr: addr.to_owned(),
                            source,
                        })?;
                let bound = l.local_addr().map_err(DaemonError::Listener)?;
                tracing::info!(listen = %bound, "metrics endpoint at http://{bound}/metrics");
                let task = tokio::spawn(crate::metrics::http::serve(
                    l,
                    metrics.clone(),
                    overview.clone(),
                    serving.clone(),
                ));
                Some((bound, task))
            }
            None => None,
        };
        tracing::info!(
            listen = %local_addr,
            tenants = tenants_loaded,
            startup_ms = started.elapsed().as_millis() as u64,
            "pbx-tokend is serving"
        );
        Ok(Daemon {
            local_addr,
            broker,
            tenants,
            scheduler,
            serving,
            background,
            workers,
            server,
            scheduler_task,
            maintenance,
            health,
            probe_task,
            metrics,
            overview,
            metrics_server,
            backup_dir: config.backup_dir(),
            backup_keep: config.backup.keep,
            drain_timeout: Duration::from_millis(config.shutdown.drain_timeout_ms),
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn scheduler_status(&self) -> Arc<SchedulerStatus> {
        self.scheduler.status()
    }

    /// Where `/metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|(a, _)| *a)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn overview(&self) -> &Arc<Overview> {
        &self.overview
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A backup now, into `<state_dir>/backups`, as the cron job makes it.
    pub async fn backup_now(&self) -> Result<BackupInfo, StoreError> {
        let now = self.broker.clock().now();
        let result = self
            .broker
            .store()
            .backup_into(&self.backup_dir, now, self.backup_keep)
            .await;
        self.metrics.backup(result.is_ok(), now.as_secs());
        result
    }

    /// SIGHUP: applies the reloadable settings (refresh, rate limits, token
    /// defaults). Listener, state_dir and the key need a restart.
    pub fn reload(&self, config: &Config) {
        self.broker
            .set_settings(BrokerSettings::from_config(config));
        self.broker.limiter().reconfigure(
            config.limits.per_host_requests_per_second,
            config.limits.per_host_concurrent,
        );
        self.scheduler.set_limits(scheduler_limits(config));
        self.tenants.set_capacity(capacity_settings(config));
        tracing::info!("configuration reloaded");
    }

    /// Proves the scheduler loop turns and the database can be written (a
    /// heartbeat write, which also refreshes the health status); the
    /// systemd watchdog is fed only when this is true.
    pub async fn is_alive(&self) -> bool {
        let status = self.scheduler.status();
        let beat = status.heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        let age = self.broker.clock().now().0 - beat;
        let scheduler_ok = age < (scheduler::MAX_IDLE.as_millis() as i64) * 3 + 10_000;
        if !scheduler_ok {
            tracing::error!(
                heartbeat_age_ms = age,
                "the renewal scheduler loop has not turned"
            );
        }
        let db_ok = self
            .health
            .probe(self.broker.store(), self.broker.clock())
            .await;
        scheduler_ok && db_ok
    }

    /// Ordered drain; returns an error if something did not stop cleanly.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        tracing::info!("draining: health NOT_SERVING, no new requests");
        self.health.begin_shutdown().await;
        self.serving.cancel();
        let mut result = Ok(());
        match self.server.await {
            Ok(Ok(())) => tracing::info!("gRPC server stopped"),
            Ok(Err(e)) => result = Err(DaemonError::Serve(e.to_string())),
            Err(e) => result = Err(DaemonError::Serve(e.to_string())),
        }
        if let Some((_, task)) = self.metrics_server {
            match task.await {
                Ok(Ok(())) => tracing::info!("metrics endpoint stopped"),
                Ok(Err(e)) => tracing::error!("metrics endpoint failed: {e}"),
                Err(e) => tracing::error!("metrics endpoint ended abnormally: {e}"),
            }
        }
        self.background.cancel();
        if let Err(e) = self.scheduler_task.await {
            tracing::error!("renewal scheduler ended abnormally: {e}");
        }
        if let Err(e) = self.probe_task.await {
            tracing::error!("health probe ended abnormally: {e}");
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
        self.maintenance.shutdown().await;
        self.broker.store().close().await?;
        tracing::info!("database closed; shutdown complete");
        result
    }
}

fn scheduler_limits(config: &Config) -> SchedulerLimits {
    SchedulerLimits {
        max_concurrent: config.refresh.max_concurrent,
        max_concurrent_per_host: config.refresh.max_concurrent_per_host,
    }
}

fn capacity_settings(config: &Config) -> CapacitySettings {
    CapacitySettings {
        default_lifetime_secs: config.token.default_lifetime_seconds,
        at_fraction: config.refresh.at_fraction,
        per_host_rps: config.limits.per_host_requests_per_second,
    }
}
