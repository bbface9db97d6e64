//! The renewal scheduler: one loop reads due jobs from the queue and starts a
//! worker per job, at most `max_concurrent` in all and
//! `max_concurrent_per_host` per PBX host. It sleeps until the next job is
//! due, a worker finishes, or the broker says the schedule changed.
//!
//! Each pass skips the hosts whose workers are all busy: a host whose due
//! jobs pile up (rate-limited, slow) neither costs a read of its backlog on
//! every pass nor hides other hosts' due jobs behind it.
//!
//! The queue lives in SQLite, so a restart loses nothing: jobs that fell due
//! while the daemon was down are spread over time at start-up
//! ([`spread_overdue`]) instead of being fired in one burst.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::demand::HostDemand;
use super::duty::Duty;
use super::parking::Parking;
use crate::broker::{Broker, Jitter};
use crate::clock::{SharedClock, UnixMs};
use crate::config::Config;
use crate::domain::TenantId;
use crate::store::{Store, StoreError};

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
        let clock = self.clock.clone();
        let store: Store = self.store.clone();
        let mut parking = Parking::default();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let now = clock.now();
            self.status.heartbeat.store(now.0, Ordering::Relaxed);
            let limits = self.limits();
            parking
                .before_pass(&self.broker, &store, &self.status, limits.per_host_rps, now)
                .await;
            if limits.max_concurrent != applied.max_concurrent
                || limits.max_concurrent_per_host != applied.max_concurrent_per_host
            {
                // Running workers keep their permits on the old semaphores;
                // the PBX limiter still caps requests during the overlap.
                global = Arc::new(Semaphore::new(limits.max_concurrent as usize));
                per_host.clear();
                applied = limits;
            }
            // With every global permit taken there is nothing to start: wait
            // for a worker to finish.
            let mut saturated = global.available_permits() == 0;
            let mut next_due: Option<UnixMs> = None;
            // The read stopped at its limit: more jobs may be due behind
            // hosts that filled up during this pass, which the next pass
            // skips; so look again at once.
            let mut truncated = false;
            // A due job of a host this replica has no duty for was passed.
            let mut off_duty = false;
            if !saturated {
                let mut skip_hosts: Vec<String> = per_host
                    .iter()
                    .filter(|(_, sem)| sem.available_permits() == 0)
                    .map(|(host, _)| host.clone())
                    .collect();
                if let Some(duty) = &self.duty {
                    skip_hosts.extend(duty.hosts_not_on_duty());
                }
                // Jobs already running are still due until they finish, and
                // so are jobs whose new due time could not be written.
                let running = in_flight.lock().unwrap_or_else(|p| p.into_inner()).len();
                let deferred = self.broker.deferred_count();
                let limit = u32::try_from(global.available_permits() + running + deferred)
                    .unwrap_or(u32::MAX);
                match store.ready_jobs(now, skip_hosts, limit).await {
                    Ok(ready) => {
                        next_due = ready.next_due_at;
                        truncated = ready.due.len() >= limit as usize;
                        // Idle tenants' due jobs on hosts whose budget is
                        // short (parking.rs): moved ahead in one write.
                        let mut to_park = Vec::new();
                        for job in ready.due {
                            if in_flight
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .contains(&job.tenant_id)
                            {
                                continue;
                            }
                            // The store could not write this job's next due
                            // time (full disk): its row is stale, the broker
                            // knows the real time. Without this the job ran
                            // again at once, a PBX request each time.
                            if let Some(at) = self
                                .broker
                                .deferred_until(&job.tenant_id)
                                .filter(|at| *at > now)
                            {
                                next_due = Some(next_due.map_or(at, |n| n.min(at)));
                                continue;
                            }
                            // A host first seen since the last lease round:
                            // not ours (yet); look again in a second.
                            // Not in this replica's cache yet (created on
                            // another replica): it would finish at once and
                            // be read again every pass.
                            let fence = match &self.duty {
                                Some(duty) => match duty.fence(&job.host) {
                                    Some(f) if self.broker.knows(&job.tenant_id) => Some(f),
                                    _ => {
                                        off_duty = true;
                                        continue;
                                    }
                                },
                                None => None,
                            };
                            // Parked only by the host's duty holder (the
                            // one that would renew it).
                            if parking.should_park(&self.broker, &job.host, &job.tenant_id, now) {
                                to_park.push(job.tenant_id);
                                continue;
                            }
                            let host_sem = per_host
                                .entry(job.host.clone())
                                .or_insert_with(|| {
                                    Arc::new(Semaphore::new(
                                        limits.max_concurrent_per_host as usize,
                                    ))
                                })
                                .clone();
                            let Ok(host_permit) = host_sem.try_acquire_owned() else {
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
                                if let Err(e) = broker.renew_on_duty(&job.tenant_id, fence).await {
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
                        parking.park(&self.broker, &store, to_park, now).await;
                    }
                    Err(e) => {
                        tracing::error!("renewal scheduler cannot read the job queue: {e}");
                        next_due = Some(now.plus_ms(1_000));
                    }
                }
            }
            // Sleep until the next job is due, or until something changes (a
            // worker finishing frees permits; the broker moving a job).
            let wait = match next_due {
                _ if saturated => MAX_IDLE,
                _ if off_duty => Duration::from_secs(1),
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
            if notified {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use futures::future::BoxFuture;

    use super::*;
    use crate::broker::BrokerSettings;
    use crate::clock::{SharedClock, TokioClock};
    use crate::crypto::Keyring;
    use crate::domain::{AccessToken, AppCredentials, PbxBaseUrl, TenantState};
    use crate::pbx::gated::GatedPbx;
    use crate::pbx::limiter::HostLimiters;
    use crate::pbx::{PbxApi, PbxError, TokenGrant};
    use crate::secret::Secret;
    use crate::store::NewTenant;

    const T0: UnixMs = UnixMs(1_700_000_000_000);

    /// `stuck.example.com` never answers; any other host answers at once.
    #[derive(Default)]
    struct OneStuckHost {
        stuck_calls: AtomicU32,
        other_calls: AtomicU32,
    }

    impl PbxApi for OneStuckHost {
        fn client_credentials<'a>(
            &'a self,
            base: &'a PbxBaseUrl,
            _: &'a AppCredentials,
        ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
            Box::pin(async move {
                if base.as_str().contains("stuck.example.com") {
                    self.stuck_calls.fetch_add(1, Ordering::Relaxed);
                    futures::future::pending::<()>().await;
                }
                self.other_calls.fetch_add(1, Ordering::Relaxed);
                Ok(TokenGrant {
                    access_token: Secret::new("fresh".into()),
                    token_type: "Bearer".into(),
                    expires_in_secs: Some(3600),
                    refresh_token: None,
                })
            })
        }
    }

    fn tenant(id: &str, host: &str, renew_at: UnixMs) -> NewTenant {
        NewTenant {
            id: TenantId::parse(id).unwrap(),
            display_name: id.into(),
            base_url: PbxBaseUrl::from_trusted(&format!("https://{host}")).unwrap(),
            state: TenantState::Active,
            trusted_app: Some(AppCredentials {
                client_id: "app".into(),
                client_secret: Secret::new("secret".into()),
            }),
            public_app: None,
            token: Some(AccessToken {
                value: Secret::new("held".into()),
                token_type: "Bearer".into(),
                issued_at: T0.plus_ms(-3_000_000),
                expires_at: T0.plus_ms(600_000),
            }),
            renew_at: Some(renew_at),
            now: T0,
        }
    }

    /// Starts the scheduler over `tenants` (plus their PBX double).
    async fn start(
        tenants: Vec<NewTenant>,
        limits: SchedulerLimits,
    ) -> (
        Arc<OneStuckHost>,
        Arc<Broker>,
        Arc<Scheduler>,
        CancellationToken,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_inline(
            &dir.path().join("db"),
            Arc::new(Keyring::from_key(&[1; 32])),
        )
        .unwrap();
        store.insert_tenants(tenants).await.unwrap();
        let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
        let pbx = Arc::new(OneStuckHost::default());
        let broker = Arc::new(Broker::new(
            clock.clone(),
            store.clone(),
            Arc::new(GatedPbx::new(
                pbx.clone(),
                Arc::new(HostLimiters::new(clock.clone(), 20, 6)),
                Config::default().pbx.request_timeout_ms,
            )),
            BrokerSettings::from_config(&Config::default()),
        ));
        broker.load().await.unwrap();
        let scheduler = Arc::new(Scheduler::new(broker.clone(), store, clock, limits));
        let shutdown = CancellationToken::new();
        tokio::spawn(scheduler.clone().run(shutdown.clone(), TaskTracker::new()));
        (pbx, broker, scheduler, shutdown, dir)
    }

    /// A pass whose read filled up with one host's jobs (more than that
    /// host could start) looks again at once, skipping the host, instead of
    /// waiting for the next notification or MAX_IDLE.
    #[tokio::test(start_paused = true)]
    async fn a_pass_cut_short_by_one_host_looks_again_at_once() {
        let mut tenants: Vec<NewTenant> = (0..10)
            .map(|i| {
                tenant(
                    &format!("stuck{i:02}"),
                    "stuck.example.com",
                    T0.plus_ms(-100 + i),
                )
            })
            .collect();
        tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(-1)));
        let limits = SchedulerLimits {
            max_concurrent: 4,
            max_concurrent_per_host: 2,
            per_host_rps: 20,
        };
        let (pbx, _broker, _scheduler, shutdown, _dir) = start(tenants, limits).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pbx.other_calls.load(Ordering::Relaxed), 1);
        shutdown.cancel();
    }

    /// Regression: the scheduler read the first 512 due jobs of the whole
    /// queue, so a host with a larger backlog (here one that never answers)
    /// hid every other host's due job behind it until the backlog drained.
    #[tokio::test(start_paused = true)]
    async fn a_host_with_a_backlog_never_hides_another_hosts_due_job() {
        let mut tenants: Vec<NewTenant> = (0..1_000)
            .map(|i| tenant(&format!("stuck{i:04}"), "stuck.example.com", T0.plus_ms(-i)))
            .collect();
        tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(2_000)));
        let limits = SchedulerLimits {
            max_concurrent: 64,
            max_concurrent_per_host: 16,
            per_host_rps: 20,
        };
        let (pbx, broker, scheduler, shutdown, _dir) = start(tenants, limits).await;

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            pbx.other_calls.load(Ordering::Relaxed),
            1,
            "quiet host not renewed"
        );
        let token = broker.get_token("quiet", 10).await.unwrap();
        assert_eq!(token.value.expose().as_str(), "fresh");
        // The stuck host got at most its limiter's concurrency, and the
        // scheduler never held more than its per-host cap for it.
        assert!(pbx.stuck_calls.load(Ordering::Relaxed) <= 6);
        assert_eq!(scheduler.status().in_flight.load(Ordering::Relaxed), 16);
        shutdown.cancel();
    }

    /// Regression (found by the full-size simulation): with the default
    /// caps, 64 in all and 16 per host, four hosts that stopped answering
    /// took every global permit (16 workers each, 10 of them only waiting
    /// for the host's limiter), and a healthy host's renewals waited until
    /// one of them recovered.
    #[tokio::test(start_paused = true)]
    async fn hosts_that_never_answer_leave_room_for_a_healthy_one() {
        let mut tenants: Vec<NewTenant> = Vec::new();
        for h in 0..8 {
            for i in 0..50 {
                tenants.push(tenant(
                    &format!("stuck{h}x{i:02}"),
                    &format!("h{h}.stuck.example.com"),
                    T0.plus_ms(-100 + i),
                ));
            }
        }
        tenants.push(tenant("quiet", "quiet.example.com", T0.plus_ms(-1)));
        let (pbx, _broker, scheduler, shutdown, _dir) =
            start(tenants, SchedulerLimits::from_config(&Config::default())).await;

        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            pbx.other_calls.load(Ordering::Relaxed),
            1,
            "healthy host starved"
        );
        // Each stuck host holds only what its limiter lets through at once.
        assert_eq!(scheduler.status().in_flight.load(Ordering::Relaxed), 8 * 6);
        shutdown.cancel();
    }
}
