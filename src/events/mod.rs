//! Tenant events for operators and the CRM: the stored event log (written
//! by the store in the same transaction as each change) read in pages
//! after a cursor, the wake-up when this process commits one, and the
//! `pbx_tokend_tenant_events_total{kind}` counter.
//!
//! Why a reader may be refused: retention prunes old events. A reader
//! resuming after an id that was pruned would silently miss events, so it
//! is told instead ([`EventsError::Pruned`]), with the id to resume from
//! if it accepts the gap. A cursor of 0 means "from the oldest held" and
//! is never refused.
//!
//! `webhook.rs` (the body, signature and retry delay of a webhook request)
//! and `deliver.rs` (the task that POSTs the outbox to `[events]
//! webhook_url`) deliver the same events to the CRM.
//!
//! Does not: write events (the store does, with the change) or stream them
//! (`api/tenant_events.rs`).

pub mod deliver;
pub mod webhook;

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::clients::TenantPattern;
use crate::domain::ValidationError;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, TenantEvent};

/// Events read per store call.
pub const PAGE: u32 = 100;

/// How often a follower looks for events committed by another replica
/// (events this process commits wake it at once).
pub const POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    /// Events after `after` up to `pruned_through` are gone.
    #[error("events {} to {pruned_through} were pruned ([events] retention_days); the oldest event still held is {}: to accept the gap, resume with after_event_id = {pruned_through}", after + 1, oldest_held.map_or_else(|| "none yet".to_owned(), |id| id.to_string()))]
    Pruned {
        after: i64,
        pruned_through: i64,
        oldest_held: Option<i64>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the event log.
#[derive(Clone, Debug)]
pub struct TenantEvents {
    store: Store,
}

/// The `tenant_pattern` of a request: empty is every tenant.
pub fn pattern(s: &str) -> Result<Option<TenantPattern>, ValidationError> {
    if s.is_empty() {
        return Ok(None);
    }
    TenantPattern::parse(s)
        .map(Some)
        .map_err(|e| ValidationError::new("tenant_pattern", e.message))
}

impl TenantEvents {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Wakes when this process commits an event (subscribe before the
    /// first read, so nothing committed in between is missed).
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.store.subscribe_events()
    }

    /// Up to [`PAGE`] events after `after`, oldest first; refused when
    /// events after `after` were pruned.
    pub async fn after(&self, after: i64) -> Result<Vec<TenantEvent>, EventsError> {
        if after < 0 {
            return Err(ValidationError::new(
                "after_event_id",
                format!("{after} is negative; give 0 (from the oldest event held) or the last event_id seen"),
            )
            .into());
        }
        let page = self.store.events_after(after, PAGE).await?;
        if after > 0 && after < page.pruned_through {
            return Err(EventsError::Pruned {
                after,
                pruned_through: page.pruned_through,
                oldest_held: page.events.first().map(|e| e.event_id),
            });
        }
        Ok(page.events)
    }
}

/// Counts every event committed from now on into
/// `pbx_tokend_tenant_events_total{kind}`, following the log like a
/// stream does, until `stop`. A read that fails is retried at the next
/// wake-up; nothing is counted twice.
pub async fn count_events(store: Store, metrics: std::sync::Arc<Metrics>, stop: CancellationToken) {
    let mut wake = store.subscribe_events();
    let mut cursor = match store.latest_event_id().await {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!("tenant events are not counted: {e}");
            return;
        }
    };
    loop {
        match store.events_after(cursor, PAGE).await {
            Ok(page) => {
                for e in &page.events {
                    metrics.tenant_event(e.kind.as_str());
                    cursor = e.event_id;
                }
                if page.events.len() == PAGE as usize {
                    continue;
                }
            }
            Err(e) => tracing::debug!("reading tenant events to count them: {e}"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::crypto::Keyring;
    use crate::domain::TenantState;
    use crate::store::conformance::fixtures::{new_tenant, HOUR, T0};

    #[tokio::test]
    async fn a_cursor_behind_retention_is_refused_and_told_where_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), Arc::new(Keyring::ephemeral())).unwrap();
        for (id, at) in [("a", T0), ("b", T0), ("c", T0.plus_ms(2 * HOUR))] {
            let mut t = new_tenant(id, TenantState::Active);
            t.now = at;
            store.insert_tenant(t).await.unwrap();
        }
        let events = TenantEvents::new(store.clone());
        let ids: Vec<i64> = events
            .after(0)
            .await
            .unwrap()
            .iter()
            .map(|e| e.event_id)
            .collect();
        store.prune_events(T0.plus_ms(HOUR)).await.unwrap();

        match events.after(ids[0]).await {
            Err(e @ EventsError::Pruned { .. }) => {
                let msg = e.to_string();
                let want = format!(
                    "events {} to {} were pruned ([events] retention_days); the oldest event still held is {}: to accept the gap, resume with after_event_id = {}",
                    ids[1], ids[1], ids[2], ids[1]
                );
                assert_eq!(msg, want);
            }
            other => panic!("expected Pruned, got {other:?}"),
        }
        // From the start, or from the pruned edge: the rest, no refusal.
        let rest = |v: Vec<TenantEvent>| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
        assert_eq!(rest(events.after(0).await.unwrap()), vec![ids[2]]);
        assert_eq!(rest(events.after(ids[1]).await.unwrap()), vec![ids[2]]);
        assert!(matches!(
            events.after(-1).await,
            Err(EventsError::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_empty_pattern_is_every_tenant_and_a_bad_one_names_the_field() {
        assert!(pattern("").unwrap().is_none());
        assert!(pattern("acme-*").unwrap().unwrap().matches("acme-1"));
        let e = pattern("acme/*").unwrap_err();
        assert_eq!(e.field, "tenant_pattern");
    }
}
