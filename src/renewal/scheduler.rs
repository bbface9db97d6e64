//! The renewal scheduler: one loop reads due jobs from the queue and starts a
//! worker per job, at most `max_concurrent` in all and
//! `max_concurrent_per_host` per PBX host. It sleeps until the next job is
//! due, a worker finishes, or the broker says the schedule changed.
//!
//! Several replicas: a worker holds its host's permit and its global
//! permit only until its PBX request is over (the broker drops them as a
//! [`RequestTurn`]); the outcome's database write that follows counts
//! only among the renewals in progress, at most 512 or `max_concurrent`
//! (`scheduler/permits.rs`); and a freed turn starts the next job the last read
//! left without reading the queue again. On a loaded PostgreSQL that write
//! (a share of a group commit) took longer than the request itself: with
//! the host's permits held through it the host's renewals fell behind
//! demand with the PBX mostly idle, and with the global ones a replica
//! renewed at most `max_concurrent` per commit wait (2,238/s against
//! SQLite's 3,113/s at 64). One node keeps both to the end (see
//! `try_start`).
//!
//! Each pass skips the hosts whose workers are all busy: a host whose due
//! jobs pile up (rate-limited, slow) neither costs a read of its backlog on
//! every pass nor hides other hosts' due jobs behind it.
//!
//! The queue lives in SQLite, so a restart loses nothing: jobs that fell due
//! while the daemon was down are spread over time at start-up
//! ([`spread_overdue_with`]) instead of being fired in one burst.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::demand::HostDemand;
use super::duty::Duty;
use super::parking::Parking;
use crate::broker::{Broker, Jitter, RequestTurn, Scheduling};
use crate::clock::{SharedClock, UnixMs};
use crate::config::Config;
use crate::domain::TenantId;
use crate::store::{DueJob, Store, StoreError};
use permits::{HostTurn, Permits};

mod permits;

/// The loop wakes at least this often, so its heartbeat proves liveness to
/// the systemd watchdog even when nothing is due.
pub const MAX_IDLE: Duration = Duration::from_secs(5);
/// The shortest sleep between passes: a job that fell due while the pass
/// ran is started next pass, without the loop ever spinning.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// How long a pass waits after a notification for more of them.
const COALESCE: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    pub max_concurrent: u32,
    pub max_concurrent_per_host: u32,
    /// `limits.per_host_requests_per_second`: the budget the hosts' renewal
    /// demand is measured against (`demand.rs`).
    pub per_host_rps: u32,
}

impl SchedulerLimits {
    /// `refresh.max_concurrent` in all; per host, `refresh.max_concurrent_per_host`
    /// but never more than the host's limiter lets through at once
    /// (`limits.per_host_concurrent`). A worker beyond that only waits in the
    /// limiter while holding a global permit: a few slow or hung hosts then
    /// held all of them and starved the healthy hosts (the full-size
    /// simulation saw renewals on healthy hosts run 300 s late).
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_concurrent: config.refresh.max_concurrent,
            max_concurrent_per_host: config
                .refresh
                .max_concurrent_per_host
                .min(config.limits.per_host_concurrent),
            per_host_rps: config.limits.per_host_requests_per_second,
        }
    }
}

/// Shared between the loop and whoever watches it (watchdog, metrics).
#[derive(Debug, Default)]
pub struct SchedulerStatus {
    /// Last time the loop went round (ms since epoch, from the engine's clock).
    pub heartbeat: AtomicI64,
    /// Renewals currently running.
    pub in_flight: AtomicI64,
    /// Each host's renewal demand, from the last assessment (`demand.rs`).
    demand: Mutex<Vec<HostDemand>>,
}

impl SchedulerStatus {
    /// Each host's renewal demand as last assessed (every few seconds), in
    /// host order; empty before the first pass.
    pub fn demand(&self) -> Vec<HostDemand> {
        self.demand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set_demand(&self, hosts: Vec<HostDemand>) {
        *self.demand.lock().unwrap_or_else(|p| p.into_inner()) = hosts;
    }
}

pub struct Scheduler {
    broker: Arc<Broker>,
    /// The job queue is read here directly, not through the broker.
    store: Store,
    clock: SharedClock,
    limits: Mutex<SchedulerLimits>,
    status: Arc<SchedulerStatus>,
    worker_done: Arc<Notify>,
    /// Several replicas: only hosts whose lease this replica holds are
    /// renewed here (`duty.rs`). `None` on one node.
    duty: Option<Arc<Duty>>,
}

impl Scheduler {
    /// The broker runs each renewal; `store` holds the job queue; `clock`
    /// is the broker's (the engine passes the same one to both).
    pub fn new(
        broker: Arc<Broker>,
        store: Store,
        clock: SharedClock,
        limits: SchedulerLimits,
    ) -> Self {
        Self {
            broker,
            store,
            clock,
            limits: Mutex::new(limits),
            status: Arc::new(SchedulerStatus::default()),
            worker_done: Arc::new(Notify::new()),
            duty: None,
        }
    }

