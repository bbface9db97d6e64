//! The `tenant_events`, `webhook_outbox` and `event_retention` tables, as
//! in `sqlite/events.rs`. Events are appended inside the transaction of the
//! change that caused them; the first append of a transaction takes the
//! transaction-level advisory lock [`EVENTS_LOCK`], so event ids (from a
//! sequence, drawn before commit) commit in increasing order across
//! replicas: a reader that saw id N never later finds a smaller one. Only
//! transactions that write an event take it; a renewal that changes
//! nothing does not.
//!
//! Does not: decide when an event is due, deliver webhooks, or wake streams
//! of other replicas (they poll; see `api/events.rs`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::watch;
use tokio_postgres::Row;

use super::{execute, limit, query, query_one, query_opt, Tx};
use crate::clock::UnixMs;
use crate::domain::TenantState;
use crate::store::events::RawEvent;
use crate::store::rows::parse_state;
use crate::store::{
    EventPage, EventSettings, OutboxEntry, StoreError, TenantEvent, TenantEventKind,
};

/// The advisory lock event writers take ("pbxevent" in ASCII).
pub(super) const EVENTS_LOCK: i64 = 0x7062_7865_7665_6e74;

/// Per store handle: settings, and the channel that wakes this handle's
/// streams after a commit.
pub(super) struct EventHub {
    outbox: AtomicBool,
    committed: watch::Sender<i64>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            outbox: AtomicBool::new(false),
            committed: watch::Sender::new(0),
        }
    }
}

impl EventHub {
    pub(super) fn set(&self, s: EventSettings) {
        self.outbox.store(s.outbox, Ordering::Relaxed);
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    pub(super) fn begin(&self) -> EventCx {
        EventCx {
            outbox: self.outbox.load(Ordering::Relaxed),
            last: AtomicI64::new(0),
        }
    }

    /// Call after `cx`'s transaction committed.
    pub(super) fn committed(&self, cx: &EventCx) {
        let last = cx.last.load(Ordering::Relaxed);
        if last > 0 {
            self.committed.send_if_modified(|v| {
                let newer = last > *v;
                if newer {
                    *v = last;
                }
                newer
            });
        }
    }
}

/// What one transaction needs to write events.
pub(super) struct EventCx {
    outbox: bool,
    /// The highest event id appended in the transaction (0: none yet, so
    /// the lock is not yet held).
    last: AtomicI64,
}

/// The parts of one event.
pub(super) struct NewEvent<'a> {
    pub(super) tenant_id: &'a str,
    pub(super) kind: TenantEventKind,
    pub(super) previous_state: Option<TenantState>,
    pub(super) state: Option<TenantState>,
    pub(super) message: &'a str,
    pub(super) at: UnixMs,
}

impl EventCx {
    /// Whether events also go to the webhook outbox.
    pub(super) fn outbox(&self) -> bool {
        self.outbox
    }

    /// Notes an event appended in this transaction by SQL of its own (a
    /// server-side function that took [`EVENTS_LOCK`] itself).
    pub(super) fn appended(&self, id: i64) {
        self.last.fetch_max(id, Ordering::Relaxed);
    }

    pub(super) async fn append(&self, tx: &Tx<'_>, e: &NewEvent<'_>) -> Result<i64, StoreError> {
        if self.last.load(Ordering::Relaxed) == 0 {
            execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&EVENTS_LOCK]).await?;
        }
        let row = query_one(
            tx,
            "INSERT INTO tenant_events (tenant_id, kind, previous_state, state, message, at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING event_id",
            &[
                &e.tenant_id,
                &e.kind.as_str(),
                &e.previous_state.map(TenantState::as_str),
                &e.state.map(TenantState::as_str),
                &e.message,
                &e.at.0,
            ],
        )
        .await?;
        let id: i64 = row.try_get(0)?;
        if self.outbox {
            execute(
                tx,
                "INSERT INTO webhook_outbox (event_id, tenant_id, next_attempt_at) \
                 VALUES ($1, $2, $3)",
                &[&id, &e.tenant_id, &e.at.0],
            )
            .await?;
        }
        self.last.fetch_max(id, Ordering::Relaxed);
        Ok(id)
    }

    /// A STATE_CHANGED event if `before` and `after` differ.
    pub(super) async fn state_change(
        &self,
        tx: &Tx<'_>,
        tenant_id: &str,
        before: TenantState,
        after: TenantState,
        message: &str,
        at: UnixMs,
    ) -> Result<(), StoreError> {
        if before == after {
            return Ok(());
        }
        let e = NewEvent {
            tenant_id,
            kind: TenantEventKind::StateChanged,
            previous_state: Some(before),
            state: Some(after),
            message,
            at,
        };
        self.append(tx, &e).await?;
        Ok(())
    }
}

/// The tenant's state now, its row locked until commit (`None`: no such
/// tenant), so no other replica changes it between this read and ours.
pub(super) async fn state_of(tx: &Tx<'_>, id: &str) -> Result<Option<TenantState>, StoreError> {
    let row = query_opt(
        tx,
        "SELECT state FROM tenants WHERE tenant_id = $1 FOR UPDATE",
        &[&id],
    )
    .await?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(parse_state(id, &r.try_get::<_, String>(0)?)?)),
    }
}

