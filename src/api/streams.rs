//! Caps on long-lived gRPC streams, per connection and in total.
//!
//! Why: an HTTP/2 connection carries at most `grpc.max_concurrent_streams`
//! streams; once streams fill them, every other call on that connection
//! waits in the client until one closes (a RefreshTenant ran into its
//! deadline behind 256 WatchToken streams). So WatchToken streams have
//! their own per-connection cap below that limit, and unary calls always
//! find room. Health `Watch` and reflection streams need no API key, so
//! anyone who can connect could open them by the thousand (10,000 cost
//! 55 MB): they are capped per connection and in total.
//!
//! A refused stream gets RESOURCE_EXHAUSTED naming the config key, counts
//! in `pbx_tokend_streams_refused_total`, and logs a warning at most once a
//! minute per kind of stream (with the number refused meanwhile).
//!
//! A connection is told apart by its peer address (TCP, TLS) or, on the
//! local admin socket, by the peer's process id. A request whose connection
//! is unknown is held to the total only.
//!
//! Does not: authenticate (auth.rs) or limit unary calls
//! (`grpc.concurrency_per_connection`, in serve.rs).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tonic::codegen::http::{self, Extensions};
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tonic::Status;

use super::idle::IdleConnections;
use crate::clock::SharedClock;
use crate::config::GrpcConfig;
use crate::metrics::Metrics;

/// At most one warning per kind of stream in this interval.
const WARN_INTERVAL_MS: i64 = 60_000;

/// The streams that are capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// TokenService.WatchToken (per connection).
    Watch,
    /// AdminService.WatchTenantEvents (per connection; the same cap as
    /// WatchToken, counted apart).
    Events,
    /// Health Watch and reflection: no API key needed (per connection and
    /// in total).
    Unauthenticated,
}

impl StreamKind {
    fn label(self) -> &'static str {
        match self {
            StreamKind::Watch => "watch_token",
            StreamKind::Events => "watch_tenant_events",
            StreamKind::Unauthenticated => "unauthenticated",
        }
    }

    fn what(self) -> &'static str {
        match self {
            StreamKind::Watch => "WatchToken streams",
            StreamKind::Events => "WatchTenantEvents streams",
            StreamKind::Unauthenticated => "health Watch / reflection streams",
        }
    }
}

/// One connection, as far as the request's connection info tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum ConnKey {
    Tcp(SocketAddr),
    /// The local admin socket: peers have no address, so their process id.
    Local(Option<i32>),
}

pub(super) fn conn_key(ext: &Extensions) -> Option<ConnKey> {
    if let Some(tcp) = ext.get::<TcpConnectInfo>() {
        return tcp.remote_addr().map(ConnKey::Tcp);
    }
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        return tls.get_ref().remote_addr().map(ConnKey::Tcp);
    }
    ext.get::<UdsConnectInfo>()
        .map(|uds| ConnKey::Local(uds.peer_cred.and_then(|c| c.pid())))
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_connection: HashMap<ConnKey, u32>,
}

#[derive(Debug)]
struct Class {
    kind: StreamKind,
    per_connection: u32,
    per_connection_key: &'static str,
    /// `None`: no total cap.
    total: Option<(u32, &'static str)>,
    /// Taken only when a stream opens or ends, never on unary calls.
    counts: Mutex<Counts>,
    last_warn_ms: AtomicI64,
    refused_since_warn: AtomicU64,
}

impl Class {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Poisoning needs a panic between two integer updates.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, conn: Option<&ConnKey>) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(conn) = conn {
            if let Some(n) = counts.per_connection.get_mut(conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_connection.remove(conn);
                }
            }
        }
    }
}

/// Which cap refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    PerConnection,
    Total,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::PerConnection => "per_connection",
            Limit::Total => "total",
        }
    }
}

/// Open streams of one kind; `Drop` gives the place back.
#[derive(Debug)]
pub struct StreamPermit {
    class: Arc<Class>,
    conn: Option<ConnKey>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.class.release(self.conn.as_ref());
    }
}

/// The caps of both kinds, shared by every listener.
#[derive(Debug)]
pub struct StreamCaps {
    watch: Arc<Class>,
    events: Arc<Class>,
    unauthenticated: Arc<Class>,
    metrics: Option<Arc<Metrics>>,
    clock: SharedClock,
    /// What is in progress on each TCP connection (`idle.rs`): shared by
    /// the accept loop and the router.
    idle: Arc<IdleConnections>,
}