    /// Renews only the hosts `duty` holds, each write fenced by its epoch.
    pub fn with_duty(mut self, duty: Arc<Duty>) -> Self {
        self.duty = Some(duty);
        self
    }

    pub fn status(&self) -> Arc<SchedulerStatus> {
        self.status.clone()
    }

    /// SIGHUP: new limits apply to the permits handed out from now on.
    pub fn set_limits(&self, limits: SchedulerLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.worker_done.notify_one();
    }

    /// Several replicas: a renewal gives its host's turn back when the PBX
    /// answered, and jobs a read could not start wait in
    /// `permits.pending` for a freed turn. One node keeps the turn to the
    /// end and reads the queue on every wake (see `try_start`).
    fn early_turns(&self) -> bool {
        self.duty.is_some()
    }

    fn limits(&self) -> SchedulerLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown`; workers are spawned on `workers` so the daemon
    /// can wait for in-flight renewals when it drains.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, workers: TaskTracker) {
        let mut permits = Permits::new(self.limits());
        let clock = self.clock.clone();
        let store: Store = self.store.clone();
        let mut parking = Parking::default();
        // This pass starts jobs an earlier read left (`permits.pending`)
        // instead of reading the queue.
        let mut quick = false;
        let mut last_read = tokio::time::Instant::now();
        let mut notes = PassNotes::default();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = clock.now();
            self.status.heartbeat.store(now.0, Ordering::Relaxed);
            let limits = self.limits();
            if permits.apply(limits) {
                // Running workers keep their permits on the old semaphores;
                // the PBX limiter still caps requests during the overlap.
                quick = false;
            }
            // The read stopped at its limit: more jobs may be due behind
            // hosts that filled up during this pass, which the next pass
            // skips; so look again at once.
            let mut truncated = false;
            let jobs: VecDeque<DueJob> = if quick {
                // Jobs the last read left are started first (earliest due
                // first), each as its host gets a turn back; with every
                // permit taken, the next wake-up will.
                if permits.saturated() {
                    VecDeque::new()
                } else {
                    std::mem::take(&mut permits.pending)
                }
            } else {
                parking
                    .before_pass(&self.broker, &store, &self.status, limits.per_host_rps, now)
                    .await;
                notes = PassNotes::default();
                // With every global permit taken (or every renewal in
                // progress) there is nothing to start: wait for a worker.
                if permits.saturated() {
                    VecDeque::new()
                } else {
                    last_read = tokio::time::Instant::now();
                    let mut skip_hosts = permits.busy_hosts();
                    if let Some(duty) = &self.duty {
                        skip_hosts.extend(duty.hosts_not_on_duty());
                    }
                    // The read brings the other hosts' jobs afresh; a
                    // skipped host keeps what an earlier read left of it.
                    permits.pending.retain(|job| skip_hosts.contains(&job.host));
                    // Jobs already running are still due until they finish,
                    // and so are jobs whose new due time could not be
                    // written.
                    let running = permits.running();
                    let deferred = self.broker.deferred_count();
                    let ahead = if self.early_turns() { READ_AHEAD } else { 0 };
                    let limit = u32::try_from(
                        permits.global.available_permits() + running + deferred + ahead,
                    )
                    .unwrap_or(u32::MAX);
                    permits.begin_read();
                    match store.ready_jobs(now, skip_hosts, limit).await {
                        Ok(ready) => {
                            notes.next_due = ready.next_due_at;
                            truncated = ready.due.len() >= limit as usize;
                            ready.due.into()
                        }
                        Err(e) => {
                            tracing::error!("renewal scheduler cannot read the job queue: {e}");
                            notes.next_due = Some(now.plus_ms(1_000));
                            VecDeque::new()
                        }
                    }
                }
            };
            self.start_jobs(jobs, &mut permits, &parking, &mut notes, now, &workers);
            // Idle tenants' due jobs on hosts whose budget is short
            // (parking.rs): moved ahead in one write.
            let to_park = std::mem::take(&mut notes.to_park);
            parking.park(&self.broker, &store, to_park, now).await;
            // Sleep until the next job is due, or until something changes (a
            // worker finishing or giving its host's turn back frees permits;
            // the broker moving a job).
            let saturated = permits.saturated();
            let wait = match notes.next_due {
                _ if saturated => MAX_IDLE,
                _ if notes.off_duty => Duration::from_secs(1),
                _ if truncated => MIN_WAIT,
                Some(due) => clock.now().until(due).clamp(MIN_WAIT, MAX_IDLE),
                None => MAX_IDLE,
            };
            // `biased`: a fixed polling order instead of tokio's random one,
            // so the deterministic simulation replays exactly; the order is
            // otherwise irrelevant (every branch just goes round the loop).
            let notified = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => false,
                _ = self.worker_done.notified() => true,
                _ = self.broker.schedule_changed().notified() => true,
            };
            // Several replicas: woken while the last read left due jobs a
            // host can start (a turn given back, a renewal recorded), start
            // the next one now, without reading the queue: under load the
            // read and the coalescing wait below were most of a renewal's
            // time between two requests of a host, and every renewal
            // recorded wakes the loop. A job moved earlier meanwhile is
            // read at the latest REREAD_AFTER after the last read. Woken
            // with every permit taken (a renewal recorded after its turn
            // went back), wait for the next wake-up the same way: a
            // coalescing wait and a read there found the permits back and
            // read the queue again instead of starting what it left.
            quick = notified
                && self.early_turns()
                && last_read.elapsed() < REREAD_AFTER
                && (permits.can_start_pending()
                    || (permits.saturated() && !permits.pending.is_empty()));
            if notified && !quick {
                // One pass for every change that lands within COALESCE: a
                // finished renewal alone sends two (its job moved, its
                // worker done), and at hundreds of renewals a second a pass
                // per notification was a large share of the CPU per renewal.
                tokio::time::sleep(COALESCE).await;
                let _ = self.worker_done.notified().now_or_never();
                let _ = self.broker.schedule_changed().notified().now_or_never();
            }
        }
    }

    /// Starts what it can of `jobs` (earliest due first). Jobs whose host
    /// has no turn free, and all jobs after the global permits ran out,
    /// stay in `permits.pending` for the next wake-up (several replicas;
    /// one node reads them again).
    fn start_jobs(
        &self,
        jobs: VecDeque<DueJob>,
        permits: &mut Permits,
        parking: &Parking,
        notes: &mut PassNotes,
        now: UnixMs,
        workers: &TaskTracker,
    ) {
        let keep = self.early_turns();
        let mut saturated = false;
        for job in jobs {
            let left = if saturated {
                job
            } else {
                match self.try_start(job, permits, parking, notes, now, workers) {
                    Start::Started | Start::Passed => continue,
                    Start::HostBusy(job) => job,
                    Start::Saturated(job) => {
                        saturated = true;
                        job
                    }
                }
            };
            if keep {
                permits.pending.push_back(left);
            }
        }
    }

    /// One due job: passed (running, deferred, off duty, parked), started,
    /// or handed back because its host or the whole scheduler is full.
    fn try_start(
        &self,
        job: DueJob,
        permits: &mut Permits,
        parking: &Parking,
        notes: &mut PassNotes,
        now: UnixMs,
        workers: &TaskTracker,
    ) -> Start {
        if permits.is_running_or_just_done(&job.tenant_id) {
            return Start::Passed;
        }
        // The store could not write this job's next due time (full disk):
        // its row is stale, the broker knows the real time. Without this
        // the job ran again at once, a PBX request each time.
        if let Some(at) = self
            .broker
            .deferred_until(&job.tenant_id)
            .filter(|at| *at > now)
        {
            notes.next_due = Some(notes.next_due.map_or(at, |n| n.min(at)));
            return Start::Passed;
        }
        // A host first seen since the last lease round: not ours (yet);
        // look again in a second. Not in this replica's cache yet (created
        // on another replica): it would finish at once and be read again
        // every pass.
        let fence = match &self.duty {
            Some(duty) => match duty.fence(&job.host) {
                Some(f) if self.broker.knows(&job.tenant_id) => Some(f),
                _ => {
                    notes.off_duty = true;
                    return Start::Passed;
                }
            },
            None => None,
        };
        // Parked only by the host's duty holder (the one that would renew
        // it).
        if parking.should_park(&self.broker, &job.host, &job.tenant_id, now) {
            notes.to_park.push(job.tenant_id);
            return Start::Passed;
        }
        if permits.in_progress_full() {
            return Start::Saturated(job);
        }
        let Ok(host_permit) = permits.host(&job.host).try_acquire_owned() else {
            return Start::HostBusy(job);
        };
        let Ok(global_permit) = permits.global.clone().try_acquire_owned() else {
            return Start::Saturated(job);
        };
        permits.mark_running(&job.tenant_id);
        self.status.in_flight.fetch_add(1, Ordering::Relaxed);
        let broker = self.broker.clone();
        let done = self.worker_done.clone();
        let in_flight = permits.in_flight.clone();
        let status = self.status.clone();
        // Several replicas: the turn and the global permit go back when the
        // PBX answered (the write to a loaded PostgreSQL took longer than
        // the request). One node keeps them to the end: its write is a
        // millisecond or two, and giving the turn back early there
        // stretched GetToken's tail during renewals (`bench-tail.sh` soak,
        // 1.27x -> 5.3x).
        let (turn, kept) = if self.early_turns() {
            let turn = HostTurn::new(host_permit, global_permit, done.clone());
            (Some(RequestTurn::new(turn)), None)
        } else {
            (None, Some((host_permit, global_permit)))
        };
        let scheduling = Scheduling { duty: fence, turn };
        workers.spawn(async move {
            if let Err(e) = broker.renew_on_duty(&job.tenant_id, scheduling).await {
                tracing::debug!(tenant = %job.tenant_id, "scheduled renewal did not produce a token: {e}");
            }
            drop(kept);
            in_flight.finish(&job.tenant_id);
            status.in_flight.fetch_sub(1, Ordering::Relaxed);
            done.notify_one();
        });
        Start::Started
    }
}

/// Several replicas: due jobs a read brings beyond what can start at once.
/// They wait in `permits.pending` and start as turns come back, without a
/// read each: on PostgreSQL a read took a millisecond or two of the
/// server's time plus the round trip, and most of the rows it returned
/// were the renewals in progress (still due until written), so reading
/// for each freed turn cost the server more than the renewals' writes and
/// left the turn idle while it ran.
const READ_AHEAD: usize = 256;

/// After a read of the queue, wake-ups start the jobs it left for this
/// long; then the queue is read again (jobs moved or deleted meanwhile are
/// harmless to start: the broker checks each one, but the read also
/// brings new hosts and the next due time).
const REREAD_AFTER: Duration = Duration::from_millis(250);

/// What a pass found besides the renewals it started.
#[derive(Default)]
struct PassNotes {
    /// When the next job not read falls due (deferred jobs included).
    next_due: Option<UnixMs>,
    /// A due job of a host this replica has no duty for was passed.
    off_duty: bool,
    /// Idle tenants' due jobs to move ahead (parking.rs), written after
    /// each pass.
    to_park: Vec<TenantId>,
}

enum Start {
    Started,
    /// Running already, deferred, off duty or parked.
    Passed,
    HostBusy(DueJob),
    Saturated(DueJob),
}

/// At start-up: jobs that fell due while the daemon was down are spread so
/// each host sees at most half its rate limit from them; the other half is
/// left for on-demand fetches. The jobs of `renewed_elsewhere` (hosts
/// another replica holds the lease of) stay as they are: they are overdue
/// because that replica is behind, not because the cluster was stopped,
/// and moving them would only delay them. Returns how many jobs were
/// moved. `jitter` is entropy in the daemon, seeded in the deterministic
/// simulation.
pub async fn spread_overdue_with(
    store: &Store,
    now: UnixMs,
    per_host_rps: u32,
    renewed_elsewhere: &[String],
    jitter: &Jitter,
) -> Result<usize, StoreError> {
    let overdue = store.due_jobs(now, u32::MAX).await?;
    // Ordered by host so the draws from `jitter` happen in the same order
    // on every run (a HashMap would visit hosts in a random order).
    let mut by_host: BTreeMap<String, Vec<TenantId>> = BTreeMap::new();
    for job in overdue {
        if !renewed_elsewhere.contains(&job.host) {
            by_host.entry(job.host).or_default().push(job.tenant_id);
        }
    }
    let budget_per_s = (f64::from(per_host_rps) / 2.0).max(1.0);
    let step_ms = 1000.0 / budget_per_s;
    let mut moves = Vec::new();
    for (_, tenants) in by_host {
        // Up to one second's budget can go right away.
        if tenants.len() as f64 <= budget_per_s {
            continue;
        }
        for (i, id) in tenants.into_iter().enumerate() {
            let at = now.plus_ms((i as f64 * step_ms + jitter.next() * step_ms) as i64);
            moves.push((id, at));
        }
    }
    let n = moves.len();
    if n > 0 {
        store.reschedule_many(moves).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
