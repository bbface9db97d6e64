//! The scheduler loop's permits: `max_concurrent` in all and
//! `max_concurrent_per_host` per host, the tenants whose renewal is in
//! progress or finished since the queue was last read, and the due jobs
//! the last read could not start yet.
//!
//! Does not: decide which job starts (the loop in `scheduler.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::SchedulerLimits;
use crate::domain::TenantId;
use crate::store::DueJob;

/// Renewals in progress, writes included, when the permits go back at the
/// PBX's answer (several replicas): at least this many, or
/// `max_concurrent` if that is more. A group commit takes up to 256
/// outcomes (`store/postgres/refresh_batch.rs`); two batches' worth keeps
/// the next one full while one commits, and more only queue behind them
/// (with 4,096 allowed a replica renewed 3,590/s with writes waiting a
/// second; with 512, 4,090/s: `scripts/bench-renewals.sh`, the database
/// on a core of its own).
pub(super) const IN_PROGRESS_AT_LEAST: usize = 512;

/// The loop's permits: `max_concurrent` in all and
/// `max_concurrent_per_host` per host (a host's permit is its turn, given
/// back when the request is over), the tenants running, and the due jobs
/// the last read could not start yet.
pub(super) struct Permits {
    applied: SchedulerLimits,
    pub(super) global: Arc<Semaphore>,
    per_host: HashMap<String, Arc<Semaphore>>,
    pub(super) in_flight: InFlight,
    pub(super) pending: VecDeque<DueJob>,
}

/// The tenants whose renewal runs, and those whose renewal finished since
/// the loop last began to read the queue, shared with the workers.
///
/// Why the finished ones: a renewal that finishes while the read runs has
/// written its next due time after the read's snapshot, so the read still
/// returns its old, due row; started again, it found its token fresh and
/// only rewrote the due time (a fifth of a PostgreSQL replica's renewals
/// were such runs, each a write and a permit's round).
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<Tenants>>);

#[derive(Default)]
struct Tenants {
    running: HashSet<TenantId>,
    finished_since_read: HashSet<TenantId>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tenants> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker of `id` is done (its outcome written or given up on).
    pub(super) fn finish(&self, id: &TenantId) {
        let mut t = self.lock();
        t.running.remove(id);
        t.finished_since_read.insert(id.clone());
    }
}

impl Permits {
    pub(super) fn new(limits: SchedulerLimits) -> Self {
        Self {
            applied: limits,
            global: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            per_host: HashMap::new(),
            in_flight: InFlight::default(),
            pending: VecDeque::new(),
        }
    }

    /// SIGHUP's limits apply to the permits handed out from now on; true
    /// when they changed.
    pub(super) fn apply(&mut self, limits: SchedulerLimits) -> bool {
        if limits.max_concurrent == self.applied.max_concurrent
            && limits.max_concurrent_per_host == self.applied.max_concurrent_per_host
        {
            self.applied = limits;
            return false;
        }
        self.global = Arc::new(Semaphore::new(limits.max_concurrent as usize));
        self.per_host.clear();
        self.pending.clear();
        self.applied = limits;
        true
    }

