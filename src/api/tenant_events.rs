//! The WatchTenantEvents stream: every stored event after the caller's
//! cursor, oldest first, then each new one as it commits, filtered by the
//! request's tenant pattern and by what the caller may see.
//!
//! Why it re-reads the store instead of forwarding what it is woken with:
//! the wake-up (the store handle's "events committed" channel) only says
//! that something committed; reading `events_after(cursor)` each time means
//! nothing committed between a wake-up and a read is lost or repeated. It
//! also polls every `events::POLL`, for events another replica committed.
//!
//! How a stream ends, each with a message saying why:
//! - key revoked: UNAUTHENTICATED (checked before every message and on
//!   every change of the key table, as WatchToken does);
//! - the cursor fell behind retention: FAILED_PRECONDITION;
//! - the store failed: its status; the daemon draining: OK (reconnect with
//!   the last event_id seen).
//!
//! Does not: decide what an event is (store) or who may read what (access).

use std::collections::VecDeque;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert;
use super::streams::StreamPermit;
use crate::access::{Caller, Clients, Lapsed, TenantPattern};
use crate::events::{TenantEvents, POLL};
use crate::proto;
use crate::store::TenantEvent;

/// Everything one open stream needs.
pub struct EventWatcher {
    pub events: TenantEvents,
    /// Subscribed before the first read.
    pub wake: watch::Receiver<i64>,
    /// `None`: every tenant the caller may see.
    pub pattern: Option<TenantPattern>,
    pub caller: Arc<Caller>,
    pub clients: Arc<Clients>,
    pub shutdown: CancellationToken,
    /// The events already read (the handler's first page).
    pub first: Vec<TenantEvent>,
    /// The id after which to read next.
    pub cursor: i64,
    /// End (OK) once nothing more is stored, instead of waiting.
    pub stop_at_end: bool,
    /// Held for the stream's life (per-connection cap).
    pub permit: StreamPermit,
}

struct State {
    w: EventWatcher,
    access: watch::Receiver<u64>,
    buffer: VecDeque<TenantEvent>,
    done: bool,
}

impl State {
    fn wanted(&self, e: &TenantEvent) -> bool {
        let tenant = e.tenant_id.as_str();
        self.w.pattern.as_ref().is_none_or(|p| p.matches(tenant)) && self.w.caller.may_read(tenant)
    }

    /// UNAUTHENTICATED once the caller's key is revoked.
    fn revoked(&self, tenant: &str) -> Option<Status> {
        match self.w.clients.recheck(&self.w.caller, tenant) {
            Err(Lapsed::Revoked) => Some(Status::unauthenticated(
                "the API key of this WatchTenantEvents stream was revoked; the stream ends (ask an admin for a new key)",
            )),
            Ok(()) | Err(Lapsed::OutOfScope) => None,
        }
    }

    async fn next(&mut self) -> Option<Result<proto::TenantEvent, Status>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(status) = self.revoked("") {
                self.done = true;
                return Some(Err(status));
            }
            if let Some(e) = self.buffer.pop_front() {
                if self.wanted(&e) {
                    return Some(Ok(convert::tenant_event(&e)));
                }
                continue;
            }
            // Mark what woke us as seen before reading: a commit after
            // this point wakes the next wait.
            self.w.wake.borrow_and_update();
            match self.w.events.after(self.w.cursor).await {
                Ok(page) if !page.is_empty() => {
                    self.w.cursor = page.last().map_or(self.w.cursor, |e| e.event_id);
                    self.buffer.extend(page);
                    continue;
                }
                Ok(_) if self.w.stop_at_end => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(Status::from(e)));
                }
            }
            tokio::select! {
                biased;
                () = self.w.shutdown.cancelled() => {
                    self.done = true;
                    return None;
                }
                changed = self.access.changed() => {
                    // The key table is gone only when the daemon stops.
                    if changed.is_err() {
                        self.done = true;
                        return None;
                    }
                }
                changed = self.w.wake.changed() => {
                    if changed.is_err() {
                        // The store is closing: the daemon stops.
                        self.done = true;
                        return None;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The stream for one WatchTenantEvents call.
pub fn stream(
    mut w: EventWatcher,
) -> impl Stream<Item = Result<proto::TenantEvent, Status>> + Send {
    let access = w.clients.changes();
    let buffer = std::mem::take(&mut w.first).into();
    let state = State {
        w,
        access,
        buffer,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}
