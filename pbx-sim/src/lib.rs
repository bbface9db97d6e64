//! A faithful fake of the PBX provider's OAuth and REST API over real HTTP,
//! for end-to-end tests, the crash campaign, benchmarks and `pbx-sim`.
//!
//! Endpoints (as the provider's OAuth document describes them; the parts
//! pbx-tokend relies on are quoted in docs/ONBOARDING.md):
//! `GET|POST /oauth/authorize`, `POST /oauth/token`,
//! `POST /api/ver1.0/application/`, `GET /api/ver1.0/user/`; plus a control
//! API under `/_sim/` (apps, faults, config, stats, approval). Faults include
//! error answers that echo the request, secrets and all (`echo.rs`).
//!
//! Its own crate, with no dependency on `pbx-tokend`: a fake provider that
//! borrowed the daemon's types (even its clock) could share a bug with the
//! code under test and hide it; the compiler now keeps them apart.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use pbx_sim::{Simulator, SimConfig};
//! let sim = Simulator::new(SimConfig::default());
//! let creds = sim.add_trusted_app(Some("app-1"), Some("s3cret")).map_err(std::io::Error::other)?;
//! let (addr, _task) = sim.clone().spawn_on_loopback().await?;
//! let base = pbx_sim::base_url(addr); // http://127.0.0.1:PORT
//! # let _ = (creds, base); Ok(()) }
//! ```

mod api;
pub mod clock;
mod control;
mod echo;
mod faults;
mod model;
mod oauth;
mod respond;
mod state;
mod stats;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_echo;
#[cfg(test)]
mod tests_faults;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use model::{
    AppInfo, AppResponseShape, ConfigUpdate, EchoEndpoints, EchoFault, EchoForm, Faults, Malformed,
    SeedApp, SeedFile, SimConfig, SimError,
};
pub use stats::SimStats;

use crate::clock::{SharedClock, SystemClock, UnixMs};
use faults::FaultState;
use state::Registry;
use stats::Collector;

/// The simulated provider. Cheap to clone: every clone is the same PBX.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    registry: Mutex<Registry>,
    config: Mutex<SimConfig>,
    faults: Mutex<FaultState>,
    stats: Collector,
    clock: SharedClock,
}

/// Locks survive a panicking holder: the simulator keeps serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
    pub(crate) fn config(&self) -> MutexGuard<'_, SimConfig> {
        lock(&self.config)
    }
    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultState> {
        lock(&self.faults)
    }
    pub(crate) fn now(&self) -> UnixMs {
        self.clock.now()
    }
    /// A PBX user (`login`, or a fresh one) allows `client_id`: a code.
    pub(crate) fn approve(
        &self,
        client_id: &str,
        redirect_uri: &str,
        login: Option<&str>,
    ) -> Result<String, SimError> {
        let lifetime = self.config().code_lifetime_secs;
        let expires = self
            .now()
            .plus_ms(i64::try_from(lifetime.saturating_mul(1000)).unwrap_or(i64::MAX));
        self.registry()
            .approve(client_id, redirect_uri, login, expires)
    }
}

