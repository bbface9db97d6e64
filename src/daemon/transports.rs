//! The daemon's transports as named tasks: each server the daemon starts
//! (gRPC, the local admin socket, the OAuth callback, `/metrics`) is
//! spawned here and kept as a [`Transport`], so shutdown waits for all of
//! them in one loop ([`drain`]). Split from `daemon.rs`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::api::serve::ApiRouter;
use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::onboarding::Onboarding;
use crate::overview::Overview;

/// A running server, waited for by name on shutdown.
pub(super) struct Transport {
    name: &'static str,
    task: JoinHandle<Result<(), String>>,
    /// Whether a failure fails the shutdown; the metrics endpoint's only
    /// costs a scrape, so it is logged.
    fatal: bool,
    /// A socket file to remove once the server ended.
    socket_file: Option<PathBuf>,
}

impl Transport {
    /// A server task already spawned (its error as text).
    pub(super) fn spawned(name: &'static str, task: JoinHandle<Result<(), String>>) -> Self {
        Self {
            name,
            task,
            fatal: true,
            socket_file: None,
        }
    }

    fn spawn<E: std::fmt::Display>(
        name: &'static str,
        server: impl Future<Output = Result<(), E>> + Send + 'static,
    ) -> Self {
        Self::spawned(
            name,
            tokio::spawn(async move { server.await.map_err(|e| e.to_string()) }),
        )
    }
}

/// Waits for every transport (after `serving` was cancelled); the last
/// fatal failure is the result.
pub(super) async fn drain(transports: Vec<Transport>) -> Result<(), DaemonError> {
    let mut result = Ok(());
    for t in transports {
        let ended = match t.task.await {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        match ended {
            Ok(()) => tracing::info!("{} stopped", t.name),
            Err(e) if t.fatal => result = Err(DaemonError::Serve(e)),
            Err(e) => tracing::error!("{} failed: {e}", t.name),
        }
        if let Some(path) = t.socket_file {
            let _ = std::fs::remove_file(&path);
        }
    }
    result
}

/// Binds `grpc.admin_socket` when configured; done before anything is
/// spawned, so a failure leaves nothing running.
pub(super) fn bind_admin_socket(
    config: &Config,
) -> Result<Option<(UnixListener, PathBuf)>, DaemonError> {
    let Some(path) = &config.grpc.admin_socket else {
        return Ok(None);
    };
    let unix =
        crate::api::serve::bind_admin_socket(path).map_err(|source| DaemonError::AdminSocket {
            path: path.clone(),
            source,
        })?;
    Ok(Some((unix, path.clone())))
}

/// Serves the local admin socket's router until `serving` is cancelled.
pub(super) fn serve_admin_socket(
    router: ApiRouter,
    (unix, path): (UnixListener, PathBuf),
    serving: &CancellationToken,
) -> Transport {
    let stop = serving.clone().cancelled_owned();
    let mut t = Transport::spawn(
        "admin socket server",
        router.serve_with_incoming_shutdown(UnixListenerStream::new(unix), stop),
    );
    tracing::info!(path = %path.display(), "local admin socket listening");
    t.socket_file = Some(path);
    t
}

/// The OAuth callback listener, when `[callback] listen` is set.
pub(super) async fn serve_callback(
    config: &Config,
    onboarding: &Arc<Onboarding>,
    audit: &Audit,
    serving: &CancellationToken,
) -> Result<Option<(std::net::SocketAddr, Transport)>, DaemonError> {
    let Some(addr) = config.callback.listen_addr() else {
        return Ok(None);
    };
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::CallbackListen {
            addr: addr.to_owned(),
            source,
        })?;
    let at = l.local_addr().map_err(DaemonError::Listener)?;
    let t = Transport::spawn(
        "callback listener",
        crate::api::callback::serve(l, onboarding.clone(), audit.clone(), serving.clone()),
    );
    tracing::info!(listen = %at, "OAuth callback listener serves GET /oauth/callback");
    Ok(Some((at, t)))
}

/// The `/metrics` endpoint, when `[metrics] listen` is set.
pub(super) async fn serve_metrics(
    config: &Config,
    metrics: &Arc<Metrics>,
    overview: &Arc<Overview>,
    serving: &CancellationToken,
) -> Result<Option<(std::net::SocketAddr, Transport)>, DaemonError> {
    let Some(addr) = config.metrics_listen() else {
        return Ok(None);
    };
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::MetricsListen {
            addr: addr.to_owned(),
            source,
        })?;
    let bound = l.local_addr().map_err(DaemonError::Listener)?;
    tracing::info!(listen = %bound, "metrics endpoint at http://{bound}/metrics");
    let mut t = Transport::spawn(
        "metrics endpoint",
        crate::api::metrics_http::serve(l, metrics.clone(), overview.clone(), serving.clone()),
    );
    t.fatal = false;
    Ok(Some((bound, t)))
}