fn class(
    kind: StreamKind,
    per_connection: (u32, &'static str),
    total: Option<(u32, &'static str)>,
) -> Arc<Class> {
    Arc::new(Class {
        kind,
        per_connection: per_connection.0,
        per_connection_key: per_connection.1,
        total,
        counts: Mutex::new(Counts::default()),
        last_warn_ms: AtomicI64::new(i64::MIN),
        refused_since_warn: AtomicU64::new(0),
    })
}

impl StreamCaps {
    pub fn new(limits: &GrpcConfig, clock: SharedClock, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            watch: class(
                StreamKind::Watch,
                (
                    limits.max_watch_streams_per_connection,
                    "grpc.max_watch_streams_per_connection",
                ),
                None,
            ),
            events: class(
                StreamKind::Events,
                (
                    limits.max_watch_streams_per_connection,
                    "grpc.max_watch_streams_per_connection",
                ),
                None,
            ),
            unauthenticated: class(
                StreamKind::Unauthenticated,
                (
                    limits.max_unauthenticated_streams_per_connection,
                    "grpc.max_unauthenticated_streams_per_connection",
                ),
                Some((
                    limits.max_unauthenticated_streams,
                    "grpc.max_unauthenticated_streams",
                )),
            ),
            idle: Arc::new(IdleConnections::new(
                limits.idle_timeout_ms,
                metrics.clone(),
            )),
            metrics,
            clock,
        }
    }

    /// The TCP listener's connections, for closing idle ones.
    pub fn idle(&self) -> &Arc<IdleConnections> {
        &self.idle
    }

    /// A place for one more stream of `kind` on the request's connection,
    /// or RESOURCE_EXHAUSTED naming the cap that is full.
    pub fn acquire(&self, kind: StreamKind, ext: &Extensions) -> Result<StreamPermit, Status> {
        let class = match kind {
            StreamKind::Watch => &self.watch,
            StreamKind::Events => &self.events,
            StreamKind::Unauthenticated => &self.unauthenticated,
        };
        let conn = conn_key(ext);
        let refused = {
            let mut counts = class.counts();
            let on_conn = conn
                .as_ref()
                .and_then(|c| counts.per_connection.get(c).copied())
                .unwrap_or(0);
            if conn.is_some() && on_conn >= class.per_connection {
                Some(Limit::PerConnection)
            } else if class.total.is_some_and(|(cap, _)| counts.total >= cap) {
                Some(Limit::Total)
            } else {
                counts.total += 1;
                if let Some(c) = &conn {
                    *counts.per_connection.entry(c.clone()).or_insert(0) += 1;
                }
                None
            }
        };
        match refused {
            None => Ok(StreamPermit {
                class: class.clone(),
                conn,
            }),
            Some(limit) => Err(self.refuse(class, limit)),
        }
    }

    fn refuse(&self, class: &Class, limit: Limit) -> Status {
        if let Some(m) = &self.metrics {
            m.stream_refused(class.kind.label(), limit.label());
        }
        let (cap, key) = match limit {
            Limit::PerConnection => (class.per_connection, class.per_connection_key),
            Limit::Total => class.total.unwrap_or((0, "")),
        };
        let now = self.clock.now().0;
        let last = class.last_warn_ms.load(Ordering::Relaxed);
        let due = last == i64::MIN || now.saturating_sub(last) >= WARN_INTERVAL_MS;
        if due
            && class
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let meanwhile = class.refused_since_warn.swap(0, Ordering::Relaxed);
            tracing::warn!(
                streams = class.kind.label(),
                limit = limit.label(),
                refused_since_last_warning = meanwhile,
                "{key} = {cap} reached: new {} are refused with RESOURCE_EXHAUSTED (this warning repeats at most once a minute)",
                class.kind.what()
            );
        } else {
            class.refused_since_warn.fetch_add(1, Ordering::Relaxed);
        }
        let message = match limit {
            Limit::PerConnection => format!(
                "this connection already has {cap} {} open ({key} = {cap}); close one, or open more on another connection",
                class.kind.what()
            ),
            Limit::Total => format!(
                "the daemon already serves {cap} {} ({key} = {cap}); retry later",
                class.kind.what()
            ),
        };
        Status::resource_exhausted(message)
    }
}

