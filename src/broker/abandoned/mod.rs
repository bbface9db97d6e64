//! Token requests our side gave up on while the provider may still be
//! working on them.
//!
//! Why: a paused daemon (SIGSTOP, a paused VM) resumes with every request
//! timer expired. Each timed-out request freed its host slot and its
//! tenant's fetch lock at once, and the next requests went out while the
//! provider was still answering the abandoned ones: the simulator (which,
//! like a real provider, finishes a request whose client hung up) saw 12
//! token requests at once with `per_host_concurrent = 6`, two of them for
//! one tenant. Dropping our end of the connection does not stop the
//! provider's work, so the limits must count such a request as in flight
//! for a while longer: here for one more request timeout, i.e. we assume a
//! provider finishes within twice our timeout. The same holds for a call
//! cancelled half-way (its caller's deadline passed, the caller went away).
//!
//! A request that got an answer, or failed fast (connection refused: the
//! provider never had it), frees both at once.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, Slot};
use crate::pbx::limiter::RequestPermit;

impl Broker {
    /// How long an abandoned request still counts as in flight.
    pub(super) fn abandon_grace(&self) -> Duration {
        Duration::from_millis(self.settings().request_timeout_ms)
    }
}

/// Whether a finished call is one our side gave up on: it failed no sooner
/// than the request timeout (the PBX client's timer fired, or a limiter
/// wait plus a slow failure: counting those too only costs a little
/// throughput).
pub(super) fn timed_out<T, E>(result: &Result<T, E>, took: Duration, timeout: Duration) -> bool {
    result.is_err() && took >= timeout
}

/// A host's concurrency slot for one request; see the module doc.
pub(super) struct HostSlot {
    permit: Option<RequestPermit>,
    grace: Duration,
}

impl HostSlot {
    pub fn new(permit: RequestPermit, grace: Duration) -> Self {
        Self {
            permit: Some(permit),
            grace,
        }
    }

    /// The call ended; `abandoned`: it timed out at our side.
    pub fn finish(mut self, abandoned: bool) {
        if let Some(p) = self.permit.take() {
            if abandoned {
                p.hold_for(self.grace);
            }
        }
    }
}

impl Drop for HostSlot {
    /// Dropped without `finish`: the call was cancelled mid-way.
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            p.hold_for(self.grace);
        }
    }
}

/// Marks a tenant's request as possibly still open at the provider when it
/// is cancelled or times out; the next fetch of the tenant waits it out.
pub(super) struct TenantMark<'a> {
    slot: &'a Arc<Slot>,
    grace: Duration,
    armed: bool,
}

impl<'a> TenantMark<'a> {
    pub fn new(slot: &'a Arc<Slot>, grace: Duration) -> Self {
        Self {
            slot,
            grace,
            armed: true,
        }
    }

    pub fn finish(mut self, abandoned: bool) {
        self.armed = abandoned;
    }
}

impl Drop for TenantMark<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.slot
                .provider_busy_until(tokio::time::Instant::now() + self.grace);
        }
    }
}

#[cfg(test)]
mod tests;
