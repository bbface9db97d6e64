//! Whether this replica was paused long enough that its cache may be
//! behind changes the others no longer waited for it to apply, and the
//! wait for its next catch-up.
//!
//! Several replicas: an admin call (disable, delete, revoke) returns once
//! every replica with a live heartbeat has applied it, or after
//! `lease_ttl_ms`. A replica paused longer than that (SIGSTOP, a frozen
//! VM) is left out; resumed, it would serve what it held before until its
//! next change-feed pass, up to two seconds. So a ticker notes every
//! [`TICK`] that the process runs; a gap longer than
//! [`CatchUp::stale_after`] (or a call that sees the ticker that late
//! before it has run) means a pause, and calls then wait, at most
//! [`WAIT_AT_MOST`], for a change-feed pass started after them. A pass
//! that fails (the database out of reach) ends the wait too: a cut-off
//! replica serves from memory, as a partition must. A pass that hangs on
//! a silent network does not make anything wait: the ticker still runs.
//!
//! The change-feed sync (`crate::cluster`) runs the ticker and the passes
//! and reports them here; the transport waits here before answering. One
//! node (SQLite) never enables it.
//!
//! Does not: read the feed, or decide what a change means.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// The longest a call waits for a catch-up before it is answered from
/// memory anyway (as with a database that does not answer).
pub const WAIT_AT_MOST: Duration = Duration::from_secs(1);

/// How often the ticker notes that the process runs.
pub const TICK: Duration = Duration::from_millis(250);

/// The pause detector and the catch-up wait, shared by the sync and the
/// transport.
pub struct CatchUp {
    /// 0: off (one node). Else the longest gap between ticks that is not a
    /// pause, in ms.
    stale_after_ms: AtomicU64,
    base: Instant,
    /// The last tick, in ms since `base`.
    alive_ms: AtomicU64,
    /// When a pause was noticed (ms since `base`, at least 1); 0: none
    /// waiting for its catch-up.
    paused_at_ms: AtomicU64,
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
            alive_ms: AtomicU64::new(0),
            paused_at_ms: AtomicU64::new(0),
            nudge: Notify::new(),
            finished: watch::channel(0).0,
        }
    }
}

impl CatchUp {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Turns the detector on; `stale_after` from [`Self::stale_after`].
    pub fn enable(&self, stale_after: Duration) {
        self.alive_ms.store(self.now_ms(), Ordering::SeqCst);
        let ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        self.stale_after_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// Turns the detector off (the ticker stopped: shutting down).
    pub fn disable(&self) {
        self.stale_after_ms.store(0, Ordering::SeqCst);
        self.paused_at_ms.store(0, Ordering::SeqCst);
    }

    /// The longest gap between ticks that is not a pause: half the time an
    /// admin call waits for a live replica (so any pause it gave up on is
    /// caught), and at least a second (so a busy machine's late tick is
    /// not taken for one).
    pub fn stale_after(lease_ttl_ms: u64) -> Duration {
        Duration::from_millis(lease_ttl_ms / 2).max(Duration::from_secs(1))
    }

    /// For the ticker, every [`TICK`]: the process runs. A gap since the
    /// last tick longer than the limit was a pause: the next pass is due.
    pub fn tick(&self) {
        let limit = self.stale_after_ms.load(Ordering::SeqCst);
        let now = self.now_ms();
        if limit != 0 && now.saturating_sub(self.alive_ms.load(Ordering::SeqCst)) > limit {
            // Before the tick is noted, so a call always sees one or the
            // other.
            self.paused_at_ms.store(now.max(1), Ordering::SeqCst);
            self.nudge.notify_one();
        }
        self.alive_ms.store(now, Ordering::SeqCst);
    }

    /// Whether a call must wait for a catch-up first (cheap: the hot path
    /// asks it on every call).
    pub fn is_stale(&self) -> bool {
        let limit = self.stale_after_ms.load(Ordering::SeqCst);
        limit != 0
            && (self.paused_at_ms.load(Ordering::SeqCst) != 0
                || self
                    .now_ms()
                    .saturating_sub(self.alive_ms.load(Ordering::SeqCst))
                    > limit)
    }

    /// Waits until a pass that started after this call has finished, at
    /// most [`WAIT_AT_MOST`].
    pub async fn wait(&self) {
        let asked = self.now_ms();
        let mut finished = self.finished.subscribe();
        self.nudge.notify_one();
        let _ = tokio::time::timeout(WAIT_AT_MOST, finished.wait_for(|at| *at >= asked)).await;
    }

    /// For the sync: a call or the ticker asks for a pass now.
    pub async fn nudged(&self) {
        self.nudge.notified().await
    }

    /// For the sync: a pass starts; hand the mark to [`Self::pass_done`].
    pub fn pass_starts(&self) -> u64 {
        self.now_ms()
    }

    /// For the sync: the pass that started at `started` has finished,
    /// read to the feed's end or failed (then the replica is cut off and
    /// answers from memory): a pause noticed before it started is over.
    pub fn pass_done(&self, started: u64) {
        let paused = self.paused_at_ms.load(Ordering::SeqCst);
        if paused != 0 && started >= paused {
            let _ =
                self.paused_at_ms
                    .compare_exchange(paused, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
        self.finished.send_modify(|at| *at = (*at).max(started));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn after_a_pause_calls_wait_for_a_pass_started_after_them() {
        let gate = Arc::new(CatchUp::default());
        gate.tick();
        assert!(!gate.is_stale(), "off on one node");
        gate.enable(Duration::from_millis(300));
        gate.tick();
        assert!(!gate.is_stale());
        // A pause: no tick for longer than the limit. A call that comes
        // before the ticker runs again sees it...
        std::thread::sleep(Duration::from_millis(400));
        assert!(gate.is_stale());
        let before = gate.pass_starts();
        std::thread::sleep(Duration::from_millis(5));
        // ...and so does one after it.
        gate.tick();
        assert!(gate.is_stale());
        let done = Arc::new(AtomicBool::new(false));
        let waiter = tokio::spawn({
            let (gate, done) = (gate.clone(), done.clone());
            async move {
                gate.wait().await;
                done.store(true, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A pass that started before the pause was noticed ends nothing.
        gate.pass_done(before);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!done.load(Ordering::SeqCst));
        assert!(gate.is_stale());
        // One that started after the call does, well before WAIT_AT_MOST.
        gate.pass_done(gate.pass_starts());
        tokio::time::timeout(WAIT_AT_MOST / 2, waiter)
            .await
            .expect("the wait ended with the pass")
            .unwrap();
        gate.tick();
        assert!(!gate.is_stale());
        // Shutting down: the silence after the last tick is no pause.
        gate.disable();
        std::thread::sleep(Duration::from_millis(400));
        assert!(!gate.is_stale());
    }

    #[test]
    fn ticks_in_time_are_no_pause_whatever_the_passes_do() {
        let gate = CatchUp::default();
        gate.enable(Duration::from_millis(100));
        // A pass hanging on a silent network: no pass finishes, the
        // process runs, nothing waits.
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(30));
            gate.tick();
            assert!(!gate.is_stale());
        }
    }
}
