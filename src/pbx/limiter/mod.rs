//! Per-PBX-host request limiter, shared by scheduled renewals and on-demand
//! fetches: at most `max_concurrent` requests in flight per host, at most
//! `requests_per_second` request *starts* in any sliding 1000 ms window, and
//! no request at all while the host is throttled (after a 429). Two lanes
//! ([`Lane`]): a request somebody waits for goes before scheduled renewals,
//! so when a host's budget is short an idle tenant's first GetToken is not
//! stuck behind the proactive backlog.
//!
//! Does not: send requests, decide throttle durations (the caller turns a
//! [`crate::pbx::PbxError::Throttled`] into [`HostLimiters::throttle`]), or
//! forget hosts (a deployment talks to a handful of PBX hosts; each costs a
//! few hundred bytes). Keys are opaque strings, normally
//! [`crate::domain::PbxBaseUrl::host`].
//!
//! Why hand-written and not `governor`: governor implements GCRA, which
//! smooths to one request per 1/rps and allows a configurable burst; the
//! contract here is the exact sliding-window rule ("never more than N starts
//! in any one-second window"), and time must come from the injected
//! [`crate::clock::Clock`] so tests and the simulation drive it. Keeping the
//! last N start times per host gives exactly that in a few lines.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::clock::{SharedClock, UnixMs};

/// The provider counts a one-second window by *arrival*; we count by start.
/// A request that waits longer on its way (a new TCP/TLS connection, a busy
/// core) can arrive closer to the next one than it started, so the window we
/// keep is longer than a second by this guard. It costs under 10 % of the
/// rate and makes "never more than N in any second" hold at the PBX too.
pub const WINDOW_GUARD_MS: i64 = 100;
const WINDOW_MS: i64 = 1000 + WINDOW_GUARD_MS;

/// The host is throttled; no request may be sent before `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the PBX host is throttled until {until}")]
pub struct Throttled {
    pub until: UnixMs,
}

/// Rate and concurrency limits for every PBX host.
#[derive(Debug)]
pub struct HostLimiters {
    clock: SharedClock,
    rps: AtomicU32,
    concurrent: AtomicU32,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

#[derive(Debug)]
struct Host {
    slots: Arc<Semaphore>,
    /// The semaphore's intended size; may be below its real size while
    /// `debt` permits are still out after a shrink.
    capacity: Mutex<u32>,
    /// Permits to retire instead of returning when they are dropped.
    debt: AtomicU32,
    /// Start times inside the current window, oldest first. The tokio mutex
    /// is held while sleeping on purpose: it is the FIFO queue of callers
    /// waiting for the window.
    starts: tokio::sync::Mutex<VecDeque<UnixMs>>,
    /// Unix ms; 0 when never throttled.
    throttled_until: AtomicI64,
    waits: AtomicU64,
    /// [`Lane::Demand`] acquisitions in progress; proactive ones stand
    /// aside while it is above 0.
    demand_waiting: AtomicU32,
    /// Told whenever `demand_waiting` rises, and when it falls to 0.
    demand_changed: Notify,
}

/// Which queue a token request waits in. Demand requests (a caller waits
/// for the token: GetToken of a tenant without a valid one, a report, a
/// forced refresh, onboarding) go before proactive ones (scheduled
/// renewals), which can wait: the token they replace is still valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Demand,
    Proactive,
}

/// One demand acquisition in progress (see `Host::demand_waiting`).
struct DemandMark {
    host: Arc<Host>,
}

impl DemandMark {
    fn new(host: &Arc<Host>) -> Self {
        host.demand_waiting.fetch_add(1, Ordering::SeqCst);
        host.demand_changed.notify_waiters();
        Self {
            host: Arc::clone(host),
        }
    }
}

impl Drop for DemandMark {
    fn drop(&mut self) {
        if self.host.demand_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.host.demand_changed.notify_waiters();
        }
    }
}

/// One admitted request. Dropping it frees the concurrency slot; drop it
/// when the HTTP exchange is over (answer read or failed).
#[derive(Debug)]
pub struct RequestPermit {
    host: Arc<Host>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        // After a shrink, retire permits as they come back until the real
        // semaphore size matches the configured one.
        let retire = self
            .host
            .debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
            .is_ok();
        if retire {
            permit.forget();
        }
    }
}

impl RequestPermit {
    /// Keeps the concurrency slot taken for `grace` more, then frees it: for
    /// a request our side gave up on (timed out, cancelled) that the
    /// provider may still be working on. Freed at once outside a runtime.
    pub fn hold_for(self, grace: Duration) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    drop(self);
                });
            }
            Err(_) => drop(self),
        }
    }
}

