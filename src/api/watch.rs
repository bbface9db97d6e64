//! The WatchToken stream: the current token, then each new one, until the
//! caller or the tenant no longer qualifies, or the daemon drains.
//!
//! Why the caller is re-checked: the interceptor looked at the key once,
//! when the stream opened; a key revoked later (or whose patterns no longer
//! cover the tenant) must not keep receiving tokens. The key table is in
//! memory, so the stream re-checks before every message, and it also wakes
//! on every change of the table, so a revoked key's stream ends at once
//! rather than at its next token.
//!
//! How a stream ends, each with a message saying why:
//! - key revoked: UNAUTHENTICATED; patterns no longer match:
//!   PERMISSION_DENIED;
//! - tenant disabled: FAILED_PRECONDITION; deleted: NOT_FOUND;
//! - daemon draining: OK (the client reconnects elsewhere).
//!
//! Does not: decide the tenant's state (broker) or who may read what
//! (access).

use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::convert;
use super::streams::StreamPermit;
use crate::access::{Caller, Clients, Lapsed};
use crate::broker::{TokenWatch, WatchEnd};
use crate::clock::SharedClock;
use crate::proto;

/// Everything one open stream needs.
pub struct Watcher {
    pub tenant: String,
    pub caller: Arc<Caller>,
    pub clients: Arc<Clients>,
    pub watch: TokenWatch,
    pub shutdown: CancellationToken,
    pub clock: SharedClock,
    /// Held for the stream's life (per-connection cap).
    pub permit: StreamPermit,
}

struct State {
    w: Watcher,
    access: watch::Receiver<u64>,
    /// A token not looked at yet (the current one at the start).
    fresh: bool,
    /// The tenant's channels closed (its slot is gone).
    closed: bool,
    done: bool,
}

impl State {
    /// Why the stream must end now, if it must. Checked before every
    /// message, so nothing is sent after a revocation or a disable.
    fn ending(&self) -> Option<Status> {
        let w = &self.w;
        match w.clients.recheck(&w.caller, &w.tenant) {
            Ok(()) => {}
            Err(Lapsed::Revoked) => {
                return Some(Status::unauthenticated(
                    "the API key of this WatchToken stream was revoked; the stream ends (ask an admin for a new key)",
                ))
            }
            Err(Lapsed::OutOfScope) => {
                return Some(Status::permission_denied(
                    "the API key of this WatchToken stream no longer covers the tenant (its tenant patterns changed); the stream ends",
                ))
            }
        }
        let end = *w.watch.end.borrow();
        let end = match end {
            Some(end) => end,
            None if self.closed => WatchEnd::Deleted,
            None => return None,
        };
        let status = Status::from(end.error(&w.tenant));
        Some(Status::new(
            status.code(),
            format!("{}; this WatchToken stream ends", status.message()),
        ))
    }

    /// The next item, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<proto::AccessToken, Status>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(status) = self.ending() {
                self.done = true;
                return Some(Err(status));
            }
            if self.fresh {
                self.fresh = false;
                let token = self.w.watch.tokens.borrow_and_update().clone();
                // Never stream an expired token (e.g. held across a restart).
                if let Some(t) = token.filter(|t| t.valid_for(self.w.clock.now(), 0)) {
                    return Some(Ok(convert::access_token(&self.w.tenant, &t)));
                }
            }
            tokio::select! {
                biased;
                () = self.w.shutdown.cancelled() => {
                    self.done = true;
                    return None;
                }
                changed = self.w.watch.end.changed() => {
                    if changed.is_err() {
                        self.closed = true;
                    }
                }
                changed = self.access.changed() => {
                    // The key table is gone only when the daemon stops.
                    if changed.is_err() {
                        self.done = true;
                        return None;
                    }
                }
                changed = self.w.watch.tokens.changed() => match changed {
                    Ok(()) => self.fresh = true,
                    Err(_) => self.closed = true,
                },
            }
        }
    }
}

/// The stream for one WatchToken call.
pub fn stream(w: Watcher) -> impl Stream<Item = Result<proto::AccessToken, Status>> + Send {
    let access = w.clients.changes();
    let state = State {
        w,
        access,
        fresh: true,
        closed: false,
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}