/// `http://ADDR`, the base URL of a simulator listening on `addr`.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A simulator running in the background (from [`Simulator::start`]).
/// Dropping it leaves the server running until the runtime stops; call
/// [`RunningSim::stop`] for a clean shutdown.
#[derive(Debug)]
pub struct RunningSim {
    pub sim: Simulator,
    pub addr: SocketAddr,
    pub base_url: String,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl RunningSim {
    /// Stop accepting, finish in-flight requests, wait for the server.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A simulator whose codes and tokens expire by `clock` (e.g. a
    /// `ManualClock` to test expiry without sleeping).
    pub fn with_clock(config: SimConfig, clock: SharedClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(Registry::default()),
                config: Mutex::new(config),
                faults: Mutex::new(FaultState::default()),
                stats: Collector::default(),
                clock,
            }),
        }
    }

    /// The axum router, for embedding in another server.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(oauth::routes())
            .merge(api::routes())
            .merge(control::routes())
            .fallback(api::not_found)
            .with_state(Arc::clone(&self.shared))
    }

    /// Serve on `listener` until `shutdown` completes, then finish the
    /// requests in flight.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serve on `127.0.0.1:0` in a background task: the address and the
    /// task (abort it, or let the runtime end, to stop).
    pub async fn spawn_on_loopback(
        self,
    ) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(self.serve(listener, std::future::pending()));
        Ok((addr, task))
    }

    /// Like [`Simulator::spawn_on_loopback`], with a clean stop.
    pub async fn start(self) -> std::io::Result<RunningSim> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.clone().serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningSim {
            sim: self,
            addr,
            base_url: base_url(addr),
            stop: Some(tx),
            task,
        })
    }

    // ----- applications -------------------------------------------------

    /// Register a trusted app (random 32-hex id/secret when `None`). It acts
    /// for a PBX user of its own.
    pub fn add_trusted_app(
        &self,
        client_id: Option<&str>,
        client_secret: Option<&str>,
    ) -> Result<AppInfo, SimError> {
        self.shared.registry().add_app(
            client_id.map(str::to_owned),
            client_secret.map(str::to_owned),
            None,
            None,
        )
    }

    /// Register a public app with its redirect URI (random id/secret when
    /// `None`).
    pub fn add_public_app(
        &self,
        client_id: Option<&str>,
        client_secret: Option<&str>,
        redirect_uri: &str,
    ) -> Result<AppInfo, SimError> {
        self.shared.registry().add_app(
            client_id.map(str::to_owned),
            client_secret.map(str::to_owned),
            Some(redirect_uri.to_owned()),
            None,
        )
    }

    /// From now on the app's grants answer 401 `invalid_client` and its
    /// tokens stop working.
    pub fn revoke_client(&self, client_id: &str) -> Result<(), SimError> {
        self.shared.registry().revoke(client_id)
    }

    /// Create every app of a seed file.
    pub fn load_seed(&self, seed: &SeedFile) -> Result<(), SimError> {
        for a in &seed.trusted {
            self.add_trusted_app(Some(&a.client_id), Some(&a.client_secret))?;
        }
        for a in &seed.public {
            let uri = a.redirect_uri.as_deref().ok_or_else(|| {
                SimError::Invalid(format!("public app {:?} needs a redirect_uri", a.client_id))
            })?;
            self.add_public_app(Some(&a.client_id), Some(&a.client_secret), uri)?;
        }
        Ok(())
    }

    /// Trusted apps created through `POST /api/ver1.0/application/`, in
    /// order: `(name, client_id)`.
    pub fn created_apps(&self) -> Vec<(String, String)> {
        self.shared.registry().created_apps()
    }

    /// Number of registered apps of any kind.
    pub fn app_count(&self) -> usize {
        self.shared.registry().app_count()
    }

    // ----- authorization ------------------------------------------------

    /// What a click on "Allow" does: a fresh PBX user grants `client_id`
    /// access; returns the authorization code.
    pub fn approve(&self, client_id: &str, redirect_uri: &str) -> Result<String, SimError> {
        self.approve_as(client_id, redirect_uri, None)
    }

    /// [`Simulator::approve`] as the PBX user `login` (created on first use);
    /// `None` means a fresh user.
    pub fn approve_as(
        &self,
        client_id: &str,
        redirect_uri: &str,
        login: Option<&str>,
    ) -> Result<String, SimError> {
        self.shared.approve(client_id, redirect_uri, login)
    }

    /// True when `token` was issued here and is neither expired nor revoked.
    pub fn issued_token_valid(&self, token: &str) -> bool {
        let now = self.shared.now();
        self.shared.registry().token_valid(token, now)
    }

    // ----- configuration and faults ---------------------------------------

    pub fn set_token_lifetime(&self, secs: u64) {
        self.shared.config().token_lifetime_secs = secs;
    }

    pub fn update_config(&self, update: &ConfigUpdate) {
        let mut c = self.shared.config();
        if let Some(v) = update.token_lifetime_secs {
            c.token_lifetime_secs = v;
        }
        if let Some(v) = update.omit_expires_in {
            c.omit_expires_in = v;
        }
        if let Some(v) = update.code_lifetime_secs {
            c.code_lifetime_secs = v;
        }
        if let Some(v) = update.oauth_rate_limit_per_sec {
            c.oauth_rate_limit_per_sec = v;
        }
        if let Some(v) = update.oauth_max_concurrent {
            c.oauth_max_concurrent = v;
        }
    }

    pub fn config(&self) -> SimConfig {
        self.shared.config().clone()
    }

    /// Replace the injected faults; `throttle_for_secs` counts from now.
    pub fn set_faults(&self, faults: Faults) {
        let now = self.shared.now();
        self.shared.faults().set(faults, now);
    }

    /// Back to a healthy provider.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// The faults in force (`fail_next` counts down as it fires).
    pub fn faults(&self) -> Faults {
        self.shared.faults().faults.clone()
    }

    // ----- statistics ---------------------------------------------------

    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// `/oauth/token` requests that named `client_id`.
    pub fn token_requests_for(&self, client_id: &str) -> u64 {
        self.shared.stats.token_requests_for(client_id)
    }

    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Access tokens held (valid or not yet swept).
    pub fn live_token_count(&self) -> usize {
        self.shared.registry().live_token_count()
    }
}
