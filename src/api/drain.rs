//! The lame-duck phase of a graceful shutdown: after SIGTERM the listener
//! stops accepting and every *new* TokenService/AdminService call is
//! answered UNAVAILABLE ("shutting down, retry elsewhere") on connections
//! that stay open, while calls already in progress finish. Only once
//! callers have gone quiet does the server send HTTP/2 GOAWAY.
//!
//! Why not GOAWAY at once: a tonic/hyper client that receives GOAWAY fails
//! the calls it has queued but not yet written with CANCELLED ("operation
//! was canceled"), although the daemon never saw them: 7 of 111,000 calls
//! under load came back CANCELLED on SIGTERM. An UNAVAILABLE answer instead
//! tells the caller the call did not run and may be retried.
//!
//! Does not: end WatchToken streams or wait for in-flight calls (the
//! server's graceful shutdown does both after the lame-duck phase).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::{Request, Status};

pub struct Drain {
    draining: AtomicBool,
    epoch: Instant,
    /// When a call was last refused (ms since `epoch`).
    last_refused_ms: AtomicU64,
    /// Cancelled when the listener must stop accepting.
    accepting: CancellationToken,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            last_refused_ms: AtomicU64::new(0),
            accepting: CancellationToken::new(),
        }
    }
}

impl Drain {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Cancelled when the accept loop must close the listener.
    pub fn stop_accepting(&self) -> CancellationToken {
        self.accepting.clone()
    }

    /// Starts the lame-duck phase: no new connections, new calls refused.
    pub fn begin(&self) {
        self.last_refused_ms.store(self.now_ms(), Ordering::Relaxed);
        self.draining.store(true, Ordering::Relaxed);
        self.accepting.cancel();
    }

    /// Returns once no call was refused for a quarter of `max` (callers
    /// have noticed), or after `max` at the latest.
    pub async fn settle(&self, max: Duration) {
        let quiet = u64::try_from((max / 4).as_millis()).unwrap_or(u64::MAX);
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            let last = self.last_refused_ms.load(Ordering::Relaxed);
            if self.now_ms().saturating_sub(last) >= quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether a shutdown began (the fast GetToken path then steps aside,
    /// so the refusal is counted in one place).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// UNAVAILABLE while draining; counts the call as seen.
    fn refuse(&self) -> Option<Status> {
        if !self.is_draining() {
            return None;
        }
        self.last_refused_ms.store(self.now_ms(), Ordering::Relaxed);
        Some(Status::unavailable(
            "pbx-tokend is shutting down: the call was not run; retry on another replica or after the restart",
        ))
    }
}

/// Runs `inner` (authentication) unless the daemon is draining.
#[derive(Clone)]
pub struct Gated<I> {
    pub drain: std::sync::Arc<Drain>,
    pub inner: I,
}

impl<I: Interceptor> Interceptor for Gated<I> {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.drain.refuse() {
            Some(status) => Err(status),
            None => self.inner.call(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_once_draining_and_settles_when_quiet() {
        let drain = std::sync::Arc::new(Drain::default());
        let mut gate = Gated {
            drain: drain.clone(),
            inner: |r: Request<()>| Ok(r),
        };
        assert!(gate.call(Request::new(())).is_ok());
        drain.begin();
        assert!(drain.stop_accepting().is_cancelled());
        let refused = gate.call(Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        let started = Instant::now();
        drain.settle(Duration::from_secs(4)).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(4));
    }
}
