//! The per-host budget shared by every replica (several replicas on one
//! PostgreSQL database): before each token request, after the replica's own
//! limiter let it through, one slot is taken from the host's budget in the
//! database, so the `[limits]` rate and concurrency hold for the cluster as
//! a whole, whichever replica and whatever kind of request (scheduled, on
//! demand, report, forced, CreateTenant, onboarding) it is. A 429 is stored
//! there too, so every replica (and the next duty holder) honours it.
//!
//! The budget itself is behind [`SharedBudget`] (the engine adapts the
//! store to it), so this layer knows no SQL. Cost: one database round trip
//! (one transaction) before the request and one after it.
//!
//! When the database cannot be reached, nothing is sent (a hard provider
//! limit must not become "everything allowed" in a partition).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::FetchFailure;
use crate::pbx::limiter::HostLimiters;
use crate::pbx::PbxError;

/// The budget's answer, waits relative to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedSlot {
    Granted(i64),
    Throttled(Duration),
    RateLimited(Duration),
    Busy,
}

/// The cluster's per-host budget (implemented over the store by the
/// engine).
pub trait SharedBudget: Send + Sync {
    /// One slot for a request to `host` with these limits, or why not.
    fn take<'a>(
        &'a self,
        host: &'a str,
        rps: u32,
        concurrent: u32,
    ) -> BoxFuture<'a, Result<SharedSlot, String>>;

    /// Frees `slot` (best effort: a slot not freed expires by itself).
    fn release(&self, slot: i64) -> BoxFuture<'static, ()>;

    /// Stores the host's 429 for every replica (best effort).
    fn throttle(&self, host: &str, retry_after: Duration) -> BoxFuture<'static, ()>;
}

/// How long a waiter sleeps while every slot of the cluster is taken.
const BUSY_POLL: Duration = Duration::from_millis(25);

/// Takes one slot of `host`'s shared budget, waiting for the window or a
/// free slot; a throttled host or an unreachable database send nothing.
pub(super) async fn take(
    budget: &Arc<dyn SharedBudget>,
    limiter: &HostLimiters,
    host: &str,
) -> Result<SharedGuard, FetchFailure> {
    loop {
        let (rps, concurrent) = limiter.limits();
        match budget.take(host, rps, concurrent).await {
            Ok(SharedSlot::Granted(slot)) => {
                return Ok(SharedGuard {
                    budget: budget.clone(),
                    slot: Some(slot),
                })
            }
            Ok(SharedSlot::Throttled(wait)) => {
                // Known locally from now on: later requests need no round trip.
                let until = limiter.throttle_for(host, wait);
                return Err(FetchFailure::HostThrottled { until });
            }
            Ok(SharedSlot::RateLimited(wait)) => {
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
            Ok(SharedSlot::Busy) => tokio::time::sleep(BUSY_POLL).await,
            Err(e) => {
                return Err(FetchFailure::Pbx(PbxError::Transient {
                    reason: format!("request not sent: the per-host request budget shared by the replicas cannot be read from the database ({e})"),
                }))
            }
        }
    }
}

/// A slot of the shared budget; freed when the request is over, or one
/// grace later if our side gave up on it (or was cancelled mid-way).
pub(super) struct SharedGuard {
    budget: Arc<dyn SharedBudget>,
    slot: Option<i64>,
}

impl SharedGuard {
    /// The call ended; `abandoned`: it timed out at our side.
    pub(super) fn finish(mut self, abandoned: bool, grace: Duration) {
        if let Some(slot) = self.slot.take() {
            release_after(self.budget.clone(), slot, abandoned.then_some(grace));
        }
    }
}

impl Drop for SharedGuard {
    /// Dropped without `finish`: the call was cancelled mid-way, and the
    /// provider may still be working on it; the slot's expiry frees it.
    fn drop(&mut self) {
        let _ = self.slot.take();
    }
}

fn release_after(budget: Arc<dyn SharedBudget>, slot: i64, grace: Option<Duration>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Some(grace) = grace {
                tokio::time::sleep(grace).await;
            }
            budget.release(slot).await;
        });
    }
}
