//! Closing idle connections (`grpc.idle_timeout_ms`).
//!
//! Why: a live client that holds a TCP connection open with nothing on it
//! answers keepalive pings and finished its handshake, so neither the
//! handshake deadline nor keepalive (`accept.rs`, `serve.rs`) ever closes
//! it, and 10,000 of them hold the whole `grpc.max_connections` cap.
//!
//! How: the accept loop registers each connection under its peer address
//! (the key `streams.rs` uses for its per-connection caps) and polls an
//! [`IdleTimer`] from the connection's reads. A tower layer on the router
//! ([`IdleLayer`]) marks the connection busy from the moment a request
//! arrives until its response body is dropped (the same response-body
//! guard as the stream caps), so an open WatchToken or health Watch
//! stream keeps its connection, however quiet the stream is.
//!
//! Closing is not graceful: tonic 0.14 and hyper offer no way to send
//! GOAWAY on one connection (only on all at shutdown, or after a fixed
//! `max_connection_age`), so the connection's reads end (EOF) and hyper
//! drops it. A request the daemon has read is marked busy before the next
//! read (hyper calls the service as soon as h2 hands it the stream), so it
//! is always answered; a call a client sends at the very moment of closing
//! is never read and fails at the client with a transport error
//! (UNAVAILABLE or UNKNOWN "connection closed" in tonic), safe to retry.
//! Later calls on a tonic channel reconnect by themselves.
//!
//! Does not: close connections of the local admin socket (not registered).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::{Instant, Sleep};
use tonic::codegen::http::{self, Extensions};
use tonic::codegen::{BoxFuture, Service};
use tower::Layer;

use super::streams::{conn_key, ConnKey, Held};
use crate::metrics::Metrics;

/// One connection's requests and streams in progress. Atomics, not a
/// lock: every request on the connection touches it, from whichever
/// worker runs it, and a lock holder preempted by the kernel would stall
/// the other workers' requests for a scheduler tick.
#[derive(Debug)]
struct Entry {
    in_progress: AtomicU32,
    /// When `in_progress` last became 0 (or the connection was opened), in
    /// ms since the registry's `epoch`.
    idle_since_ms: AtomicU64,
}

#[derive(Debug)]
pub struct IdleConnections {
    /// `None`: idle connections are never closed (`idle_timeout_ms = 0`).
    timeout: Option<Duration>,
    /// Read on every request, written only when a connection opens or
    /// closes.
    conns: RwLock<HashMap<ConnKey, Arc<Entry>>>,
    epoch: Instant,
    metrics: Option<Arc<Metrics>>,
}

impl IdleConnections {
    pub fn new(idle_timeout_ms: u64, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            timeout: (idle_timeout_ms > 0).then(|| Duration::from_millis(idle_timeout_ms)),
            conns: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            metrics,
        }
    }

    fn conns_write(&self) -> RwLockWriteGuard<'_, HashMap<ConnKey, Arc<Entry>>> {
        self.conns.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection from `peer`; `None` when idle closing is
    /// off. Dropping the timer forgets the connection.
    pub fn register(self: &Arc<Self>, peer: SocketAddr) -> Option<IdleTimer> {
        let timeout = self.timeout?;
        let entry = Arc::new(Entry {
            in_progress: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(ms_since(self.epoch)),
        });
        self.conns_write().insert(ConnKey::Tcp(peer), entry.clone());
        Some(IdleTimer {
            registry: self.clone(),
            key: ConnKey::Tcp(peer),
            entry,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired: false,
        })
    }

    /// Marks the request's connection busy until the guard is dropped;
    /// `None` for connections that are not registered.
    fn busy(&self, ext: &Extensions) -> Option<Busy> {
        let key = conn_key(ext)?;
        let entry = self
            .conns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)?
            .clone();
        entry.in_progress.fetch_add(1, Ordering::SeqCst);
        Some(Busy {
            entry,
            epoch: self.epoch,
        })
    }
}

