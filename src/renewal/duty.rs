//! Renewal duty per PBX host, by lease (several replicas on PostgreSQL):
//! the scheduler runs a host's due jobs only while this replica holds the
//! host's lease, and every write those renewals make carries the lease's
//! epoch (`store::WriteFence::Lease`), refused by the database once the
//! lease is another's.
//!
//! The rules, simple on purpose:
//! - every `ttl / 3` this replica renews the leases it holds and claims
//!   free or expired ones of hosts with renewing tenants, unless it already
//!   holds its fair share (hosts / live replicas, rounded up; live replicas
//!   are the holders of unexpired leases, itself included);
//! - a lease's validity is measured on the local monotonic clock from the
//!   moment the claim was SENT (the database may have granted it later,
//!   never earlier), and no PBX call starts under it once less than a third
//!   of the TTL (or `[pbx] request_timeout_ms`, if longer) is left without
//!   a successful renewal: a holder cut off from the database (or paused)
//!   stops before another replica can take over, and no call it started is
//!   still running then (config validation keeps the request timeout at
//!   most two thirds of the TTL; rounds come more often than ttl / 3 when
//!   the timeout is longer than ttl / 3, so duty has no gaps);
//! - leases are released at shutdown, so another replica takes over at once;
//! - a replica holding more than its fair share (live replicas counted
//!   from lease holders and from the `replicas` heartbeat table, so one
//!   that just joined and holds nothing counts too) hands the excess over:
//!   after [`HANDOVER_AFTER_ROUNDS`] rounds in a row over its share
//!   (hysteresis: a heartbeat that flickers moves nothing), it stops
//!   starting renewals on the excess hosts (the last ones by name), waits
//!   out the margin so every call it started has ended, and releases them;
//!   a replica under its share claims them at its next round. A hand-over
//!   is called off if the share grows back (a replica went away), and a
//!   host left without a holder for [`ORPHAN_ROUNDS`] rounds is claimed by
//!   any replica, share or not (no host is ever left without duty because
//!   a replica counted by its heartbeat does not claim).
//!
//! Does not: run renewals (the scheduler), or decide when a token is due.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::DutyFence;
use crate::clock::UnixMs;
use crate::metrics::Metrics;
use crate::store::{LeaseClaim, Store, WriteFence};

/// Rounds in a row over the fair share before excess leases are handed
/// over.
pub const HANDOVER_AFTER_ROUNDS: u32 = 2;

/// Rounds in a row a host with renewing tenants may stay without a
/// holder before a replica at or above its share claims it anyway.
const ORPHAN_ROUNDS: u32 = 3;

/// A lease this replica holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// When the claim that granted (or last renewed) it was sent.
    sent_at: Instant,
}

/// This replica's leases and what it knows of the others'.
pub struct Duty {
    store: Store,
    replica: String,
    ttl: Duration,
    /// How long before a lease could expire no PBX call starts under it:
    /// a third of the TTL, or `[pbx] request_timeout_ms` if longer.
    margin: Duration,
    metrics: Arc<Metrics>,
    held: Mutex<BTreeMap<String, Held>>,
    /// Hosts with renewing tenants at the last round (the scheduler skips
    /// those it does not hold).
    hosts: Mutex<BTreeSet<String>>,
    reachable: AtomicBool,
    /// Held hosts being handed over, with when no renewal started on them
    /// any more (released once the margin has passed).
    handing_over: Mutex<BTreeMap<String, Instant>>,
    /// Rounds in a row this replica held more than its fair share.
    over_share: AtomicU32,
    /// Hosts seen without a live holder, and for how many rounds in a row.
    free_rounds: Mutex<BTreeMap<String, u32>>,
    /// Hosts taken beyond the share because nobody else took them, and the
    /// live replica count then: not handed over again (that would cycle)
    /// until the count changes.
    orphans_taken: Mutex<(usize, BTreeSet<String>)>,
}

