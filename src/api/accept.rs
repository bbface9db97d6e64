//! The TCP accept loop in front of tonic (plain and TLS alike): caps the
//! connections open at once (`grpc.max_connections`), gives each one
//! `grpc.handshake_timeout_ms` to finish its TLS handshake (when TLS is on)
//! and send the HTTP/2 connection preface, and counts and logs what it
//! refuses.
//!
//! Why: 20,100 TCP connections that never sent a byte filled the daemon's
//! 20,000 file descriptors; valid clients timed out and nothing was logged.
//! Now such a connection is closed after the handshake timeout, a flood
//! beyond the cap is closed at once (a rate-limited warning says so), and
//! the cap leaves descriptors for the database, PBX calls and new clients.
//! Dead peers of established connections are closed by HTTP/2 keepalive
//! pings (`serve.rs`); live ones with nothing in progress for
//! `grpc.idle_timeout_ms` by [`Conn`]'s reads ending (`idle.rs`).
//!
//! The preface is read here (24 fixed bytes) and replayed to hyper by
//! [`Conn`], so a connection counts as "handshaken" only once it really
//! speaks HTTP/2.
//!
//! Does not: limit streams or requests per connection (`serve.rs`), or
//! authenticate anyone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::idle::{IdleConnections, IdleTimer};
use crate::config::GrpcConfig;
use crate::metrics::Metrics;

/// What every HTTP/2 client sends first (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Connections accepted but not yet through their handshake; more are
/// closed at once (a flood of silent connections cannot pile up tasks).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// At most one warning per this interval while connections are refused.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Descriptors the daemon needs besides client connections: the database
/// and its WAL, PBX HTTP connections, the admin socket, metrics, logs.
pub const FD_RESERVE: u64 = 1024;

/// The `[grpc]` settings of the accept loop, and where it registers
/// connections to be closed once idle (`grpc.idle_timeout_ms`, `idle.rs`).
#[derive(Debug, Clone)]
pub struct AcceptSettings {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub idle: Arc<IdleConnections>,
}

impl AcceptSettings {
    pub fn from_config(g: &GrpcConfig, idle: Arc<IdleConnections>) -> Self {
        Self {
            max_connections: usize::try_from(g.max_connections).unwrap_or(usize::MAX),
            handshake_timeout: Duration::from_millis(g.handshake_timeout_ms),
            idle,
        }
    }
}

/// A connection's place under the cap; gives it back (and lowers the
/// open-connections gauge) when the connection is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// A handshaken connection as tonic sees it: the stream, with the HTTP/2
/// preface we already read replayed in front of it.
pub struct Conn<IO> {
    io: IO,
    /// Bytes of [`PREFACE`] already handed back to the reader.
    replayed: usize,
    /// Ends the reads (EOF: hyper drops the connection) once the
    /// connection has been idle for `grpc.idle_timeout_ms`.
    idle: Option<IdleTimer>,
    _slot: Slot,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.idle.as_mut().is_some_and(|t| t.poll_expired(cx)) {
            return Poll::Ready(Ok(()));
        }
        if let Some(rest) = PREFACE.get(this.replayed..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// No handshake below HTTP/2: the plain-TCP listener.
pub fn plain(tcp: TcpStream) -> std::future::Ready<io::Result<TcpStream>> {
    std::future::ready(Ok(tcp))
}

/// Why a connection was closed before serving.
#[derive(Clone, Copy)]
enum Refused {
    Limit,
    Timeout,
    Failed,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Limit => "limit",
            Refused::Timeout => "handshake_timeout",
            Refused::Failed => "handshake_failed",
        }
    }
}

/// Logs at most one warning per [`WARN_EVERY`], with how many were
/// refused since the last one.
struct Warner {
    last: Option<Instant>,
    suppressed: u64,
}

impl Warner {
    fn refused_at_cap(&mut self, max: usize, peer: std::net::SocketAddr) {
        self.suppressed += 1;
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            %peer,
            refused = self.suppressed,
            max_connections = max,
            "connection limit reached (grpc.max_connections): closing new connections; see pbx_tokend_grpc_connections_refused_total"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }

    fn accept_failed(&mut self, e: &io::Error) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!("accepting a connection failed (out of file descriptors? see LimitNOFILE and grpc.max_connections): {e}");
        self.last = Some(Instant::now());
    }
}

struct State<F, IO> {
    /// `None` once a shutdown began: the socket is closed, new clients are
    /// refused by the kernel and go elsewhere.
    listener: Option<TcpListener>,
    stop: CancellationToken,
    slots: Arc<Semaphore>,
    pending: JoinSet<Result<Conn<IO>, Refused>>,
    handshake: F,
    settings: AcceptSettings,
    metrics: Arc<Metrics>,
    warner: Warner,
}