/// A STATE_CHANGED event if the tenant's state is not `before` any more.
pub(super) async fn state_event(
    tx: &Tx<'_>,
    ev: &EventCx,
    id: &str,
    before: Option<TenantState>,
    message: &str,
    now: UnixMs,
) -> Result<(), StoreError> {
    if let (Some(before), Some(after)) = (before, state_of(tx, id).await?) {
        ev.state_change(tx, id, before, after, message, now).await?;
    }
    Ok(())
}

const EVENT_COLUMNS: &str = "e.event_id, e.tenant_id, e.kind, e.previous_state, e.state, \
                             e.message, e.at";

fn to_event(r: &Row) -> Result<TenantEvent, StoreError> {
    RawEvent(
        r.try_get(0)?,
        r.try_get(1)?,
        r.try_get(2)?,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
    )
    .parse()
}

pub(super) async fn after(tx: &Tx<'_>, after: i64, n: u32) -> Result<EventPage, StoreError> {
    let pruned_through: i64 = query_opt(
        tx,
        "SELECT pruned_through FROM event_retention WHERE id = 1",
        &[],
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?
    .unwrap_or(0);
    let rows = query(
        tx,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM tenant_events e WHERE e.event_id > $1 \
             ORDER BY e.event_id LIMIT $2"
        ),
        &[&after, &limit(n)],
    )
    .await?;
    let events = rows.iter().map(to_event).collect::<Result<_, _>>()?;
    Ok(EventPage {
        events,
        pruned_through,
    })
}

/// The highest id ever drawn for an event (pruning does not lower it).
pub(super) async fn latest(tx: &Tx<'_>) -> Result<i64, StoreError> {
    let row = query_one(
        tx,
        "SELECT greatest(coalesce((SELECT max(event_id) FROM tenant_events), 0), \
                         (SELECT pruned_through FROM event_retention WHERE id = 1))",
        &[],
    )
    .await?;
    Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(0))
}

pub(super) async fn prune(tx: &Tx<'_>, older_than: UnixMs) -> Result<u64, StoreError> {
    let rows = query(
        tx,
        "DELETE FROM tenant_events WHERE at < $1 \
         AND event_id NOT IN (SELECT event_id FROM webhook_outbox) RETURNING event_id",
        &[&older_than.0],
    )
    .await?;
    let mut through = 0i64;
    for r in &rows {
        through = through.max(r.try_get(0)?);
    }
    if through > 0 {
        execute(
            tx,
            "UPDATE event_retention SET pruned_through = greatest(pruned_through, $1) \
             WHERE id = 1",
            &[&through],
        )
        .await?;
    }
    Ok(rows.len() as u64)
}

pub(super) async fn outbox_due(
    tx: &Tx<'_>,
    now: UnixMs,
    n: u32,
) -> Result<Vec<OutboxEntry>, StoreError> {
    // Per tenant only its oldest row (the head), and only if that is due.
    let rows = query(
        tx,
        &format!(
            "SELECT {EVENT_COLUMNS}, o.attempts, o.next_attempt_at, o.last_error \
             FROM webhook_outbox o JOIN tenant_events e ON e.event_id = o.event_id \
             WHERE o.event_id = (SELECT min(h.event_id) FROM webhook_outbox h \
                                 WHERE h.tenant_id = o.tenant_id) \
               AND o.next_attempt_at <= $1 \
             ORDER BY o.event_id LIMIT $2"
        ),
        &[&now.0, &limit(n)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let attempts: i64 = r.try_get(7)?;
            Ok(OutboxEntry {
                event: to_event(r)?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                next_attempt_at: UnixMs(r.try_get(8)?),
                last_error: r.try_get(9)?,
            })
        })
        .collect()
}

#[async_trait::async_trait]
impl crate::store::EventLog for super::PgStore {
    fn set_event_settings(&self, settings: EventSettings) {
        self.inner.events.set(settings);
    }

    fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.inner.events.subscribe()
    }

    async fn events_after(&self, after_id: i64, n: u32) -> Result<EventPage, StoreError> {
        self.read(move |tx, _| Box::pin(after(tx, after_id, n)))
            .await
    }

    async fn latest_event_id(&self) -> Result<i64, StoreError> {
        self.read(|tx, _| Box::pin(latest(tx))).await
    }

    async fn prune_events(&self, older_than: UnixMs) -> Result<u64, StoreError> {
        self.bulk(move |tx, _| Box::pin(prune(tx, older_than)))
            .await
    }

    async fn outbox_due(&self, now: UnixMs, n: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(move |tx, _| Box::pin(outbox_due(tx, now, n)))
            .await
    }

    async fn outbox_delivered(&self, event_id: i64) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "DELETE FROM webhook_outbox WHERE event_id = $1",
                    &[&event_id],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn outbox_failed(
        &self,
        event_id: i64,
        next_attempt_at: UnixMs,
        error: String,
    ) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = $2, \
                     last_error = $3 WHERE event_id = $1",
                    &[&event_id, &next_attempt_at.0, &error],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                let row = query_one(tx, "SELECT count(*) FROM webhook_outbox", &[]).await?;
                Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
            })
        })
        .await
    }
}
