//! Wiring and life cycle. [`Daemon::start`] takes a validated config, a
//! bound listener and a clock (production passes real ones, tests their
//! own), locks the state directory, opens the key and the database (and
//! proves the key opens it), fills the cache, loads the API clients (writing
//! a bootstrap admin key when there is no admin), starts the scheduler,
//! maintenance (and backups), the health probe, the gRPC server (TLS when
//! configured, plus the optional local admin socket) and the metrics
//! endpoint. [`Daemon::shutdown`] drains in order: health NOT_SERVING, the
//! lame-duck phase (no new connections, new calls UNAVAILABLE, calls in
//! progress finish; `api/drain.rs`), stop serving (gRPC, metrics), stop
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
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{ClientError, Clients};
use crate::api::accept::AcceptSettings;
use crate::api::admin::AdminApi;
use crate::api::drain::Drain;
use crate::api::serve::{self, Services};
use crate::api::streams::StreamCaps;
use crate::api::tls::{ReloadableTls, TlsError, TlsFiles};
use crate::api::token::TokenApi;
use crate::audit::Audit;
use crate::broker::{Broker, BrokerSettings};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::CryptoError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::onboarding::{CrashHook, Onboarding, OnboardingSettings};
use crate::overview::Overview;
use crate::pbx::client::PbxClient;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxOnboardingApi};
use crate::renewal::maintenance::{Maintenance, MaintenanceError};
use crate::renewal::scheduler::{self, Scheduler, SchedulerLimits, SchedulerStatus};
use crate::statedir::{self, StateDirError, StateLock};

mod tcp;

use crate::store::{BackupInfo, Store, StoreError};
use crate::tenants::{CapacitySettings, Tenants};
use tcp::check_listen_address;