    pub(super) fn host(&mut self, host: &str) -> Arc<Semaphore> {
        let per_host = self.applied.max_concurrent_per_host as usize;
        self.per_host
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(per_host)))
            .clone()
    }

    /// Every renewal in progress that may be (see
    /// [`IN_PROGRESS_AT_LEAST`]). Reached only when the permits go back
    /// before the write (several replicas); it bounds the outcomes waiting
    /// for a slow database.
    pub(super) fn in_progress_full(&self) -> bool {
        self.running() >= (self.applied.max_concurrent as usize).max(IN_PROGRESS_AT_LEAST)
    }

    /// Nothing can start until a worker gives something back.
    pub(super) fn saturated(&self) -> bool {
        self.global.available_permits() == 0 || self.in_progress_full()
    }

    /// Hosts with every turn taken: the read skips them.
    pub(super) fn busy_hosts(&self) -> Vec<String> {
        self.per_host
            .iter()
            .filter(|(_, sem)| sem.available_permits() == 0)
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// Whether a job left by the last read could start now.
    pub(super) fn can_start_pending(&self) -> bool {
        !self.saturated()
            && self.pending.iter().any(|job| {
                self.per_host
                    .get(&job.host)
                    .is_none_or(|sem| sem.available_permits() > 0)
            })
    }

    pub(super) fn running(&self) -> usize {
        self.in_flight.lock().running.len()
    }

    /// Whether `id` is not to start from the jobs read: it runs, or it
    /// finished after the read began (the read may predate its write).
    pub(super) fn is_running_or_just_done(&self, id: &TenantId) -> bool {
        let t = self.in_flight.lock();
        t.running.contains(id) || t.finished_since_read.contains(id)
    }

    pub(super) fn mark_running(&self, id: &TenantId) {
        self.in_flight.lock().running.insert(id.clone());
    }

    /// A read of the queue begins: it sees the writes of every renewal
    /// finished so far.
    pub(super) fn begin_read(&self) {
        self.in_flight.lock().finished_since_read.clear();
    }
}

/// A worker's permits (its host's turn and its global permit) while its
/// PBX request runs; given back, it wakes the loop to start the host's
/// next due renewal.
pub(super) struct HostTurn {
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    done: Arc<Notify>,
}

impl HostTurn {
    pub(super) fn new(
        host: OwnedSemaphorePermit,
        global: OwnedSemaphorePermit,
        done: Arc<Notify>,
    ) -> Self {
        Self {
            permits: Some((host, global)),
            done,
        }
    }
}

impl Drop for HostTurn {
    fn drop(&mut self) {
        // Free first, so the pass it wakes finds the permits.
        drop(self.permits.take());
        self.done.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: u32) -> SchedulerLimits {
        SchedulerLimits {
            max_concurrent,
            max_concurrent_per_host: 2,
            per_host_rps: 20,
        }
    }

    #[test]
    fn renewals_in_progress_are_bounded_even_with_the_permits_given_back() {
        let permits = Permits::new(limits(2));
        for i in 0..IN_PROGRESS_AT_LEAST - 1 {
            permits.mark_running(&TenantId::parse(&format!("t{i}")).unwrap());
        }
        assert!(!permits.saturated());
        permits.mark_running(&TenantId::parse("last").unwrap());
        assert!(permits.in_progress_full());
        assert!(permits.saturated(), "with every global permit free");
        assert_eq!(permits.global.available_permits(), 2);
    }

    #[test]
    fn a_renewal_finished_after_the_read_began_is_not_started_from_it() {
        let permits = Permits::new(limits(2));
        let (a, b) = (TenantId::parse("a").unwrap(), TenantId::parse("b").unwrap());
        permits.mark_running(&a);
        permits.mark_running(&b);
        permits.in_flight.finish(&a);
        permits.begin_read();
        // a finished before the read: the read sees its write.
        assert!(!permits.is_running_or_just_done(&a));
        assert!(permits.is_running_or_just_done(&b));
        // b finishes while the read runs: its row may be the old one.
        permits.in_flight.finish(&b);
        assert!(permits.is_running_or_just_done(&b));
        assert_eq!(permits.running(), 0);
        permits.begin_read();
        assert!(!permits.is_running_or_just_done(&b));
    }

    #[tokio::test]
    async fn a_turn_given_back_frees_its_host_and_global_permit_and_wakes_the_loop() {
        let mut permits = Permits::new(limits(1));
        let host = permits.host("a.example").try_acquire_owned().unwrap();
        let global = permits.global.clone().try_acquire_owned().unwrap();
        assert!(permits.saturated());
        assert_eq!(permits.busy_hosts().len(), 0, "one of two turns taken");
        let done = Arc::new(Notify::new());
        let turn = HostTurn::new(host, global, done.clone());
        let woken = done.notified();
        drop(turn);
        woken.await;
        assert!(!permits.saturated());
        assert_eq!(permits.host("a.example").available_permits(), 2);
    }
}
