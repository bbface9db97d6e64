//! The renewal scheduler: one loop reads due jobs from the queue and starts a
//! worker per job, at most `max_concurrent` in all and
//! `max_concurrent_per_host` per PBX host. It sleeps until the next job is
//! due, a worker finishes, or the broker says the schedule changed.
//!
//! The queue lives in SQLite, so a restart loses nothing: jobs that fell due
//! while the daemon was down are spread over time at start-up
//! ([`spread_overdue`]) instead of being fired in one burst.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Jitter};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::{Store, StoreError};

/// The loop wakes at least this often, so its heartbeat proves liveness to
/// the systemd watchdog even when nothing is due.
pub const MAX_IDLE: Duration = Duration::from_secs(5);
/// How many due jobs one pass reads beyond those already running.
const BATCH: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    pub max_concurrent: u32,
    pub max_concurrent_per_host: u32,
}

/// Shared between the loop and whoever watches it (watchdog, metrics).
#[derive(Debug, Default)]
pub struct SchedulerStatus {
    /// Last time the loop went round (ms since epoch, from the broker clock).
    pub heartbeat: AtomicI64,
    /// Renewals currently running.
    pub in_flight: AtomicI64,
}

pub struct Scheduler {
    broker: Arc<Broker>,
    limits: Mutex<SchedulerLimits>,
    status: Arc<SchedulerStatus>,
    worker_done: Arc<Notify>,
}

impl Scheduler {
    pub fn new(broker: Arc<Broker>, limits: SchedulerLimits) -> Self {
        Self {
            broker,
            limits: Mutex::new(limits),
            status: Arc::new(SchedulerStatus::default()),
            worker_done: Arc::new(Notify::new()),
        }
    }

    pub fn status(&self) -> Arc<SchedulerStatus> {
        self.status.clone()
    }

    /// SIGHUP: new limits apply to the permits handed out from now on.
    pub fn set_limits(&self, limits: SchedulerLimits) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
        self.worker_done.notify_one();
    }

    fn limits(&self) -> SchedulerLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown`; workers are spawned on `workers` so the daemon
    /// can wait for in-flight renewals when it drains.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, workers: TaskTracker) {
        let mut applied = self.limits();
        let mut global = Arc::new(Semaphore::new(applied.max_concurrent as usize));
        let mut per_host: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let in_flight: Arc<Mutex<HashSet<TenantId>>> = Arc::default();
        let clock = self.broker.clock().clone();
        let store: Store = self.broker.store().clone();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = clock.now();
            self.status.heartbeat.store(now.0, Ordering::Relaxed);
            let limits = self.limits();
            if limits.max_concurrent != applied.max_concurrent
                || limits.max_concurrent_per_host != applied.max_concurrent_per_host
            {
                // Running workers keep their permits on the old semaphores;
                // the PBX limiter still caps requests during the overlap.
                global = Arc::new(Semaphore::new(limits.max_concurrent as usize));
                per_host.clear();
                applied = limits;
            }
            let running = in_flight.lock().unwrap_or_else(|p| p.into_inner()).len() as u32;
            let mut saturated = false;
            match store.due_jobs(now, BATCH + running).await {
                Ok(jobs) => {
                    for job in jobs {
                        if in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .contains(&job.tenant_id)
                        {
                            continue;
                        }
                        let host_sem = per_host
                            .entry(job.host.clone())
                            .or_insert_with(|| {
                                Arc::new(Semaphore::new(limits.max_concurrent_per_host as usize))
                            })
                            .clone();
                        let Ok(host_permit) = host_sem.try_acquire_owned() else {
                            saturated = true;
                            continue;
                        };
                        let Ok(global_permit) = global.clone().try_acquire_owned() else {
                            saturated = true;
                            break;
                        };
                        in_flight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(job.tenant_id.clone());
                        self.status.in_flight.fetch_add(1, Ordering::Relaxed);
                        let broker = self.broker.clone();
                        let done = self.worker_done.clone();
                        let in_flight = in_flight.clone();
                        let status = self.status.clone();
                        workers.spawn(async move {
                            if let Err(e) = broker.renew_scheduled(&job.tenant_id).await {
                                tracing::debug!(tenant = %job.tenant_id, "scheduled renewal did not produce a token: {e}");
                            }
                            drop((host_permit, global_permit));
                            in_flight
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&job.tenant_id);
                            status.in_flight.fetch_sub(1, Ordering::Relaxed);
                            done.notify_one();
                        });
                    }
                }
                Err(e) => {
                    tracing::error!("renewal scheduler cannot read the job queue: {e}");
                }
            }
            // Sleep until the next job is due, or until something changes.
            let wait = if saturated {
                MAX_IDLE
            } else {
                match store.next_due_at().await {
                    Ok(Some(due)) => clock.now().until(due).min(MAX_IDLE),
                    Ok(None) => MAX_IDLE,
                    Err(_) => Duration::from_secs(1),
                }
            };
            // Due jobs that are all in flight would make `wait` zero: then
            // wait for a worker instead of spinning.
            let wait = if wait.is_zero() { MAX_IDLE } else { wait };
            // `biased`: a fixed polling order instead of tokio's random one,
            // so the deterministic simulation replays exactly; the order is
            // otherwise irrelevant (every branch just goes round the loop).
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.worker_done.notified() => {}
                _ = self.broker.schedule_changed().notified() => {}
            }
        }
    }
}

/// At start-up: jobs that fell due while the daemon was down are spread so
/// each host sees at most half its rate limit from them; the other half is
/// left for on-demand fetches. Returns how many jobs were moved.
pub async fn spread_overdue(
    store: &Store,
    now: UnixMs,
    per_host_rps: u32,
) -> Result<usize, StoreError> {
    spread_overdue_with(store, now, per_host_rps, &Jitter::entropy()).await
}

/// [`spread_overdue`] with the jitter drawn from `jitter` (seeded in the
/// deterministic simulation).
pub async fn spread_overdue_with(
    store: &Store,
    now: UnixMs,
    per_host_rps: u32,
    jitter: &Jitter,
) -> Result<usize, StoreError> {
    let overdue = store.due_jobs(now, u32::MAX).await?;
    // Ordered by host so the draws from `jitter` happen in the same order
    // on every run (a HashMap would visit hosts in a random order).
    let mut by_host: BTreeMap<String, Vec<TenantId>> = BTreeMap::new();
    for job in overdue {
        by_host.entry(job.host).or_default().push(job.tenant_id);
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