impl Duty {
    /// `request_timeout_ms`: `[pbx] request_timeout_ms` (config validation
    /// keeps it at most two thirds of the TTL).
    pub fn new(
        store: Store,
        replica: String,
        ttl_ms: u64,
        request_timeout_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        let ttl = Duration::from_millis(ttl_ms.max(3));
        Self {
            store,
            replica,
            ttl,
            margin: (ttl / 3)
                .max(Duration::from_millis(request_timeout_ms))
                .min(ttl),
            metrics,
            held: Mutex::new(BTreeMap::new()),
            hosts: Mutex::new(BTreeSet::new()),
            reachable: AtomicBool::new(true),
            handing_over: Mutex::new(BTreeMap::new()),
            over_share: AtomicU32::new(0),
            free_rounds: Mutex::new(BTreeMap::new()),
            orphans_taken: Mutex::new((0, BTreeSet::new())),
        }
    }

    fn free_rounds(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u32>> {
        self.free_rounds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handing_over(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.handing_over.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This replica's name, as written in lease rows.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Whether the last lease round trip reached the database.
    pub fn database_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The last moment a PBX call may start under a lease claimed at `sent_at`.
    fn stop_at(&self, sent_at: Instant) -> Instant {
        sent_at + (self.ttl - self.margin)
    }

    /// Time between rounds: a third of the TTL, or less when the margin
    /// leaves a shorter window to start calls in (so a renewed lease is in
    /// hand before the window closes).
    pub fn round_every(&self) -> Duration {
        (self.ttl / 3).min((self.ttl - self.margin) / 2)
    }

    /// The proof of duty for a renewal on `host`, if this replica may start
    /// one now.
    pub fn fence(&self, host: &str) -> Option<DutyFence> {
        let held = *self.held().get(host)?;
        if self.handing_over().contains_key(host) {
            return None;
        }
        let stop_at = self.stop_at(held.sent_at);
        (Instant::now() < stop_at).then(|| DutyFence {
            fence: WriteFence::Lease {
                host: host.to_owned(),
                holder: self.replica.clone(),
                epoch: held.epoch,
            },
            stop_at,
        })
    }

    /// Hosts with renewing tenants this replica may not renew now.
    pub fn hosts_not_on_duty(&self) -> Vec<String> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        hosts
            .into_iter()
            .filter(|h| self.fence(h).is_none())
            .collect()
    }

    /// Hosts whose lease this replica holds (valid or not).
    pub fn held_hosts(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }

    /// Renews and claims every `ttl / 3` until `shutdown`, then releases.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.round().await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.round_every()) => {}
            }
        }
        self.release_all().await;
    }

    /// One round: renew what is held, claim free hosts up to a fair share,
    /// drop what was lost.
    pub async fn round(&self) {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut reachable = true;
        // Renew first: keeping duty matters more than taking more.
        let current = self.held().clone();
        for (host, old) in current {
            let sent_at = Instant::now();
            match self.claim(&host, ttl_ms).await {
                Ok(LeaseClaim::Granted(l)) => {
                    if l.epoch != old.epoch {
                        tracing::info!(
                            host,
                            epoch = l.epoch,
                            "renewal duty taken again after a lapse"
                        );
                    }
                    self.held().insert(
                        host,
                        Held {
                            epoch: l.epoch,
                            sent_at,
                        },
                    );
                }
                Ok(LeaseClaim::Refused(l)) => {
                    tracing::warn!(host, holder = %l.holder, "renewal duty lost to another replica");
                    self.drop_host(&host);
                }
                // Keep it: its validity runs out on our clock by itself.
                // The other hosts' claims would fail the same way: a round
                // cut off from the database ends after one timeout.
                Err(e) => {
                    reachable = false;
                    tracing::warn!(host, "cannot renew the renewal-duty lease: {e}");
                    break;
                }
            }
        }
        if reachable {
            reachable = self.claim_free(ttl_ms).await;
        }
        if reachable {
            self.release_handed_over().await;
        }
        // Leases whose time is up are forgotten (the database agrees, or
        // will by the time another replica asks).
        let lapsed: Vec<String> = self
            .held()
            .iter()
            .filter(|(_, h)| Instant::now() >= h.sent_at + self.ttl)
            .map(|(host, _)| host.clone())
            .collect();
        for host in lapsed {
            tracing::warn!(
                host,
                "renewal-duty lease lapsed (the database could not be reached to renew it)"
            );
            self.drop_host(&host);
        }
        if reachable != self.reachable.swap(reachable, Ordering::Relaxed) {
            if reachable {
                tracing::info!(
                    "the database is reachable again; renewals resume under renewed leases"
                );
            } else {
                tracing::error!("the database cannot be reached: tokens are served from memory, nothing is renewed until it returns");
            }
        }
        self.metrics.set_database_reachable(reachable);
        for host in self.hosts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            self.metrics
                .set_lease_held(host, self.fence(host).is_some());
        }
    }

    /// Claims hosts with renewing tenants whose lease is free or expired,
    /// up to this replica's fair share. `false` if the database failed.
    async fn claim_free(&self, ttl_ms: i64) -> bool {
        let read = async { (self.store.renewing_hosts().await, self.store.leases().await) };
        let (hosts, leases) = match tokio::time::timeout(self.round_every(), read).await {
            Ok((Ok(l), Ok(s))) => (l, s),
            Err(_) => {
                tracing::warn!("cannot read hosts and leases for renewal duty: no answer in time");
                return false;
            }
            Ok((Err(e), _)) | Ok((_, Err(e))) => {
                tracing::warn!("cannot read hosts and leases for renewal duty: {e}");
                return false;
            }
        };
        let hosts: BTreeSet<String> = hosts.into_iter().collect();
        *self.hosts.lock().unwrap_or_else(|p| p.into_inner()) = hosts.clone();
        // The database's "now", as last seen through our own granted
        // lease; without one, every lease is tried (refusals are cheap).
        let ttl = ttl_ms;
        let db_now = leases
            .iter()
            .filter(|l| l.holder == self.replica && l.expires_at.0 > 0)
            .map(|l| l.expires_at.0 - ttl)
            .max();
        let live = |expires_at: i64| db_now.is_none_or(|now| expires_at > now);
        let mut replicas: BTreeSet<String> = leases
            .iter()
            .filter(|l| live(l.expires_at.0))
            .map(|l| l.holder.clone())
            .collect();
        replicas.insert(self.replica.clone());
        // Replicas alive by their heartbeat hold no lease yet when they
        // just joined; without them nobody would make room. Unreadable:
        // the lease holders alone (the share is only larger then).
        if let Ok(Ok(rows)) =
            tokio::time::timeout(self.round_every(), self.store.replicas(ttl, ttl)).await
        {
            replicas.extend(rows.into_iter().filter(|r| r.live).map(|r| r.name));
        }
        let fair = hosts.len().div_ceil(replicas.len().max(1));
        let held: BTreeSet<String> = self.held().keys().cloned().collect();
        // Hosts with no renewing tenant left: give their duty back.
        for host in held.difference(&hosts) {
            let epoch = self.held().get(host).map(|h| h.epoch);
            if let Some(epoch) = epoch {
                let _ = self.store.release_lease(host, &self.replica, epoch).await;
            }
            self.drop_host(host);
        }
        let taken_by_others: BTreeSet<&str> = leases
            .iter()
            .filter(|l| l.holder != self.replica && live(l.expires_at.0) && db_now.is_some())
            .map(|l| l.host.as_str())
            .collect();
        // Hosts nobody holds, and for how many rounds in a row: one left
        // free that long (no replica under its share took it) is claimed
        // beyond the share, so a hand-over never leaves a host without duty.
        let orphans: BTreeSet<String> = {
            let mut free = self.free_rounds();
            free.retain(|h, _| hosts.contains(h));
            for host in hosts.iter() {
                if held.contains(host) || taken_by_others.contains(host.as_str()) {
                    free.remove(host);
                } else {
                    *free.entry(host.clone()).or_insert(0) += 1;
                }
            }
            free.iter()
                .filter(|(_, n)| **n >= ORPHAN_ROUNDS)
                .map(|(h, _)| h.clone())
                .collect()
        };
        let mut count = self.held().len();
        for host in hosts.iter() {
            if count >= fair && !orphans.contains(host) {
                continue;
            }
            if held.contains(host) || taken_by_others.contains(host.as_str()) {
                continue;
            }
            let sent_at = Instant::now();
            match self.claim(host, ttl_ms).await {
                Ok(LeaseClaim::Granted(l)) => {
                    tracing::info!(host, epoch = l.epoch, "renewal duty taken");
                    if count >= fair {
                        self.orphans_taken
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .1
                            .insert(host.clone());
                    }
                    self.held().insert(
                        host.clone(),
                        Held {
                            epoch: l.epoch,
                            sent_at,
                        },
                    );
                    count += 1;
                }
                Ok(LeaseClaim::Refused(_)) => {}
                Err(e) => {
                    tracing::warn!(host, "cannot claim the renewal-duty lease: {e}");
                    return false;
                }
            }
        }
        self.plan_handover(fair, replicas.len());
        true
    }

    /// Marks the hosts beyond `fair` for hand-over once this replica has
    /// been over its share for [`HANDOVER_AFTER_ROUNDS`] rounds; calls a
    /// hand-over off when it is not over its share any more.
    fn plan_handover(&self, fair: usize, replicas: usize) {
        let orphans = {
            let mut o = self.orphans_taken.lock().unwrap_or_else(|p| p.into_inner());
            if o.0 != replicas {
                *o = (replicas, BTreeSet::new());
            }
            o.1.clone()
        };
        let held: Vec<String> = self
            .held()
            .keys()
            .filter(|h| !orphans.contains(*h))
            .cloned()
            .collect();
        if held.len() <= fair {
            self.over_share.store(0, Ordering::Relaxed);
            let called_off = std::mem::take(&mut *self.handing_over());
            for host in called_off.into_keys() {
                tracing::info!(
                    host,
                    "renewal duty hand-over called off: this replica's fair share grew"
                );
            }
            return;
        }
        let rounds = self.over_share.fetch_add(1, Ordering::Relaxed) + 1;
        if rounds < HANDOVER_AFTER_ROUNDS {
            return;
        }
        let excess = held.len() - fair;
        let mut handing = self.handing_over();
        for host in held.iter().rev() {
            if handing.len() >= excess {
                break;
            }
            if !handing.contains_key(host) {
                tracing::info!(
                    host,
                    fair_share = fair,
                    held = held.len(),
                    "handing renewal duty over to a replica below its fair share"
                );
                handing.insert(host.clone(), Instant::now());
            }
        }
    }

    /// Releases hosts marked for hand-over once no renewal started under
    /// them can still be running (the margin covers a PBX request).
    async fn release_handed_over(&self) {
        let due: Vec<String> = self
            .handing_over()
            .iter()
            .filter(|(_, since)| Instant::now() >= **since + self.margin)
            .map(|(host, _)| host.clone())
            .collect();
        for host in due {
            let epoch = self.held().get(&host).map(|h| h.epoch);
            if let Some(epoch) = epoch {
                match self.store.release_lease(&host, &self.replica, epoch).await {
                    Ok(()) => tracing::info!(host, "renewal duty handed over (lease released)"),
                    Err(e) => {
                        tracing::warn!(
                            host,
                            "cannot release the renewal-duty lease for the hand-over: {e}"
                        );
                        continue;
                    }
                }
            }
            self.drop_host(&host);
            self.over_share.store(0, Ordering::Relaxed);
        }
    }

    /// A lease claim, bounded: a database that does not answer (a
    /// partition) counts as unreachable after one round's time, not after
    /// the TCP timeouts. A claim cut off here may still have been granted;
    /// the lease's validity then runs from the earlier claim, which is
    /// the safe side.
    async fn claim(&self, host: &str, ttl_ms: i64) -> Result<LeaseClaim, String> {
        let claim = self
            .store
            .claim_lease(host, &self.replica, ttl_ms, UnixMs(0));
        match tokio::time::timeout(self.round_every(), claim).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms",
                self.round_every().as_millis()
            )),
        }
    }

    fn drop_host(&self, host: &str) {
        self.held().remove(host);
        self.handing_over().remove(host);
        let mut orphans = self.orphans_taken.lock().unwrap_or_else(|p| p.into_inner());
        orphans.1.remove(host);
        drop(orphans);
        self.metrics.set_lease_held(host, false);
    }

    /// Shutdown: every lease given back, so another replica need not wait
    /// for the expiry.
    pub async fn release_all(&self) {
        let held = std::mem::take(&mut *self.held());
        for (host, h) in held {
            match self
                .store
                .release_lease(&host, &self.replica, h.epoch)
                .await
            {
                Ok(()) => tracing::info!(host, "renewal duty released"),
                Err(e) => tracing::warn!(
                    host,
                    "cannot release the renewal-duty lease (it expires by itself): {e}"
                ),
            }
            self.metrics.set_lease_held(&host, false);
        }
    }
}

#[cfg(test)]
mod tests;