mod masterkey;
pub use masterkey::{load_keyring, master_key_location};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
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
    #[error("cannot listen on {addr} (callback.listen): {source}")]
    CallbackListen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    StateDirLock(#[from] StateDirError),
    #[error("master key file {} is missing but the database {} holds sealed values; restore the key file (or point master_key_file at it). A new key would open nothing", .key.display(), .database.display())]
    MasterKeyMissing { key: PathBuf, database: PathBuf },
    #[error("the master key must come from the systemd credential master.key (require_master_key_credential = true; the unit sets PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=true), but $CREDENTIALS_DIRECTORY is not set: this systemd ignored LoadCredential=, which needs systemd 247 or later (`systemctl --version`). No key was generated. Upgrade systemd; or, on an older one, point master_key_file at a key file the service's user can read and set require_master_key_credential = false (a drop-in with Environment=PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL=false)")]
    MasterKeyCredentialMissing,
    #[error("API clients: {0}")]
    Clients(#[from] ClientError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("refusing to listen on {0} without TLS: it is not a loopback address. Configure grpc.tls_cert_file and grpc.tls_key_file, or set grpc.insecure_listen_public = true")]
    InsecureListen(std::net::SocketAddr),
    #[error("admin socket {}: {source}", .path.display())]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
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
    onboarding: Arc<Onboarding>,
    /// The OAuth callback listener, when `[callback] listen` is set.
    callback: Option<(std::net::SocketAddr, JoinHandle<std::io::Result<()>>)>,
    scheduler: Arc<Scheduler>,
    serving: CancellationToken,
    /// The lame-duck phase before `serving` is cancelled.
    drain: Arc<Drain>,
    lame_duck: Duration,
    background: CancellationToken,
    workers: TaskTracker,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The local admin socket's server and path, when configured.
    admin_socket: Option<(JoinHandle<Result<(), tonic::transport::Error>>, PathBuf)>,
    tls: Option<Arc<ReloadableTls>>,
    clients: Arc<Clients>,
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

impl Daemon {
    /// Starts everything with the real PBX HTTP client.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
    ) -> Result<Daemon, DaemonError> {
        let metrics = Arc::new(Metrics::new());
        let pbx = Arc::new(
            PbxClient::new(&config.pbx, &config.token)
                .map_err(|e| DaemonError::PbxClient(e.to_string()))?
                .with_metrics(metrics.clone()),
        );
        Self::start_inner(config, listener, clock, pbx.clone(), pbx, metrics).await
    }

    /// Starts everything with the given PBX implementation for tokens; the
    /// authorization flow uses the real HTTP client.
    pub async fn start_with(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        pbx: Arc<dyn PbxApi>,
    ) -> Result<Daemon, DaemonError> {
        let onboarding_pbx = PbxClient::new(&config.pbx, &config.token)
            .map_err(|e| DaemonError::PbxClient(e.to_string()))?;
        Self::start_inner(
            config,
            listener,
            clock,
            pbx,
            Arc::new(onboarding_pbx),
            Arc::new(Metrics::new()),
        )
        .await
    }

    /// Starts everything with the given PBX implementations.
    pub async fn start_with_onboarding(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        pbx: Arc<dyn PbxApi>,
        onboarding_pbx: Arc<dyn PbxOnboardingApi>,
    ) -> Result<Daemon, DaemonError> {
        Self::start_inner(
            config,
            listener,
            clock,
            pbx,
            onboarding_pbx,
            Arc::new(Metrics::new()),
        )
        .await
    }

    async fn start_inner(
        config: Config,
        listener: TcpListener,
        clock: SharedClock,
        pbx: Arc<dyn PbxApi>,
        onboarding_pbx: Arc<dyn PbxOnboardingApi>,
        metrics: Arc<Metrics>,
    ) -> Result<Daemon, DaemonError> {
        let started = std::time::Instant::now();
        statedir::create(&config.state_dir)?;
        let lock = statedir::lock(&config.state_dir)?;
        let local_addr = listener.local_addr().map_err(DaemonError::Listener)?;
        check_listen_address(&config, local_addr)?;
        let tls = match TlsFiles::from_config(&config.grpc) {
            Some(files) => Some(Arc::new(ReloadableTls::load(&files)?)),
            None => None,
        };
        // Bound before anything is spawned, so a failure leaves nothing running.
        let admin_listener = match &config.grpc.admin_socket {
            Some(path) => Some((
                serve::bind_admin_socket(path).map_err(|source| DaemonError::AdminSocket {
                    path: path.clone(),
                    source,
                })?,
                path.clone(),
            )),
            None => None,
        };
        let keyring = Arc::new(load_keyring(&config)?);
        let store = Store::open(&config.database_path(), keyring)?;
        // A wrong key stops here, before the cache or anything else is read.
        store.check_master_key().await?;
        let audit = Audit::new(store.clone(), clock.clone());
        let clients = Arc::new(Clients::load(store.clone(), clock.clone(), audit.clone()).await?);
        clients.bootstrap_admin(&config.state_dir).await?;
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
        tenants.set_allowed_hosts(allowed_hosts(&config));
        for warning in tenants.capacity_warnings().await.unwrap_or_default() {
            tracing::warn!("{warning}");
        }

        let background = CancellationToken::new();
        let workers = TaskTracker::new();
        let onboarding = Arc::new(Onboarding::new(
            broker.clone(),
            onboarding_pbx,
            OnboardingSettings::from_config(&config.onboarding),
            CrashHook::from_env(),
            workers.clone(),
        ));
        // Flows a crash interrupted go on now, beside serving.
        workers.spawn({
            let onboarding = onboarding.clone();
            let cancel = background.clone();
            async move { onboarding.resume_interrupted(cancel).await }
        });
        let scheduler = Arc::new(Scheduler::new(
            broker.clone(),
            SchedulerLimits::from_config(&config),
        ));
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
        let streams = Arc::new(StreamCaps::new(
            &config.grpc,
            clock.clone(),
            Some(metrics.clone()),
        ));
        let drain = Arc::new(Drain::default());
        let services = Services {
            tokens: Arc::new(
                TokenApi::new(
                    broker.clone(),
                    clients.clone(),
                    streams.clone(),
                    serving.clone(),
                )
                .with_metrics(metrics.clone()),
            ),
            admin: Arc::new(
                AdminApi::new(
                    tenants.clone(),
                    onboarding.clone(),
                    clients.clone(),
                    audit.clone(),
                )
                .with_overview(overview.clone()),
            ),
            clients: clients.clone(),
            health: health_service,
            streams,
            drain: drain.clone(),
        };
        let router = serve::router(&services, &config.grpc, serve::Listener::Tcp)
            .map_err(|e| DaemonError::Reflection(e.to_string()))?;
        let local_router = serve::router(
            &services,
            &config.grpc,
            serve::Listener::LocalSocket {
                own_uid: serve::own_uid(),
            },
        )
        .map_err(|e| DaemonError::Reflection(e.to_string()))?;
        let server = tcp::spawn_server(
            router,
            listener,
            AcceptSettings::from_config(&config.grpc, services.streams.idle().clone()),
            tls.as_ref(),
            &drain,
            &metrics,
            &serving,
        );
        let admin_socket = admin_listener.map(|(unix, path)| {
            let stop = serving.clone();
            let task = tokio::spawn(async move {
                local_router
                    .serve_with_incoming_shutdown(
                        UnixListenerStream::new(unix),
                        stop.cancelled_owned(),
                    )
                    .await
            });
            tracing::info!(path = %path.display(), "local admin socket listening");
            (task, path)
        });
        let callback = match config.callback.listen_addr() {
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|source| {
                    DaemonError::CallbackListen {
                        addr: addr.to_owned(),
                        source,
                    }
                })?;
                let at = l.local_addr().map_err(DaemonError::Listener)?;
                let task = tokio::spawn(crate::api::callback::serve(
                    l,
                    onboarding.clone(),
                    audit.clone(),
                    serving.clone(),
                ));
                tracing::info!(listen = %at, "OAuth callback listener serves GET /oauth/callback");
                Some((at, task))
            }
            None => None,
        };
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
                let task = tokio::spawn(crate::api::metrics_http::serve(
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
            tls = tls.is_some(),
            api_clients = clients.active_count(),
            startup_ms = started.elapsed().as_millis() as u64,
            "pbx-tokend is serving"
        );
        Ok(Daemon {
            local_addr,
            broker,
            tenants,
            onboarding,
            callback,
            scheduler,
            serving,
            drain,
            lame_duck: Duration::from_millis(config.shutdown.lame_duck_ms),
            background,
            workers,
            server,
            admin_socket,
            tls,
            clients,
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

    /// Where the OAuth callback listener listens, when it is on.
    pub fn callback_addr(&self) -> Option<std::net::SocketAddr> {
        self.callback.as_ref().map(|(a, _)| *a)
    }

    /// The API clients (keys) the daemon authenticates against.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
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
        self.scheduler
            .set_limits(SchedulerLimits::from_config(config));
        self.tenants.set_capacity(capacity_settings(config));
        self.onboarding
            .set_settings(OnboardingSettings::from_config(&config.onboarding));
        self.tenants.set_allowed_hosts(allowed_hosts(config));
        match (&self.tls, TlsFiles::from_config(&config.grpc)) {
            (Some(tls), Some(files)) => match tls.reload(&files) {
                Ok(()) => tracing::info!("TLS certificate, key and client CA re-read"),
                Err(e) => {
                    tracing::error!("TLS reload failed, keeping the running certificate: {e}")
                }
            },
            (None, Some(_)) | (Some(_), None) => tracing::warn!(
                "turning TLS on or off needs a restart; the listener keeps its current mode"
            ),
            (None, None) => {}
        }
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
        // Lame duck: stop accepting, refuse new calls with UNAVAILABLE while
        // calls in progress finish; GOAWAY (serving) only once callers went
        // quiet, so no client-queued call is failed as CANCELLED.
        self.drain.begin();
        self.drain.settle(self.lame_duck).await;
        self.serving.cancel();
        let mut result = Ok(());
        match self.server.await {
            Ok(Ok(())) => tracing::info!("gRPC server stopped"),
            Ok(Err(e)) => result = Err(DaemonError::Serve(e.to_string())),
            Err(e) => result = Err(DaemonError::Serve(e.to_string())),
        }
        if let Some((_, task)) = self.callback {
            match task.await {
                Ok(Ok(())) => tracing::info!("callback listener stopped"),
                Ok(Err(e)) => result = Err(DaemonError::Serve(e.to_string())),
                Err(e) => result = Err(DaemonError::Serve(e.to_string())),
            }
        }
        if let Some((task, path)) = self.admin_socket {
            match task.await {
                Ok(Ok(())) => tracing::info!("admin socket server stopped"),
                Ok(Err(e)) => result = Err(DaemonError::Serve(e.to_string())),
                Err(e) => result = Err(DaemonError::Serve(e.to_string())),
            }
            let _ = std::fs::remove_file(&path);
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

/// `[pbx] allowed_hosts`, parsed (validate() already checked each entry).
fn allowed_hosts(config: &Config) -> Vec<crate::domain::HostPattern> {
    config
        .pbx
        .allowed_hosts
        .iter()
        .filter_map(|p| crate::domain::HostPattern::parse(p).ok())
        .collect()
}

fn capacity_settings(config: &Config) -> CapacitySettings {
    CapacitySettings {
        default_lifetime_secs: config.token.default_lifetime_seconds,
        at_fraction: config.refresh.at_fraction,
        per_host_rps: config.limits.per_host_requests_per_second,
    }
}
