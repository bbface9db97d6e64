//! Wiring and life cycle. [`Daemon::start`] takes a validated config, a
//! bound listener and a clock (production passes real ones, tests their
//! own) and runs short named steps: lock the state directory, check the
//! listen address, load TLS, bind the admin socket, open the key and the
//! database, start the engine (`crate::engine`: proves the key opens the
//! database, fills the cache, starts the scheduler, maintenance and
//! backups), load the API clients (writing a bootstrap admin key when there
//! is no admin), build the use cases, start the health probe, then the
//! transports: the gRPC server (TLS when configured, plus the optional
//! local admin socket), the OAuth callback and the metrics endpoint.
//! [`Daemon::shutdown`] drains in order: health NOT_SERVING, the lame-duck
//! phase (no new connections, new calls UNAVAILABLE, calls in progress
//! finish; `api/drain.rs`), stop serving (the transports, in one loop),
//! then the engine (scheduler and probe, in-flight renewals up to
//! `shutdown.drain_timeout_ms`, maintenance, the database); the lock is
//! released last.
//!
//! Does not: parse flags, handle signals or talk to systemd's socket (the
//! binary does), so tests can run many daemons in one process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::access::{ClientError, Clients};
use crate::api::drain::Drain;
use crate::api::tls::{ReloadableTls, TlsError, TlsFiles};
use crate::background::Background;
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::{Config, StoreBackend};
use crate::crypto::CryptoError;
use crate::engine::{Cron, Engine, EngineError, EngineParts, JitterSource};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::onboarding::{Onboarding, OnboardingSettings};
use crate::overview::Overview;
use crate::pbx::client::PbxClient;
use crate::pbx::{PbxApi, PbxOnboardingApi};
use crate::renewal::maintenance::MaintenanceError;
use crate::renewal::scheduler::{self, SchedulerStatus};
use crate::statedir::{self, StateDirError, StateLock};

mod startup;
mod tcp;
mod transports;

use crate::store::{BackupInfo, PgStore, Store, StoreError};
use crate::tenants::{CapacitySettings, Tenants};
use tcp::check_listen_address;
use transports::Transport;

mod masterkey;
pub use masterkey::{load_keyring, master_key_location};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    // `error`, not `source`: the message already says it, and a source
    // would make `{:#}` print the cause again.
    #[error("master key {path}: {error}")]
    MasterKey { path: PathBuf, error: CryptoError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the PBX HTTP client: {0}")]
    PbxClient(String),
    #[error(transparent)]
    Maintenance(#[from] MaintenanceError),
    #[error(transparent)]
    Engine(EngineError),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    #[error("the gRPC server failed: {0}")]
    Serve(String),
    #[error("cannot start the background runtime ([runtime] background_threads): {0}")]
    BackgroundRuntime(std::io::Error),
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
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl From<EngineError> for DaemonError {
    /// Keeps the store's and maintenance's own variants, as before the
    /// engine was split out.
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Store(e) => Self::Store(e),
            EngineError::Maintenance(e) => Self::Maintenance(e),
            e @ EngineError::Webhook(_) => Self::Engine(e),
        }
    }
}

