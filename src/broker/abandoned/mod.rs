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
//!
//! The host slot's half of the rule lives with the limiter's other
//! bookkeeping in `pbx::gated` (every caller of the limiter gets it: the
//! broker, tenants, onboarding); this file keeps the tenant's half.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, Slot};

impl Broker {
    /// How long an abandoned request still counts as in flight: the gated
    /// client's grace (one more `[pbx] request_timeout_ms`), so the host
    /// slot (held by `pbx::gated`) and the tenant are freed together.
    pub(super) fn abandon_grace(&self) -> Duration {
        self.pbx.abandon_grace()
    }
}

pub(super) use crate::pbx::gated::timed_out;

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