/// Health `Watch` and every reflection call are streams; health `Check`
/// (unary) is not capped.
fn is_unauthenticated_stream(path: &str) -> bool {
    path == "/grpc.health.v1.Health/Watch" || path.starts_with("/grpc.reflection.")
}

/// Wraps the health or reflection service: each stream holds a permit in
/// its response body, given back when the body is dropped (stream ended or
/// reset by the client).
#[derive(Clone)]
pub struct CapUnauthenticated<S> {
    inner: S,
    caps: Arc<StreamCaps>,
}

impl<S> CapUnauthenticated<S> {
    pub fn new(inner: S, caps: Arc<StreamCaps>) -> Self {
        Self { inner, caps }
    }
}

impl<S: NamedService> NamedService for CapUnauthenticated<S> {
    const NAME: &'static str = S::NAME;
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for CapUnauthenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if !is_unauthenticated_stream(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        match self
            .caps
            .acquire(StreamKind::Unauthenticated, req.extensions())
        {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            Ok(permit) => {
                let answer = self.inner.call(req);
                Box::pin(async move {
                    let response = answer.await?;
                    Ok(response.map(|inner| {
                        Body::new(Held {
                            inner,
                            _guard: permit,
                        })
                    }))
                })
            }
        }
    }
}

/// A response body that holds a guard (a stream permit, or a connection's
/// mark of activity in `idle.rs`) for as long as it lives: hyper drops the
/// body when the stream ends or the client resets it.
pub(super) struct Held<G> {
    pub(super) inner: Body,
    pub(super) _guard: G,
}

impl<G: Unpin + Send + 'static> tonic::codegen::Body for Held<G> {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, UnixMs};

    fn caps(per_conn: u32, total: u32) -> (StreamCaps, Arc<Metrics>) {
        let limits = GrpcConfig {
            max_watch_streams_per_connection: per_conn,
            max_unauthenticated_streams_per_connection: per_conn,
            max_unauthenticated_streams: total,
            ..GrpcConfig::default()
        };
        let metrics = Arc::new(Metrics::new());
        let clock: SharedClock = Arc::new(ManualClock::new(UnixMs(1_700_000_000_000)));
        (
            StreamCaps::new(&limits, clock, Some(metrics.clone())),
            metrics,
        )
    }

    fn on(port: u16) -> Extensions {
        let mut ext = Extensions::new();
        let info = TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        };
        ext.insert(info);
        ext
    }

    #[test]
    fn per_connection_and_total_caps_and_release() {
        let (caps, metrics) = caps(2, 3);
        let kind = StreamKind::Unauthenticated;
        let a1 = caps.acquire(kind, &on(1)).unwrap();
        let _a2 = caps.acquire(kind, &on(1)).unwrap();
        let e = caps.acquire(kind, &on(1)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e
            .message()
            .contains("grpc.max_unauthenticated_streams_per_connection = 2"));
        let _b1 = caps.acquire(kind, &on(2)).unwrap();
        let e = caps.acquire(kind, &on(2)).unwrap_err();
        assert!(e.message().contains("grpc.max_unauthenticated_streams = 3"));
        // Unknown connections count against the total only.
        assert!(caps.acquire(kind, &Extensions::new()).is_err());
        drop(a1);
        let _a3 = caps.acquire(kind, &on(1)).unwrap();
        // Kinds are counted apart; WatchToken has no total cap.
        for port in 10..20 {
            std::mem::forget(caps.acquire(StreamKind::Watch, &on(port)).unwrap());
        }
        let text = metrics.encode().unwrap();
        assert!(text.contains(
            "pbx_tokend_streams_refused_total{kind=\"unauthenticated\",limit=\"per_connection\"} 1"
        ));
        assert!(text.contains(
            "pbx_tokend_streams_refused_total{kind=\"unauthenticated\",limit=\"total\"} 2"
        ));
    }

    #[test]
    fn a_connection_is_its_peer() {
        assert_eq!(
            conn_key(&on(7)),
            Some(ConnKey::Tcp(SocketAddr::from(([127, 0, 0, 1], 7))))
        );
        assert_eq!(conn_key(&Extensions::new()), None);
        assert!(is_unauthenticated_stream("/grpc.health.v1.Health/Watch"));
        assert!(is_unauthenticated_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_unauthenticated_stream("/grpc.health.v1.Health/Check"));
    }
}