pub struct Daemon {
    local_addr: std::net::SocketAddr,
    /// Store, limiter, broker, scheduler, maintenance, health probe.
    engine: Engine,
    tenants: Arc<Tenants>,
    onboarding: Arc<Onboarding>,
    clients: Arc<Clients>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    overview: Arc<Overview>,
    tls: Option<Arc<ReloadableTls>>,
    /// Cancelled to stop every transport.
    serving: tokio_util::sync::CancellationToken,
    /// The lame-duck phase before `serving` is cancelled.
    drain: Arc<Drain>,
    lame_duck: Duration,
    /// gRPC, admin socket, callback, metrics: drained in this order.
    transports: Vec<Transport>,
    /// Where the OAuth callback listener listens, when `[callback] listen` is set.
    callback_addr: Option<std::net::SocketAddr>,
    metrics_addr: Option<std::net::SocketAddr>,
    backup_dir: PathBuf,
    backup_keep: u32,
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
        let lock = lock_state_dir(&config)?;
        let local_addr = listen_address(&config, &listener)?;
        // Bound before anything is spawned, so a failure leaves nothing running.
        let listeners = startup::Listeners {
            grpc: listener,
            tls: load_tls(&config)?,
            admin_socket: transports::bind_admin_socket(&config)?,
        };
        let background = Background::start(
            config.runtime.background_threads as usize,
            config.runtime.background_nice as i32,
        )
        .map_err(DaemonError::BackgroundRuntime)?;
        let store = open_store(&config).await?;
        let mut engine = Engine::start(EngineParts {
            config: &config,
            clock: clock.clone(),
            pbx,
            store,
            jitter: JitterSource::Entropy,
            metrics: metrics.clone(),
            cron: Cron::Run,
            background,
        })
        .await?;
        let tls = listeners.tls.clone();
        let serving = tokio_util::sync::CancellationToken::new();
        let mut transports = Vec::new();
        let up = match startup::serve(
            &config,
            &mut engine,
            &clock,
            onboarding_pbx,
            &metrics,
            listeners,
            &serving,
            &mut transports,
        )
        .await
        {
            Ok(up) => up,
            Err(e) => return Err(startup::abandon(engine, serving, transports, e).await),
        };
        tracing::info!(
            listen = %local_addr,
            tenants = engine.tenants_loaded(),
            tls = tls.is_some(),
            api_clients = up.clients.active_count(),
            startup_ms = started.elapsed().as_millis() as u64,
            "pbx-tokend is serving"
        );
        Ok(Daemon {
            local_addr,
            engine,
            tenants: up.tenants,
            onboarding: up.onboarding,
            clients: up.clients,
            health: up.health,
            metrics,
            overview: up.overview,
            tls,
            serving,
            drain: up.drain,
            lame_duck: Duration::from_millis(config.shutdown.lame_duck_ms),
            transports,
            callback_addr: up.callback_addr,
            metrics_addr: up.metrics_addr,
            backup_dir: config.backup_dir(),
            backup_keep: config.backup.keep,
            _lock: lock,
        })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        self.engine.broker()
    }

    /// Where the OAuth callback listener listens, when it is on.
    pub fn callback_addr(&self) -> Option<std::net::SocketAddr> {
        self.callback_addr
    }

    /// The API clients (keys) the daemon authenticates against.
    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    pub fn scheduler_status(&self) -> Arc<SchedulerStatus> {
        self.engine.scheduler().status()
    }

    /// Where `/metrics` is served, when `[metrics] listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
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
        let now = self.engine.clock().now();
        let result = self
            .engine
            .store()
            .backup_into(&self.backup_dir, now, self.backup_keep)
            .await;
        self.metrics.backup(result.is_ok(), now.as_secs());
        result
    }

    /// SIGHUP: applies the reloadable settings (refresh, rate limits, token
    /// defaults). Listener, state_dir and the key need a restart.
    pub fn reload(&self, config: &Config) {
        self.engine.reload(config);
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
        let status = self.engine.scheduler().status();
        let beat = status.heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        let age = self.engine.clock().now().0 - beat;
        let scheduler_ok = age < (scheduler::MAX_IDLE.as_millis() as i64) * 3 + 10_000;
        if !scheduler_ok {
            tracing::error!(
                heartbeat_age_ms = age,
                "the renewal scheduler loop has not turned"
            );
        }
        let db_ok = self
            .health
            .probe(self.engine.store(), self.engine.clock())
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
        let result = transports::drain(self.transports).await;
        self.engine.shutdown().await?;
        tracing::info!("database closed; shutdown complete");
        result
    }
}

/// Creates and locks `state_dir` (one daemon per directory).
fn lock_state_dir(config: &Config) -> Result<StateLock, DaemonError> {
    statedir::create(&config.state_dir)?;
    Ok(statedir::lock(&config.state_dir)?)
}

/// The gRPC listener's address, refused when public without TLS.
fn listen_address(
    config: &Config,
    listener: &TcpListener,
) -> Result<std::net::SocketAddr, DaemonError> {
    let local_addr = listener.local_addr().map_err(DaemonError::Listener)?;
    check_listen_address(config, local_addr)?;
    Ok(local_addr)
}

fn load_tls(config: &Config) -> Result<Option<Arc<ReloadableTls>>, DaemonError> {
    match TlsFiles::from_config(&config.grpc) {
        Some(files) => Ok(Some(Arc::new(ReloadableTls::load(&files)?))),
        None => Ok(None),
    }
}

/// The master key, then the database sealed with it: `[store] backend`
/// picks SQLite in the state dir or the shared PostgreSQL database (its
/// password read from `postgres_password_file` now, at start-up).
async fn open_store(config: &Config) -> Result<Store, DaemonError> {
    let keyring = Arc::new(load_keyring(config)?);
    match config.store.backend {
        StoreBackend::Sqlite => Ok(Store::open(&config.database_path(), keyring)?),
        StoreBackend::Postgres => {
            let url = config.store.postgres_url.as_deref().unwrap_or_default();
            let password = config.store.read_password()?;
            let store = PgStore::connect(url, password.as_ref(), keyring).await?;
            tracing::info!(
                database = %store.target(),
                replica = %config.cluster.replica_name(&config.grpc.listen),
                "state is in PostgreSQL"
            );
            Ok(Store::new(store))
        }
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