/// Accepts TCP connections and yields those that finished `handshake` and
/// sent the HTTP/2 preface within the timeout, never more than
/// `max_connections` open at once (handshakes in progress included), each
/// registered with `settings.idle` to be closed once idle.
/// When `stop` is cancelled it closes the listener but does not end (an
/// ended stream would make tonic send GOAWAY at once; see `drain.rs`).
pub fn incoming<F, Fut, IO>(
    listener: TcpListener,
    stop: CancellationToken,
    settings: AcceptSettings,
    metrics: Arc<Metrics>,
    handshake: F,
) -> impl Stream<Item = Result<Conn<IO>, io::Error>> + Send + 'static
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = State {
        listener: Some(listener),
        stop,
        slots: Arc::new(Semaphore::new(settings.max_connections)),
        pending: JoinSet::new(),
        handshake,
        settings,
        metrics,
        warner: Warner {
            last: None,
            suppressed: 0,
        },
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            let Some(listener) = &s.listener else {
                return futures::future::pending().await;
            };
            tokio::select! {
                _ = s.stop.cancelled() => {
                    s.listener = None;
                    s.pending.abort_all();
                }
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => s.start(tcp, peer),
                    Err(e) => {
                        s.warner.accept_failed(&e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = s.pending.join_next(), if !s.pending.is_empty() => match done {
                    Ok(Ok(conn)) => return Some((Ok(conn), s)),
                    Ok(Err(why)) => s.metrics.connection_refused(why.label()),
                    Err(e) => tracing::error!("a connection handshake task failed: {e}"),
                }
            }
        }
    })
}

impl<F, Fut, IO> State<F, IO>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Takes a slot and starts the handshake, or closes the connection.
    fn start(&mut self, tcp: TcpStream, peer: std::net::SocketAddr) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) if self.pending.len() < MAX_PENDING_HANDSHAKES => p,
            _ => {
                self.metrics.connection_refused(Refused::Limit.label());
                self.warner
                    .refused_at_cap(self.settings.max_connections, peer);
                return;
            }
        };
        self.metrics.connection_opened();
        let slot = Slot {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        // Small answers must not wait for the peer's delayed ACK (h2load,
        // one connection with many streams: 40 ms stalls without it).
        let _ = tcp.set_nodelay(true);
        let handshake = (self.handshake)(tcp);
        let timeout = self.settings.handshake_timeout;
        let idle = self.settings.idle.clone();
        self.pending.spawn(async move {
            let result = tokio::time::timeout(timeout, async {
                let mut io = handshake.await?;
                let mut preface = [0u8; PREFACE.len()];
                io.read_exact(&mut preface).await?;
                if &preface != PREFACE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "not an HTTP/2 connection preface (gRPC needs HTTP/2)",
                    ));
                }
                Ok(io)
            })
            .await;
            match result {
                Ok(Ok(io)) => Ok(Conn {
                    io,
                    replayed: 0,
                    idle: idle.register(peer),
                    _slot: slot,
                }),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "connection handshake failed: {e}");
                    Err(Refused::Failed)
                }
                Err(_) => {
                    tracing::debug!(%peer, "connection closed: no handshake within {timeout:?}");
                    Err(Refused::Timeout)
                }
            }
        });
    }
}

/// Raises the soft RLIMIT_NOFILE towards what `max_connections` needs (up
/// to the hard limit) and returns a warning when it still falls short.
/// Under the systemd unit raising is not allowed (@resources is filtered):
/// `LimitNOFILE=` there must already fit.
pub fn check_fd_limit(max_connections: u64) -> Option<String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let needed = max_connections.saturating_add(FD_RESERVE);
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= needed {
        return None;
    }
    let target = needed.min(limit.maximum.unwrap_or(u64::MAX));
    let raised = target > current
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            },
        )
        .is_ok();
    let now = if raised { target } else { current };
    fd_limit_advice(now, max_connections)
}

/// The warning for a descriptor limit of `limit` under `max_connections`.
fn fd_limit_advice(limit: u64, max_connections: u64) -> Option<String> {
    let needed = max_connections.saturating_add(FD_RESERVE);
    (limit < needed).then(|| {
        format!(
            "the file descriptor limit (RLIMIT_NOFILE) is {limit} but grpc.max_connections = {max_connections} needs about {needed} ({FD_RESERVE} for the database, PBX calls and logs): raise LimitNOFILE= in the systemd unit (ulimit -n) or lower grpc.max_connections, or connections beyond the limit fail before the cap can refuse them"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_advice_names_both_knobs() {
        assert!(fd_limit_advice(20_000, 10_000).is_none());
        let text = fd_limit_advice(1024, 10_000).unwrap();
        assert!(text.contains("grpc.max_connections = 10000"), "{text}");
        assert!(text.contains("LimitNOFILE"), "{text}");
    }

    #[tokio::test]
    async fn the_preface_is_replayed_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let slots = Arc::new(Semaphore::new(1));
        let metrics = Arc::new(Metrics::new());
        metrics.connection_opened();
        let mut conn = Conn {
            io: server,
            replayed: 0,
            idle: None,
            _slot: Slot {
                _permit: slots.clone().try_acquire_owned().unwrap(),
                metrics: metrics.clone(),
            },
        };
        tokio::io::AsyncWriteExt::write_all(&mut client, b"SETTINGS")
            .await
            .unwrap();
        let mut got = vec![0u8; PREFACE.len() + 8];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        assert_eq!(&got[PREFACE.len()..], b"SETTINGS");
        assert_eq!(slots.available_permits(), 0);
        drop(conn);
        assert_eq!(slots.available_permits(), 1);
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("pbx_tokend_grpc_connections_open 0"),
            "{text}"
        );
    }
}