impl HostLimiters {
    /// Zero limits are raised to 1 (config validation already forbids 0).
    pub fn new(clock: SharedClock, requests_per_second: u32, max_concurrent: u32) -> Self {
        Self {
            clock,
            rps: AtomicU32::new(requests_per_second.max(1)),
            concurrent: AtomicU32::new(max_concurrent.max(1)),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a concurrency slot, then for room in the sliding window,
    /// and records the start, in the [`Lane::Demand`] lane (a caller is
    /// waiting). Returns [`Throttled`] at once (no waiting) when the host is
    /// throttled, before or after the wait. Waiters of a lane are served in
    /// FIFO order. Cancel-safe: a dropped call records nothing.
    pub async fn acquire(&self, host: &str) -> Result<RequestPermit, Throttled> {
        self.acquire_in(host, Lane::Demand).await
    }

    /// [`Self::acquire`] in `lane`. A [`Lane::Proactive`] acquisition yields
    /// to every [`Lane::Demand`] one waiting for the same host: it does not
    /// start while one waits, and gives back the concurrency slot and its
    /// place in the window queue when one arrives while it waits. Requests
    /// already sent are never cut short, so a demand request may still wait
    /// for one of them to finish (at most `max_concurrent` are out).
    pub async fn acquire_in(&self, host: &str, lane: Lane) -> Result<RequestPermit, Throttled> {
        let h = self.host(host);
        self.check_throttle(&h)?;
        // Held until this call returns (or is dropped): proactive callers
        // stand aside meanwhile.
        let _demand = (lane == Lane::Demand).then(|| DemandMark::new(&h));
        // Counted once per acquisition, however many times it waits.
        let mut waited = false;
        loop {
            if lane == Lane::Proactive {
                h.wait_no_demand(&mut waited).await;
            }
            if let Some(permit) = self.admit(&h, lane, &mut waited).await? {
                return Ok(permit);
            }
        }
    }

    /// One attempt: a concurrency slot, then room in the window. `None`: a
    /// proactive attempt stood aside for a demand request (try again).
    async fn admit(
        &self,
        h: &Arc<Host>,
        lane: Lane,
        waited: &mut bool,
    ) -> Result<Option<RequestPermit>, Throttled> {
        let permit = match Arc::clone(&h.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                h.count_wait(waited);
                let acquired = tokio::select! {
                    biased;
                    p = Arc::clone(&h.slots).acquire_owned() => p,
                    () = h.demand_arrives(lane) => return Ok(None),
                };
                match acquired {
                    Ok(p) => p,
                    // The semaphore is never closed; treat it as a full host.
                    Err(_) => {
                        return Err(Throttled {
                            until: self.clock.now(),
                        })
                    }
                }
            }
        };
        // Wrapped at once so an early return or a cancel settles any debt.
        let permit = RequestPermit {
            host: Arc::clone(h),
            permit: Some(permit),
        };
        let mut starts = tokio::select! {
            biased;
            g = h.starts.lock() => g,
            () = h.demand_arrives(lane) => return Ok(None),
        };
        loop {
            self.check_throttle(h)?;
            if lane == Lane::Proactive && h.demand_waiting.load(Ordering::SeqCst) > 0 {
                return Ok(None);
            }
            let now = self.clock.now();
            while starts.front().is_some_and(|t| now.0 - t.0 >= WINDOW_MS) {
                starts.pop_front();
            }
            let rps = self.rps.load(Ordering::Relaxed) as usize;
            if starts.len() < rps {
                starts.push_back(now);
                return Ok(Some(permit));
            }
            h.count_wait(waited);
            // The (len - rps + 1)-th oldest start must leave the window; the
            // extra length only exists after `reconfigure` lowered the rate.
            let idx = starts.len() - rps;
            let free_at = starts.get(idx).map_or(now, |t| t.plus_ms(WINDOW_MS));
            let nap = now.until(free_at).max(Duration::from_millis(1));
            tokio::select! {
                biased;
                () = h.demand_arrives(lane) => return Ok(None),
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// The configured (requests per second, requests at once) per host.
    pub fn limits(&self) -> (u32, u32) {
        (
            self.rps.load(Ordering::Relaxed),
            self.concurrent.load(Ordering::Relaxed),
        )
    }

    /// The window request starts are counted in (ms), guard included.
    pub const fn window_ms() -> i64 {
        WINDOW_MS
    }

    /// Demand requests waiting for `host` now (tests, status).
    pub fn demand_waiting(&self, host: &str) -> u32 {
        self.existing(host)
            .map_or(0, |h| h.demand_waiting.load(Ordering::SeqCst))
    }

    /// No request to `host` before `until`. A shorter throttle never
    /// shortens a longer one already in force.
    pub fn throttle(&self, host: &str, until: UnixMs) {
        self.host(host)
            .throttled_until
            .fetch_max(until.0, Ordering::SeqCst);
    }

    /// [`Self::throttle`] for `retry_after` from now (as carried by
    /// [`crate::pbx::PbxError::Throttled`]); returns the end time.
    pub fn throttle_for(&self, host: &str, retry_after: Duration) -> UnixMs {
        let until = self.clock.now().plus(retry_after);
        self.throttle(host, until);
        until
    }

    /// Lifts a throttle early (operator action, tests).
    pub fn clear_throttle(&self, host: &str) {
        self.host(host).throttled_until.store(0, Ordering::SeqCst);
    }

    /// When the host's throttle ends, if it is throttled now.
    pub fn throttled_until(&self, host: &str) -> Option<UnixMs> {
        let h = self.existing(host)?;
        let until = UnixMs(h.throttled_until.load(Ordering::SeqCst));
        (until > self.clock.now()).then_some(until)
    }

    /// New limits (SIGHUP). They apply to acquisitions from now on; requests
    /// already in flight finish. A smaller concurrency takes effect as
    /// permits come back.
    pub fn reconfigure(&self, requests_per_second: u32, max_concurrent: u32) {
        let concurrent = max_concurrent.max(1);
        self.rps
            .store(requests_per_second.max(1), Ordering::Relaxed);
        self.concurrent.store(concurrent, Ordering::Relaxed);
        let hosts: Vec<Arc<Host>> = self.lock_hosts().values().cloned().collect();
        for h in hosts {
            h.resize(concurrent);
        }
    }

    /// How many acquisitions on `host` had to wait (slot or window).
    pub fn waits_total(&self, host: &str) -> u64 {
        self.existing(host)
            .map_or(0, |h| h.waits.load(Ordering::Relaxed))
    }

    /// Permits currently out for `host`.
    pub fn in_flight(&self, host: &str) -> u32 {
        self.existing(host).map_or(0, |h| {
            let cap = h.capacity.lock().map_or(0, |c| *c);
            let avail = u32::try_from(h.slots.available_permits()).unwrap_or(u32::MAX);
            (cap + h.debt.load(Ordering::SeqCst)).saturating_sub(avail)
        })
    }

    /// Hosts seen so far, for metrics.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock_hosts().keys().cloned().collect();
        v.sort();
        v
    }

    fn check_throttle(&self, h: &Host) -> Result<(), Throttled> {
        let until = UnixMs(h.throttled_until.load(Ordering::SeqCst));
        if until > self.clock.now() {
            return Err(Throttled { until });
        }
        Ok(())
    }

    fn lock_hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Host>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/lookup), so poisoning is ignored.
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn existing(&self, host: &str) -> Option<Arc<Host>> {
        self.lock_hosts().get(host).cloned()
    }

    fn host(&self, host: &str) -> Arc<Host> {
        let mut hosts = self.lock_hosts();
        if let Some(h) = hosts.get(host) {
            return Arc::clone(h);
        }
        let concurrent = self.concurrent.load(Ordering::Relaxed);
        let h = Arc::new(Host {
            slots: Arc::new(Semaphore::new(concurrent as usize)),
            capacity: Mutex::new(concurrent),
            debt: AtomicU32::new(0),
            starts: tokio::sync::Mutex::new(VecDeque::new()),
            throttled_until: AtomicI64::new(0),
            waits: AtomicU64::new(0),
            demand_waiting: AtomicU32::new(0),
            demand_changed: Notify::new(),
        });
        hosts.insert(host.to_owned(), Arc::clone(&h));
        h
    }
}

impl Host {
    fn count_wait(&self, waited: &mut bool) {
        if !*waited {
            *waited = true;
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns once a demand request waits (never, for the demand lane).
    async fn demand_arrives(&self, lane: Lane) {
        if lane == Lane::Demand {
            return std::future::pending().await;
        }
        loop {
            // Registered before the check, so a rise in between is not missed.
            let changed = self.demand_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.demand_waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            changed.await;
        }
    }

    /// Returns once no demand request waits.
    async fn wait_no_demand(&self, waited: &mut bool) {
        loop {
            let changed = self.demand_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.demand_waiting.load(Ordering::SeqCst) == 0 {
                return;
            }
            self.count_wait(waited);
            changed.await;
        }
    }

    fn resize(&self, target: u32) {
        let mut cap = self.capacity.lock().unwrap_or_else(|e| e.into_inner());
        if target > *cap {
            // Cancel outstanding debt first, then grow the semaphore.
            let mut grow = target - *cap;
            while grow > 0 {
                let d = self.debt.load(Ordering::SeqCst);
                if d == 0 {
                    break;
                }
                let take = d.min(grow);
                if self
                    .debt
                    .compare_exchange(d, d - take, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    grow -= take;
                }
            }
            self.slots.add_permits(grow as usize);
        } else if target < *cap {
            let shrink = (*cap - target) as usize;
            let forgotten = self.slots.forget_permits(shrink);
            let owed = u32::try_from(shrink - forgotten).unwrap_or(u32::MAX);
            self.debt.fetch_add(owed, Ordering::SeqCst);
        }
        *cap = target;
    }
}

#[cfg(test)]
mod tests;
