//! Building and running the gRPC routers: health and reflection (v1 and
//! v1alpha; open),
//! GetToken's common case answered in front of the router
//! (`fast_get_token.rs`), TokenService and AdminService behind the auth
//! interceptor, with the
//! `[grpc]` limits (decoded message size, streams and requests in progress
//! per connection, per-request timeout, HTTP/2 keepalive). One router per
//! listener: the TCP one (plain or TLS) and, optionally, the local admin
//! socket, whose interceptor also trusts the peer's uid. Health Watch and
//! reflection streams are capped (`streams.rs`); GetToken goes through its
//! own interceptor so refused calls are counted (`auth::SplitGetToken`);
//! every service is gated by the drain (`drain.rs`); requests and streams
//! in progress mark their connection busy (`idle.rs`).
//!
//! Does not: bind TCP listeners (the caller passes one) or decide the
//! services' behaviour.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use super::admin::AdminApi;
use super::auth::{Authenticate, Guard, SplitGetToken};
use super::drain::{Drain, Gated};
use super::fast_get_token::{FastGetTokenLayer, FastPath};
use super::idle::IdleLayer;
use super::streams::{CapUnauthenticated, StreamCaps};
use super::token::TokenApi;
use crate::access::Clients;
use crate::config::GrpcConfig;
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::token_service_server::TokenServiceServer;

/// Everything a router serves; cloned into each router.
#[derive(Clone)]
pub struct Services {
    pub tokens: Arc<TokenApi>,
    pub admin: Arc<AdminApi>,
    pub clients: Arc<Clients>,
    /// Shared by the routers: one set of serving statuses.
    pub health: crate::health::HealthGrpc,
    /// Shared by the routers, so the total cap spans every listener.
    pub streams: Arc<StreamCaps>,
    /// Refuses new calls with UNAVAILABLE once a shutdown began.
    pub drain: Arc<Drain>,
}

/// Which listener a router is for.
#[derive(Clone, Copy, Debug)]
pub enum Listener {
    Tcp,
    /// The admin socket; peers with this uid (or root) are ADMIN.
    LocalSocket {
        own_uid: u32,
    },
}

/// A listener's router: every service behind the fast GetToken path, that
/// behind the oversize-message layer, and that behind the idle-connection
/// tracking (outermost, so every request counts).
pub type ApiRouter = Router<
    Stack<FastGetTokenLayer, Stack<super::oversize::OversizeLayer, Stack<IdleLayer, Identity>>>,
>;

/// The router for one listener. Fails only if the embedded descriptor sets
/// for reflection are broken (a build problem).
pub fn router(
    services: &Services,
    limits: &GrpcConfig,
    listener: Listener,
) -> Result<ApiRouter, tonic_reflection::server::Error> {
    // Both reflection versions: grpc.reflection.v1 for current tools, and
    // v1alpha for stock grpcio-reflection clients and older grpcurl.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection =
        CapUnauthenticated::new(reflection_builder().build_v1()?, services.streams.clone());
    let reflection_v1alpha = CapUnauthenticated::new(
        reflection_builder().build_v1alpha()?,
        services.streams.clone(),
    );
    let health = CapUnauthenticated::new(services.health.clone(), services.streams.clone());
    let max_message = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
    let authenticate = |guard| match listener {
        Listener::Tcp => Authenticate::new(services.clients.clone(), guard),
        Listener::LocalSocket { own_uid } => {
            Authenticate::local_socket(services.clients.clone(), guard, own_uid)
        }
    };
    // Once a shutdown began, new calls are refused before anything else.
    let gated = |inner| Gated {
        drain: services.drain.clone(),
        inner,
    };
    // Only on TCP: on the admin socket a peer may be ADMIN without a key,
    // which the full path decides.
    let fast_get_token = match listener {
        Listener::Tcp => FastGetTokenLayer::on(FastPath {
            tokens: services.tokens.clone(),
            clients: services.clients.clone(),
            drain: services.drain.clone(),
        }),
        Listener::LocalSocket { .. } => FastGetTokenLayer::off(),
    };
    let tokens = TokenServiceServer::from_arc(services.tokens.clone())
        .max_decoding_message_size(max_message);
    let admin =
        AdminServiceServer::from_arc(services.admin.clone()).max_decoding_message_size(max_message);
    Ok(tonic::transport::Server::builder()
        .layer(IdleLayer(services.streams.idle().clone()))
        .layer(super::oversize::OversizeLayer)
        .layer(fast_get_token)
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .concurrency_limit_per_connection(
            usize::try_from(limits.concurrency_per_connection).unwrap_or(usize::MAX),
        )
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        // Dead peers (half-open TCP, a client that stopped reading) are
        // found and closed instead of holding a descriptor for ever.
        .http2_keepalive_interval(Some(Duration::from_millis(limits.keepalive_interval_ms)))
        .http2_keepalive_timeout(Some(Duration::from_millis(limits.keepalive_timeout_ms)))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(SplitGetToken::new(
            InterceptedService::new(
                tokens.clone(),
                gated(authenticate(Guard::Tokens).counting_get_token(services.tokens.metrics())),
            ),
            InterceptedService::new(tokens, gated(authenticate(Guard::Tokens))),
        ))
        .add_service(InterceptedService::new(
            admin,
            gated(authenticate(Guard::Admin)),
        )))
}

/// Binds the admin socket at `path` with mode 0660. A stale socket file
/// (left by a crash) is removed first; any other kind of file is an error.
pub fn bind_admin_socket(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o750,
            )
            .create(parent)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// The daemon's own uid (the admin socket trusts it).
pub fn own_uid() -> u32 {
    rustix::process::getuid().as_raw()
}
