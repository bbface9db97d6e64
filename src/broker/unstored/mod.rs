//! Refresh outcomes the store could not write (a full disk, an I/O error).
//!
//! A token is a cache, not a secret we could lose: when its write fails it
//! is still published and served from memory, and the next commit that
//! works writes it. What must not happen is what a full disk once did: the
//! job row kept its old due time, so the scheduler re-ran the renewal at
//! once, fetched another token, failed to store it, dropped it, and so on
//! at the host's whole rate budget, while GetToken answered INTERNAL. Here
//! the job's real due time is kept in memory (the slot's [`Unstored`]) and
//! the scheduler honours it; the write is retried with the renewal backoff;
//! the tenant's `last_error`, the metrics and the server status show it.
//!
//! Credentials are not a cache: CreateTenant and onboarding keep "durable
//! before success" and fail when they cannot be stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Broker, Slot, TokenError};
use crate::clock::UnixMs;
use crate::domain::{AccessToken, Tenant, TenantId};
use crate::store::{RefreshRecord, StoreError};

pub use super::slot::Unstored;

/// Whether a store error means "this write did not land" (retry later)
/// rather than "this tenant is gone" (the caller must hear it).
pub(super) fn is_write_failure(e: &StoreError) -> bool {
    // A fenced write is not a failure to write: the database holds a newer
    // token, and the one fetched must never be served.
    !matches!(e, StoreError::TenantNotFound(_) | StoreError::Fenced { .. })
}

impl Broker {
    /// The due time of the tenant's renewal job when the store could not
    /// write it; the scheduler runs the job at this time, not before.
    pub fn deferred_until(&self, id: &TenantId) -> Option<UnixMs> {
        let slot = self.slots_read().get(id).cloned()?;
        slot.unstored().map(|u| u.due)
    }

    /// Tenants whose last outcome is not stored (the scheduler widens its
    /// read of due jobs by this many, as their rows stay due).
    pub fn deferred_count(&self) -> usize {
        usize::try_from(self.unstored_tenants.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Tokens held only in memory (fetched, not yet written).
    pub fn unstored_tokens(&self) -> u64 {
        u64::try_from(self.unstored_tokens.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Shows what the store could not write on a tenant read from it: the
    /// storage error as `last_error`, the token served from memory.
    pub fn overlay_unstored(&self, tenant: &mut Tenant) {
        let Some(slot) = self.slots_read().get(&tenant.id).cloned() else {
            return;
        };
        let Some(u) = slot.unstored() else {
            return;
        };
        tenant.last_error = slot.last_error().or(Some(u.error));
        tenant.next_refresh_at = Some(u.due);
        if let Some((token, _)) = u.token {
            tenant.token_expires_at = Some(token.expires_at);
            tenant.last_refresh_at = Some(token.issued_at);
        }
    }

    /// A write of `slot`'s outcome failed with `e`. `token` is the fetched
    /// token (already published) and its planned renewal, if any; `due` is
    /// when the outcome wanted the job to run next. Returns the text now
    /// shown as the tenant's `last_error`.
    pub(super) fn store_failed(
        &self,
        slot: &Slot,
        token: Option<(Arc<AccessToken>, UnixMs)>,
        e: &StoreError,
        due: UnixMs,
        now: UnixMs,
    ) -> String {
        self.metrics.token_store_failed();
        let previous = slot.unstored();
        let failures = previous
            .as_ref()
            .map_or(0, |u| u.failures)
            .saturating_add(1);
        // Retry the write on the renewal backoff, but never after the job
        // itself is due.
        let retry = now.plus(self.settings().policy.backoff(failures, self.jitter()));
        let due = due.min(retry);
        let holds_token = token.is_some() || previous.as_ref().is_some_and(|u| u.token.is_some());
        let error = if holds_token {
            format!("token fetched but not stored: {e}; served from memory")
        } else {
            format!("outcome not stored: {e}")
        };
        tracing::error!(tenant = %slot.id(), failures, next_attempt = %due, "{error}");
        self.set_unstored(
            slot,
            Some(Unstored {
                token,
                error: error.clone(),
                failures,
                due,
            }),
        );
        error
    }

    /// A write of `slot`'s outcome succeeded: nothing is pending any more.
    pub(super) fn store_recovered(&self, slot: &Slot) {
        if slot.unstored().is_some() {
            tracing::info!(tenant = %slot.id(), "the tenant's outcome is stored again");
            self.set_unstored(slot, None);
        }
    }

    /// Replaces the slot's record and keeps the two counters in step.
    pub(super) fn set_unstored(&self, slot: &Slot, new: Option<Unstored>) {
        let count = |u: &Option<Unstored>| {
            (
                i64::from(u.is_some()),
                i64::from(u.as_ref().is_some_and(|u| u.token.is_some())),
            )
        };
        let old = slot.set_unstored(new);
        let (old_t, old_k) = count(&old);
        let (new_t, new_k) = count(&slot.unstored());
        self.unstored_tenants
            .fetch_add(new_t - old_t, Ordering::Relaxed);
        self.unstored_tokens
            .fetch_add(new_k - old_k, Ordering::Relaxed);
    }

    /// A scheduled run found the held token fresh: write what is pending
    /// (the unstored token, or just the job's new due time `at`). A failed
    /// write is recorded on the slot and retried later, not returned.
    pub(super) async fn store_schedule(
        &self,
        slot: &Arc<Slot>,
        at: UnixMs,
        now: UnixMs,
    ) -> Result<(), TokenError> {
        // Several replicas: a token that missed its (fenced) write is
        // served from memory but never written later, unfenced, over what
        // another replica may have stored meanwhile; the job's time is.
        let pending = if self.fence_writes {
            None
        } else {
            slot.unstored().and_then(|u| u.token)
        };
        let result = match &pending {
            Some((token, renew_at)) => self
                .store
                .record_refresh(
                    slot.id(),
                    RefreshRecord::Success {
                        token: (**token).clone(),
                        renew_at: *renew_at,
                    },
                    now,
                )
                .await
                .map(|_| ()),
            None => self.store.reschedule(slot.id(), at).await,
        };
        match result {
            Ok(()) => {
                if pending.is_some() {
                    slot.set_last_error(None);
                }
                self.store_recovered(slot);
                self.schedule_changed.notify_one();
                Ok(())
            }
            Err(e) if is_write_failure(&e) => {
                let due = pending.as_ref().map_or(at, |(_, renew_at)| *renew_at);
                let error = self.store_failed(slot, None, &e, due, now);
                if pending.is_some() {
                    slot.set_last_error(Some(error));
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
