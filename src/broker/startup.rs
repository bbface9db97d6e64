//! The broker's start-up load, and what it does with rows that do not
//! open: one unreadable row must never stop the daemon (before issue 25,
//! two swapped token blobs refused start-up for every tenant). A token that
//! does not open is only a cached copy: dropped, fetched again soon. A
//! credential that does not open (or is bound to another base URL or
//! client id, see `store::credentials`) stops only its tenant, visibly.
//!
//! Does not: decide anything about tenants whose rows open (mod.rs).

use std::collections::HashSet;
use std::sync::Arc;

use super::{Broker, Slot, TokenError};
use crate::clock::UnixMs;
use crate::domain::{TenantId, TenantState};
use crate::store::StoreError;

impl Broker {
    /// Fills the cache from the database (start-up). One unreadable row
    /// never stops the load: a token that does not open is dropped and
    /// fetched again soon; a tenant whose credentials cannot be used is put
    /// in CREDENTIALS_REJECTED with the reason as last_error, and nothing
    /// is sent to the PBX for it.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let loaded = self.store.load_cache_checked().await?;
        let faults = self.store.credential_faults().await?;
        let n = loaded.tenants.len();
        {
            let mut slots = self.slots_write();
            for t in loaded.tenants {
                slots.insert(t.id.clone(), Arc::new(Slot::from_cached(t)));
            }
        }
        let mut faulted = HashSet::new();
        for fault in faults {
            let Ok(slot) = self.slot(fault.tenant_id.as_str()) else {
                continue;
            };
            // A public app's fault matters only to a tenant that has nothing
            // else; the authorization flow refuses it when it reads it.
            if !fault.trusted && slot.state() != TenantState::PendingAuthorization {
                tracing::warn!(tenant = %fault.tenant_id, "{}", fault.message);
                continue;
            }
            faulted.insert(fault.tenant_id.clone());
            self.record_credential_fault(&slot, fault.message).await?;
        }
        let now = self.clock.now();
        let refetch: Vec<(TenantId, UnixMs)> = loaded
            .dropped_tokens
            .into_iter()
            .filter(|id| !faulted.contains(id))
            .filter(|id| {
                self.slot(id.as_str())
                    .is_ok_and(|s| s.state().is_renewing())
            })
            .map(|id| (id, now))
            .collect();
        if !refetch.is_empty() {
            self.store.reschedule_many(refetch).await?;
        }
        Ok(n)
    }

    /// Records that `slot`'s stored credentials cannot be used (store and
    /// cache), with the rare retry of rejected credentials as the next
    /// attempt, so the renewal job neither spins nor sends anything.
    pub(super) async fn record_credential_fault(
        &self,
        slot: &Arc<Slot>,
        message: String,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let retry_at = now.plus(self.settings().policy.rejected_retry(self.jitter()));
        tracing::warn!(tenant = %slot.id(), next_attempt = %retry_at, "{message}");
        self.store
            .record_credential_fault(slot.id(), message.clone(), retry_at, now)
            .await?;
        slot.record_credential_fault(message);
        self.schedule_changed.notify_one();
        Ok(())
    }

    /// The error for a tenant whose credentials cannot be used, if so.
    pub(super) fn credential_fault_error(slot: &Slot) -> Option<TokenError> {
        slot.credential_fault()
            .map(|reason| TokenError::CredentialsUnusable {
                tenant: slot.id().to_string(),
                reason,
            })
    }
}
