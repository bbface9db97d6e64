//! Busy and idle tenants. A tenant is *busy* while it was asked for
//! (GetToken, ReportRejectedToken) within `[refresh] idle_after_seconds`
//! or has a WatchToken stream open; otherwise *idle*. This only matters
//! when a host's renewal demand is above its budget: then the scheduler
//! renews busy tenants ahead of expiry and *parks* the due renewals of idle
//! ones, whose next GetToken fetches on demand (renewal/demand.rs).
//!
//! Why in memory and not in the store: "asked for" happens on the GetToken
//! hot path, which must stay free of locks and writes; it costs one relaxed
//! load and at most one relaxed store a second per tenant (`Slot::mark_asked`).
//! Nothing here is persisted: after a restart every tenant counts as busy
//! until `idle_after_seconds` have passed since the start (the safe side:
//! the daemon renews as if every tenant were in use, as it did before).
//!
//! A parked tenant that is asked for again is *woken*: the ask (a lock-free
//! swap of the slot's mark) queues its id here, once, and tells the
//! scheduler, which moves its job back to now. Only that first ask after a
//! park takes this queue's lock.
//!
//! Does not: decide whether a host is short (renewal/demand.rs) or write
//! job times (the scheduler does, in batches).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Broker, Slot};
use crate::clock::UnixMs;
use crate::domain::{AccessToken, TenantId};

/// One host's renewing tenants, as the cache sees them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostActivity {
    pub host: String,
    /// Tenants in a state that renews (ACTIVE, RENEWAL_FAILING, ...).
    pub renewing: u64,
    /// Of those, how many hold a token, and the sum of those tokens'
    /// lifetimes (for the average renewal interval).
    pub with_token: u64,
    pub lifetime_ms_sum: i64,
    pub busy: u64,
    pub idle: u64,
}

/// An open WatchToken stream, counted on its tenant while it lives (it is
/// held in the stream's state, so it goes when the stream ends).
#[derive(Debug)]
pub struct OpenStream(Arc<Slot>);

impl OpenStream {
    pub(super) fn new(slot: Arc<Slot>) -> Self {
        slot.stream_opened();
        Self(slot)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

impl Broker {
    /// A caller asked for `slot`'s token at `now` (the hot path: no lock
    /// unless this ask wakes a parked tenant).
    pub(super) fn note_asked(&self, slot: &Slot, now: UnixMs) {
        if slot.mark_asked(now) {
            self.wake(slot.id());
        }
    }

    fn wake(&self, id: &TenantId) {
        self.woken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        self.schedule_changed.notify_one();
    }

    /// GetToken's answer straight from the cache: the held token if the
    /// tenant is cached, renewing and its token valid for `min_valid_secs`
    /// (0: the default margin). Counts as an ask only when it answers, so a
    /// `None` leaves everything as it was for [`Broker::get_token`].
    pub fn cached_token(&self, tenant: &str, min_valid_secs: u32) -> Option<Arc<AccessToken>> {
        let slots = self.slots_read();
        let slot = slots.get(tenant)?;
        let now = self.clock.now();
        let token = slot.servable_token(now, self.min_valid_ms(min_valid_secs))?;
        self.note_asked(slot, now);
        Some(token)
    }

    /// The margin a GetToken asks for, in ms (0 seconds: the default).
    pub(super) fn min_valid_ms(&self, min_valid_secs: u32) -> i64 {
        if min_valid_secs == 0 {
            self.default_min_valid_ms.load(Ordering::Relaxed)
        } else {
            i64::from(min_valid_secs) * 1000
        }
    }

    /// The held token of `tenant`, if any, without counting as an ask
    /// (the simulation's checks look at it).
    pub fn held_token(&self, tenant: &str) -> Option<Arc<AccessToken>> {
        self.slots_read().get(tenant).and_then(|s| s.token())
    }

    /// Parked tenants asked for since the last call: their jobs must run
    /// again as normal (the scheduler moves them to now).
    pub fn take_woken(&self) -> Vec<TenantId> {
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn busy_at(&self, slot: &Slot, now: UnixMs, idle_after_ms: i64) -> bool {
        self.busy_if_asked_at(slot, slot.last_asked(), now, idle_after_ms)
    }

    /// The rule, for a tenant last asked for at `last_asked`.
    pub(super) fn busy_if_asked_at(
        &self,
        slot: &Slot,
        last_asked: UnixMs,
        now: UnixMs,
        idle_after_ms: i64,
    ) -> bool {
        if slot.open_streams() > 0 {
            return true;
        }
        // Not persisted: the start counts as an ask for every tenant.
        now.0 - last_asked.max(self.started_at).0 < idle_after_ms
    }

    /// Whether `id` is busy at `now`. An unknown tenant counts as busy, so
    /// its job runs and finds out (a deleted tenant's job ends there).
    pub fn is_busy(&self, id: &TenantId, now: UnixMs) -> bool {
        let Some(slot) = self.slots_read().get(id).cloned() else {
            return true;
        };
        self.busy_at(&slot, now, self.settings().idle_after_ms)
    }

    /// The scheduler left `id`'s due renewal for later (its job's new due
    /// time is written); the next ask wakes it.
    pub fn park(&self, id: &TenantId) {
        if let Some(slot) = self.slots_read().get(id) {
            slot.set_parked(true);
        }
    }

    /// Un-parks every parked tenant of `host` (its budget is no longer
    /// short) and returns them, in id order, for the scheduler to move
    /// their jobs back to now.
    pub fn unpark_host(&self, host: &str) -> Vec<TenantId> {
        let slots: Vec<Arc<Slot>> = self.slots_read().values().cloned().collect();
        let mut out: Vec<TenantId> = slots
            .iter()
            .filter(|s| s.is_parked() && s.base_url().host() == host)
            .filter(|s| s.take_parked())
            .map(|s| s.id().clone())
            .collect();
        out.sort();
        out
    }

    /// Every host's renewing tenants, busy and idle, in host order. One
    /// pass over the cache (the scheduler calls it every few seconds).
    pub fn activity(&self, now: UnixMs) -> Vec<HostActivity> {
        let idle_after_ms = self.settings().idle_after_ms;
        let slots: Vec<Arc<Slot>> = self.slots_read().values().cloned().collect();
        let mut hosts: BTreeMap<String, HostActivity> = BTreeMap::new();
        for slot in slots {
            // The host is looked up by reference: a new String only for
            // the first tenant of each host.
            let hosts = &mut hosts;
            let Some(a) = slot.with_renewing_host(move |host| {
                if !hosts.contains_key(host) {
                    hosts.insert(host.to_owned(), HostActivity::default());
                }
                hosts.get_mut(host)
            }) else {
                continue;
            };
            let Some(a) = a else { continue };
            a.renewing += 1;
            if let Some(lifetime) = slot.token_lifetime_ms() {
                a.with_token += 1;
                a.lifetime_ms_sum = a.lifetime_ms_sum.saturating_add(lifetime);
            }
            if self.busy_at(&slot, now, idle_after_ms) {
                a.busy += 1;
            } else {
                a.idle += 1;
            }
        }
        hosts
            .into_iter()
            .map(|(host, mut a)| {
                a.host = host;
                a
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
