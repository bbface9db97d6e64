//! Whether this replica's cache may be behind changes the others no longer
//! wait for it to apply, and the wait for its next catch-up.
//!
//! Several replicas: an admin call (disable, delete, revoke) returns once
//! every replica with a live heartbeat has applied it, or after
//! `lease_ttl_ms`. A replica paused longer than that (SIGSTOP, a frozen VM)
//! is left out; resumed, it would serve what it held before until its next
//! change-feed pass, up to two seconds. So when its last good pass started
//! longer ago than [`CatchUp::stale_after`], calls wait (bounded) for a pass
//! that starts after them. A replica whose passes fail (cut off from the
//! database) does not wait: it serves from memory, as a partition must.
//!
//! The change-feed sync (`crate::cluster`) runs the passes and reports
//! them here; the transport waits here before answering. One node
//! (SQLite) never enables it.
//!
//! Does not: read the feed, or decide what a change means.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// The longest a call waits for a catch-up before it is answered from
/// memory anyway (as with a database that does not answer).
pub const WAIT_AT_MOST: Duration = Duration::from_secs(1);

/// The cache's confirmed freshness, shared by the sync and the transport.
pub struct CatchUp {
    /// 0: off (one node). Else how old the last good pass may be, in ms.
    stale_after_ms: AtomicU64,
    base: Instant,
    /// When the last good pass started, in ms since `base`.
    confirmed_ms: AtomicU64,
    /// The last pass failed: the database is out of reach.
    failing: AtomicBool,
    /// Asks the sync for a pass now.
    nudge: Notify,
    /// When the last finished pass (good or not) started, in ms since
    /// `base`: what a waiting call watches.
    finished: watch::Sender<u64>,
}

impl Default for CatchUp {
    fn default() -> Self {
        Self {
            stale_after_ms: AtomicU64::new(0),
            base: Instant::now(),
            confirmed_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            nudge: Notify::new(),
            finished: watch::channel(0).0,
        }
    }
}

impl CatchUp {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Turns the guard on: passes run, and a cache whose last good pass
    /// started more than `stale_after` ago is caught up before answering.
    pub fn enable(&self, stale_after: Duration) {
        self.confirmed_ms.store(self.now_ms(), Ordering::Relaxed);
        let ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        self.stale_after_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// How old the last good pass may be before calls wait for the next.
    pub fn stale_after(lease_ttl_ms: u64, poll_every: Duration) -> Duration {
        // Below the time an admin call waits for a live replica (so any
        // pause it gave up on is caught), above the time between two
        // passes plus a slow one (so a busy replica does not wait).
        Duration::from_millis(lease_ttl_ms / 2).max(poll_every + Duration::from_millis(500))
    }

    /// Whether a call must wait for a catch-up first (cheap: the hot path
    /// asks it on every call).
    pub fn is_stale(&self) -> bool {
        let limit = self.stale_after_ms.load(Ordering::Relaxed);
        limit != 0
            && !self.failing.load(Ordering::Relaxed)
            && self
                .now_ms()
                .saturating_sub(self.confirmed_ms.load(Ordering::Relaxed))
                > limit
    }

    /// Waits until a pass that started after this call has finished, at
    /// most [`WAIT_AT_MOST`].
    pub async fn wait(&self) {
        let asked = self.now_ms();
        let mut finished = self.finished.subscribe();
        self.nudge.notify_one();
        let _ = tokio::time::timeout(WAIT_AT_MOST, finished.wait_for(|at| *at >= asked)).await;
    }

    /// For the sync: a call asks for a pass now.
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// For the sync: a pass starts; hand the mark to [`Self::pass_done`].
    pub fn pass_starts(&self) -> u64 {
        self.now_ms()
    }

    /// For the sync: the pass that started at `started` read the feed to
    /// its end (`ok`) or failed.
    pub fn pass_done(&self, started: u64, ok: bool) {
        if ok {
            self.confirmed_ms.fetch_max(started, Ordering::Relaxed);
        }
        self.failing.store(!ok, Ordering::Relaxed);
        self.finished.send_modify(|at| *at = (*at).max(started));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_cache_not_confirmed_for_too_long_waits_for_a_pass_started_after_the_call() {
        let gate = Arc::new(CatchUp::default());
        assert!(!gate.is_stale(), "off on one node");
        gate.enable(Duration::from_millis(100));
        assert!(!gate.is_stale());
        // A pause: no pass for longer than the limit.
        std::thread::sleep(Duration::from_millis(150));
        assert!(gate.is_stale());
        let before = gate.pass_starts();
        std::thread::sleep(Duration::from_millis(5));
        let done = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (gate, done) = (gate.clone(), done.clone());
            async move {
                gate.wait().await;
                done.store(true, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A pass that started before the call does not end its wait.
        gate.pass_done(before, true);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!done.load(Ordering::SeqCst));
        // One that started after it does, well before WAIT_AT_MOST.
        gate.pass_done(gate.pass_starts(), true);
        tokio::time::timeout(WAIT_AT_MOST / 2, waiter)
            .await
            .expect("the wait ended with the pass")
            .unwrap();
        assert!(!gate.is_stale());
    }

    #[test]
    fn a_replica_whose_passes_fail_answers_from_memory_without_waiting() {
        let gate = CatchUp::default();
        gate.enable(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(80));
        assert!(gate.is_stale());
        gate.pass_done(gate.pass_starts(), false);
        assert!(!gate.is_stale(), "cut off: served from memory");
        gate.pass_done(gate.pass_starts(), true);
        assert!(!gate.is_stale());
    }
}
