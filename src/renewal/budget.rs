//! The engine's adapter from the store's shared host budget
//! (`store::HostBudget`, rows in PostgreSQL) to the gated PBX client's
//! [`SharedBudget`]: several replicas then keep the `[limits]` per-host
//! rate and concurrency together. Lives here, above both `pbx` and
//! `store`, so neither needs to know the other.
//!
//! Does not: wait or retry (`pbx::gated::shared` does).

use std::time::Duration;

use futures::future::BoxFuture;

use crate::pbx::gated::shared::{SharedBudget, SharedSlot};
use crate::pbx::limiter::HostLimiters;
use crate::store::{SlotGrant, SlotRequest, Store};

pub struct StoreBudget {
    store: Store,
    replica: String,
    /// A slot not released by then is free again: one request timeout for
    /// the call, one for an abandoned call's grace, and a second to spare.
    slot_ttl_ms: i64,
}

impl StoreBudget {
    pub fn new(store: Store, replica: String, request_timeout_ms: u64) -> Self {
        let timeout = i64::try_from(request_timeout_ms).unwrap_or(i64::MAX / 4);
        Self {
            store,
            replica,
            slot_ttl_ms: timeout.saturating_mul(2).saturating_add(1_000),
        }
    }
}

fn ms(wait_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0))
}

impl SharedBudget for StoreBudget {
    fn take<'a>(
        &'a self,
        host: &'a str,
        rps: u32,
        concurrent: u32,
    ) -> BoxFuture<'a, Result<SharedSlot, String>> {
        Box::pin(async move {
            let req = SlotRequest {
                host: host.to_owned(),
                holder: self.replica.clone(),
                rps,
                window_ms: HostLimiters::window_ms(),
                concurrent,
                slot_ttl_ms: self.slot_ttl_ms,
            };
            match self.store.take_host_slot(req).await {
                Ok(SlotGrant::Granted { slot }) => Ok(SharedSlot::Granted(slot)),
                Ok(SlotGrant::Throttled { wait_ms }) => Ok(SharedSlot::Throttled(ms(wait_ms))),
                Ok(SlotGrant::RateLimited { wait_ms }) => Ok(SharedSlot::RateLimited(ms(wait_ms))),
                Ok(SlotGrant::Busy) => Ok(SharedSlot::Busy),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn release(&self, slot: i64) -> BoxFuture<'static, ()> {
        let store = self.store.clone();
        Box::pin(async move {
            if let Err(e) = store.release_host_slot(slot).await {
                tracing::debug!("cannot free a shared host slot (it expires by itself): {e}");
            }
        })
    }

    fn throttle(&self, host: &str, retry_after: Duration) -> BoxFuture<'static, ()> {
        let (store, host) = (self.store.clone(), host.to_owned());
        let retry_ms = i64::try_from(retry_after.as_millis()).unwrap_or(i64::MAX / 2);
        Box::pin(async move {
            if let Err(e) = store.throttle_host(&host, retry_ms).await {
                tracing::warn!(
                    host,
                    "cannot store the host's 429 for the other replicas: {e}"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests;
