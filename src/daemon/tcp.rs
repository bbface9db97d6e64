//! The TCP gRPC listener's wiring: the loopback-without-TLS rule and the
//! server task over the accept loop (`api/accept.rs`: connection cap,
//! handshake deadline, idle connections; `api/drain.rs`: stop accepting on
//! shutdown), plain or TLS. Split from `daemon/mod.rs`.

use std::sync::Arc;

use crate::api::serve::ApiRouter;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::api::accept::{self, AcceptSettings};
use crate::api::drain::Drain;
use crate::api::tls::{self, ReloadableTls};
use crate::config::Config;
use crate::metrics::Metrics;

/// Serves `router` on `listener` until `serving` is cancelled, with the
/// accept loop's `settings` (`AcceptSettings::from_config`). Warns first
/// when the descriptor limit cannot carry `grpc.max_connections`.
pub(super) fn spawn_server(
    router: ApiRouter,
    listener: TcpListener,
    settings: AcceptSettings,
    tls: Option<&Arc<ReloadableTls>>,
    drain: &Drain,
    metrics: &Arc<Metrics>,
    serving: &CancellationToken,
) -> JoinHandle<Result<(), String>> {
    let max_connections = u64::try_from(settings.max_connections).unwrap_or(u64::MAX);
    if let Some(warning) = accept::check_fd_limit(max_connections) {
        tracing::warn!("{warning}");
    }
    let stop = serving.clone().cancelled_owned();
    match tls {
        Some(tls) => {
            let serve = router.serve_with_incoming_shutdown(
                accept::incoming(
                    listener,
                    drain.stop_accepting(),
                    settings,
                    metrics.clone(),
                    tls::handshake(tls.clone()),
                ),
                stop,
            );
            tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) })
        }
        None => {
            let serve = router.serve_with_incoming_shutdown(
                accept::incoming(
                    listener,
                    drain.stop_accepting(),
                    settings,
                    metrics.clone(),
                    accept::plain,
                ),
                stop,
            );
            tokio::spawn(async move { serve.await.map_err(|e| e.to_string()) })
        }
    }
}

/// Without TLS, only loopback unless `insecure_listen_public` (then warn).
pub(super) fn check_listen_address(
    config: &Config,
    addr: std::net::SocketAddr,
) -> Result<(), DaemonError> {
    if config.tls_enabled() || addr.ip().is_loopback() {
        return Ok(());
    }
    if !config.grpc.insecure_listen_public {
        return Err(DaemonError::InsecureListen(addr));
    }
    tracing::warn!(
        listen = %addr,
        "serving gRPC WITHOUT TLS on a non-loopback address (grpc.insecure_listen_public = true): API keys and tokens cross the network in clear"
    );
    Ok(())
}