/// Milliseconds from `epoch` to now (the registry's clock for idle times).
fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(Instant::now().saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// A request or stream in progress on a connection.
struct Busy {
    entry: Arc<Entry>,
    epoch: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The idle time is stamped before the count falls, so a timer that
        // sees 0 in progress never reads an idle time older than this
        // request's end (it would close the connection at once).
        let now = ms_since(self.epoch);
        self.entry.idle_since_ms.fetch_max(now, Ordering::SeqCst);
        self.entry.in_progress.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's idle deadline, polled from its reads (`accept::Conn`):
/// the connection's task polls reads all the time, so the timer's wake-up
/// reaches it without a task of its own.
pub struct IdleTimer {
    registry: Arc<IdleConnections>,
    key: ConnKey,
    entry: Arc<Entry>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimer {
    /// True once the connection has been idle for the timeout (and from
    /// then on); otherwise arranges a wake-up for the next check.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        while self.sleep.poll_unpin(cx).is_ready() {
            let now = Instant::now();
            let next = if self.entry.in_progress.load(Ordering::SeqCst) > 0 {
                // Busy: look again in a timeout; the idle time counts from
                // when the last request or stream ends.
                now + self.timeout
            } else {
                let idle_since = self.entry.idle_since_ms.load(Ordering::SeqCst);
                self.registry.epoch + Duration::from_millis(idle_since) + self.timeout
            };
            if next <= now {
                self.expired = true;
                if let Some(m) = &self.registry.metrics {
                    m.connection_closed_idle();
                }
                tracing::debug!(
                    peer = ?self.key,
                    "connection closed: no request or stream for grpc.idle_timeout_ms ({:?})",
                    self.timeout
                );
                return true;
            }
            self.sleep.as_mut().reset(next);
        }
        false
    }
}

impl Drop for IdleTimer {
    fn drop(&mut self) {
        let mut conns = self.registry.conns_write();
        // A new connection from the same address may have replaced ours.
        if conns
            .get(&self.key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            conns.remove(&self.key);
        }
    }
}

/// Marks a connection busy while a request or stream is in progress on it.
#[derive(Clone, Debug)]
pub struct IdleLayer(pub Arc<IdleConnections>);

impl<S> Layer<S> for IdleLayer {
    type Service = TrackActivity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackActivity {
            inner,
            registry: self.0.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrackActivity<S> {
    inner: S,
    registry: Arc<IdleConnections>,
}

type Body = tonic::body::Body;

impl<S> Service<http::Request<Body>> for TrackActivity<S>
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
        let Some(busy) = self.registry.busy(req.extensions()) else {
            return Box::pin(self.inner.call(req));
        };
        let answer = self.inner.call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|inner| {
                Body::new(Held {
                    inner,
                    _guard: busy,
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::server::TcpConnectInfo;

    fn on(peer: SocketAddr) -> Extensions {
        let mut ext = Extensions::new();
        ext.insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(peer),
        });
        ext
    }

    fn expired(timer: &mut IdleTimer) -> bool {
        timer.poll_expired(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(IdleConnections::new(1_000, Some(metrics.clone())));
        let peer = SocketAddr::from(([127, 0, 0, 1], 4000));
        let mut timer = registry.register(peer).unwrap();
        assert!(!expired(&mut timer));
        let busy = registry.busy(&on(peer)).unwrap();
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert!(!expired(&mut timer), "a stream in progress keeps it open");
        drop(busy);
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!expired(&mut timer));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(expired(&mut timer));
        assert!(expired(&mut timer));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("pbx_tokend_grpc_connections_closed_idle_total 1"),
            "{text}"
        );
        // Unknown connections are not tracked; a dropped timer forgets its own.
        assert!(registry
            .busy(&on(SocketAddr::from(([127, 0, 0, 1], 1))))
            .is_none());
        drop(timer);
        assert!(registry.busy(&on(peer)).is_none());
        assert!(IdleConnections::new(0, None).timeout.is_none());
    }
}
