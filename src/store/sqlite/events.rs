//! The `tenant_events`, `webhook_outbox` and `event_retention` tables.
//! Events are appended inside the transaction of the change that caused
//! them (through an [`EventCx`], one per transaction), and the handle's
//! watch channel is told only after that transaction commits, so a stream
//! woken by it always finds the event when it re-reads.
//!
//! Does not: decide when an event is due (the callers in `tenant_writes.rs`,
//! `tokens.rs`, `onboarding.rs` do), or deliver webhooks.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::watch;

use super::tenants::parse_state;
use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::TenantState;
use crate::store::{EventPage, EventSettings, OutboxEntry, TenantEvent, TenantEventKind};

/// Per store handle: the settings events are written with, and the channel
/// that wakes streams after a commit.
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

    /// The context for one transaction.
    pub(super) fn begin(&self) -> EventCx {
        EventCx {
            outbox: self.outbox.load(Ordering::Relaxed),
            last: Cell::new(0),
        }
    }

    /// Call after `cx`'s transaction committed. A savepoint rolled back
    /// inside it may have appended an event that is gone: the wake-up is
    /// then spurious, which costs a stream one empty read.
    pub(super) fn committed(&self, cx: &EventCx) {
        let last = cx.last.get();
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
    /// The highest event id appended in the transaction (0: none).
    last: Cell<i64>,
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
    pub(super) fn append(&self, tx: &Connection, e: &NewEvent<'_>) -> Result<i64, StoreError> {
        let id: i64 = tx
            .prepare_cached(
                "INSERT INTO tenant_events (tenant_id, kind, previous_state, state, message, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING event_id",
            )?
            .query_row(
                params![
                    e.tenant_id,
                    e.kind.as_str(),
                    e.previous_state.map(TenantState::as_str),
                    e.state.map(TenantState::as_str),
                    e.message,
                    e.at.0
                ],
                |r| r.get(0),
            )?;
        if self.outbox {
            tx.prepare_cached(
                "INSERT INTO webhook_outbox (event_id, tenant_id, next_attempt_at) \
                 VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, e.tenant_id, e.at.0])?;
        }
        self.last.set(self.last.get().max(id));
        Ok(id)
    }

    /// A STATE_CHANGED event if `before` and `after` differ.
    pub(super) fn state_change(
        &self,
        tx: &Connection,
        tenant_id: &str,
        before: TenantState,
        after: TenantState,
        message: &str,
        at: UnixMs,
    ) -> Result<(), StoreError> {
        if before == after {
            return Ok(());
        }
        self.append(
            tx,
            &NewEvent {
                tenant_id,
                kind: TenantEventKind::StateChanged,
                previous_state: Some(before),
                state: Some(after),
                message,
                at,
            },
        )?;
        Ok(())
    }
}

/// The tenant's state now (`None`: no such tenant).
pub(super) fn state_of(tx: &Connection, id: &str) -> Result<Option<TenantState>, StoreError> {
    let s: Option<String> = tx
        .prepare_cached("SELECT state FROM tenants WHERE tenant_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    s.map(|s| parse_state(id, &s)).transpose()
}

const EVENT_COLUMNS: &str = "e.event_id, e.tenant_id, e.kind, e.previous_state, e.state, \
                             e.message, e.at";

fn event_row(r: &Row<'_>) -> rusqlite::Result<RawEvent> {
    Ok(RawEvent(
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

use crate::store::events::RawEvent;

fn to_event(raw: RawEvent) -> Result<TenantEvent, StoreError> {
    raw.parse()
}

pub(super) fn after(conn: &Connection, after: i64, limit: u32) -> Result<EventPage, StoreError> {
    let pruned_through = pruned_through(conn)?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM tenant_events e WHERE e.event_id > ?1 \
         ORDER BY e.event_id LIMIT ?2"
    ))?;
    let raw = stmt
        .query_map(params![after, limit], event_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let events = raw.into_iter().map(to_event).collect::<Result<_, _>>()?;
    Ok(EventPage {
        events,
        pruned_through,
    })
}

fn pruned_through(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT pruned_through FROM event_retention WHERE id = 1")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

/// Reads `sqlite_sequence` too: the id of the last event survives its
/// pruning, and ids are never reused.
pub(super) fn latest(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT max(coalesce((SELECT max(event_id) FROM tenant_events), 0), \
                        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tenant_events'), 0))",
        )?
        .query_row([], |r| r.get(0))?)
}

pub(super) fn prune(tx: &Connection, older_than: UnixMs) -> Result<u64, StoreError> {
    let through: Option<i64> = tx
        .prepare_cached(
            "SELECT max(event_id) FROM tenant_events WHERE at < ?1 \
             AND event_id NOT IN (SELECT event_id FROM webhook_outbox)",
        )?
        .query_row([older_than.0], |r| r.get(0))?;
    let n = tx
        .prepare_cached(
            "DELETE FROM tenant_events WHERE at < ?1 \
             AND event_id NOT IN (SELECT event_id FROM webhook_outbox)",
        )?
        .execute([older_than.0])?;
    if let Some(through) = through {
        tx.prepare_cached(
            "UPDATE event_retention SET pruned_through = max(pruned_through, ?1) WHERE id = 1",
        )?
        .execute([through])?;
    }
    Ok(n as u64)
}

pub(super) fn outbox_due(
    conn: &Connection,
    now: UnixMs,
    limit: u32,
) -> Result<Vec<OutboxEntry>, StoreError> {
    // Per tenant only its oldest row (the head), and only if that is due:
    // a later event never overtakes an earlier one of the same tenant.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS}, o.attempts, o.next_attempt_at, o.last_error \
         FROM webhook_outbox o JOIN tenant_events e ON e.event_id = o.event_id \
         WHERE o.event_id = (SELECT min(h.event_id) FROM webhook_outbox h \
                             WHERE h.tenant_id = o.tenant_id) \
           AND o.next_attempt_at <= ?1 \
         ORDER BY o.event_id LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![now.0, limit], |r| {
            Ok((
                event_row(r)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(raw, attempts, next, last_error)| {
            Ok(OutboxEntry {
                event: to_event(raw)?,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                next_attempt_at: UnixMs(next),
                last_error,
            })
        })
        .collect()
}

pub(super) fn outbox_delivered(tx: &Connection, event_id: i64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM webhook_outbox WHERE event_id = ?1")?
        .execute([event_id])?;
    Ok(())
}

pub(super) fn outbox_failed(
    tx: &Connection,
    event_id: i64,
    next_attempt_at: UnixMs,
    error: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?2, \
         last_error = ?3 WHERE event_id = ?1",
    )?
    .execute(params![event_id, next_attempt_at.0, error])?;
    Ok(())
}

pub(super) fn outbox_depth(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM webhook_outbox")?
        .query_row([], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[async_trait::async_trait]
impl crate::store::EventLog for super::SqliteStore {
    fn set_event_settings(&self, settings: EventSettings) {
        self.inner.events.set(settings);
    }

    fn subscribe_events(&self) -> watch::Receiver<i64> {
        self.inner.events.subscribe()
    }

    async fn events_after(&self, after_id: i64, limit: u32) -> Result<EventPage, StoreError> {
        self.read(move |conn, _| after(conn, after_id, limit)).await
    }

    async fn latest_event_id(&self) -> Result<i64, StoreError> {
        self.read(|conn, _| latest(conn)).await
    }

    async fn prune_events(&self, older_than: UnixMs) -> Result<u64, StoreError> {
        self.write(move |tx, _| prune(tx, older_than)).await
    }

    async fn outbox_due(&self, now: UnixMs, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(move |conn, _| outbox_due(conn, now, limit)).await
    }

    async fn outbox_delivered(&self, event_id: i64) -> Result<(), StoreError> {
        self.write(move |tx, _| outbox_delivered(tx, event_id))
            .await
    }

    async fn outbox_failed(
        &self,
        event_id: i64,
        next_attempt_at: UnixMs,
        error: String,
    ) -> Result<(), StoreError> {
        self.write(move |tx, _| outbox_failed(tx, event_id, next_attempt_at, &error))
            .await
    }

    async fn outbox_depth(&self) -> Result<u64, StoreError> {
        self.read(|conn, _| outbox_depth(conn)).await
    }
}
