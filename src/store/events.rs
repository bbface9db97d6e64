//! Tenant events as the storage interface speaks of them: what happened to
//! a tenant (created, updated, deleted, state changed, authorization
//! completed), written by the backend in the same transaction as the change
//! that caused it, and the webhook outbox rows that go with them.
//!
//! Why here and not in `domain`: events are records of the store (their id
//! is the table's), and only the store and the layers above read them.

use super::rows::{parse_id, parse_state};
use super::StoreError;
use crate::clock::UnixMs;
use crate::domain::{TenantId, TenantState};

/// What kind of change an event records. `as_str` is the stored name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantEventKind {
    Created,
    Updated,
    Deleted,
    StateChanged,
    AuthorizationCompleted,
}

impl TenantEventKind {
    pub const ALL: [TenantEventKind; 5] = [
        TenantEventKind::Created,
        TenantEventKind::Updated,
        TenantEventKind::Deleted,
        TenantEventKind::StateChanged,
        TenantEventKind::AuthorizationCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantEventKind::Created => "created",
            TenantEventKind::Updated => "updated",
            TenantEventKind::Deleted => "deleted",
            TenantEventKind::StateChanged => "state_changed",
            TenantEventKind::AuthorizationCompleted => "authorization_completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for TenantEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored event. `event_id` grows with commit order (a reader that has
/// seen id N has seen every committed event below it). `previous_state` is
/// set for STATE_CHANGED; `state` is the tenant's state after the change
/// (for DELETED: its state when it was deleted). `message` never holds a
/// secret (it is a tenant's `last_error` or a fixed sentence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEvent {
    pub event_id: i64,
    pub tenant_id: TenantId,
    pub kind: TenantEventKind,
    pub previous_state: Option<TenantState>,
    pub state: Option<TenantState>,
    pub message: String,
    pub at: UnixMs,
}

/// An event waiting for webhook delivery, with its delivery record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub event: TenantEvent,
    pub attempts: u32,
    pub next_attempt_at: UnixMs,
    pub last_error: Option<String>,
}

/// How the backend writes events. Given at start-up (and on reload) with
/// `EventLog::set_event_settings`; a new store writes no outbox rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSettings {
    /// Write a `webhook_outbox` row with every event (webhooks enabled).
    pub outbox: bool,
}

/// The result of `EventLog::events_after`: the events, and how far the
/// log has been pruned, so a reader can tell it missed some.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventPage {
    pub events: Vec<TenantEvent>,
    /// Every event with an id at or below this was pruned by retention
    /// (0: none ever was). A reader whose `after` is below it missed some.
    pub pruned_through: i64,
}

/// Messages of the events whose cause has no `last_error` to show.
pub(crate) mod messages {
    pub const CREATED: &str = "tenant created";
    pub const UPDATED: &str = "tenant updated";
    pub const DELETED: &str = "tenant deleted";
    pub const AUTHORIZED: &str = "authorization completed: the trusted app is stored";
    pub const RECOVERED: &str = "token renewed";
    pub const BY_OPERATOR: &str = "state set by UpdateTenant";
}

/// An event row as both backends read it: id, tenant, kind, previous
/// state, state, message, at.
pub(crate) struct RawEvent(
    pub(crate) i64,
    pub(crate) String,
    pub(crate) String,
    pub(crate) Option<String>,
    pub(crate) Option<String>,
    pub(crate) String,
    pub(crate) i64,
);

impl RawEvent {
    pub(crate) fn parse(self) -> Result<TenantEvent, StoreError> {
        let RawEvent(event_id, tenant, kind, prev, state, message, at) = self;
        let kind = TenantEventKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("event {event_id} has kind {kind:?}")))?;
        Ok(TenantEvent {
            event_id,
            tenant_id: parse_id(&tenant)?,
            kind,
            previous_state: prev.map(|s| parse_state(&tenant, &s)).transpose()?,
            state: state.map(|s| parse_state(&tenant, &s)).transpose()?,
            message,
            at: UnixMs(at),
        })
    }
}
