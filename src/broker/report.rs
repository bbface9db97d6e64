//! ReportRejectedToken: a caller saw a token fail at the PBX and asks for
//! another. The answer is never the token it reported.
//!
//! The rule:
//! - The reported token was already replaced (the held token differs and
//!   is valid): the held token, at once, without a PBX request.
//! - It is the held token: one refresh, single-flight under the tenant's
//!   fetch lock (every concurrent reporter of that token takes the one new
//!   token), unless a report already forced a refresh less than
//!   `[token] report_rejected_interval_ms` ago.
//! - Within that interval the report waits for its end (or for a new token
//!   from anywhere: a renewal, a forced refresh) and then refreshes, if the
//!   caller's deadline leaves [`FETCH_ROOM_MS`] after the end; otherwise it
//!   is answered UNAVAILABLE naming when the next refresh is allowed.
//!
//! Why the wait: answering within the interval with the held token (the
//! old rule) handed the caller back the token it had just said the PBX
//! refused (40 of 40 reports right after a previous round did). The
//! interval itself stays: a caller that keeps reporting fresh tokens (a
//! bug, or an attack with a READER key) cannot turn reports into PBX
//! traffic. The wait does not hold the fetch lock, so renewals, forced
//! refreshes and GetToken are never held up by waiting reporters.

use std::sync::Arc;
use std::time::Duration;

use super::{Broker, Scheduling, Slot, TokenError, REJECTED_HINT};
use crate::clock::UnixMs;
use crate::domain::{AccessToken, TenantState};
use crate::pbx::limiter::Lane;

/// Room a wait must leave before the caller's deadline for the PBX round
/// trip itself: a token request usually takes well under a second, and a
/// fetch cut off by the deadline would answer nothing and leave a request
/// the provider may still be working on (`abandoned/mod.rs`).
pub(super) const FETCH_ROOM_MS: i64 = 1_000;

/// Why a report must wait: when the last report-forced refresh was and
/// when the next is allowed.
struct Held {
    last: Option<UnixMs>,
    next: UnixMs,
}

impl Broker {
    /// A caller saw `rejected` fail at the PBX; `budget` is how long it
    /// waits for the answer (its gRPC deadline; `None`: the interval plus
    /// [`FETCH_ROOM_MS`]). See the module comment for the rule.
    pub async fn report_rejected(
        &self,
        tenant: &str,
        rejected: &str,
        budget: Option<Duration>,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let slot = self.slot_or_load(tenant).await?;
        self.note_asked(&slot, self.clock.now());
        let interval = self.settings().report_rejected_interval_ms;
        let budget_ms = match budget {
            Some(b) => i64::try_from(b.as_millis()).unwrap_or(i64::MAX),
            None => interval.saturating_add(FETCH_ROOM_MS),
        };
        let deadline = self.clock.now().plus_ms(budget_ms);
        let mut tokens = slot.subscribe();
        let mut end = slot.subscribe_end();
        let mut counted_wait = false;
        loop {
            if let Some(why) = *end.borrow_and_update() {
                return Err(why.error(slot.id().as_str()));
            }
            slot.check_servable_state()?;
            if let Some(t) = replacement(&slot, rejected, self.clock.now()) {
                return Ok(t);
            }
            let held = match self.refresh_reported(&slot, rejected, interval).await? {
                Ok(token) => return Ok(token),
                Err(held) => held,
            };
            if held.next.plus_ms(FETCH_ROOM_MS) > deadline {
                self.metrics.report_rejected_held("unavailable");
                return Err(too_soon(&slot, &held, interval, deadline));
            }
            if !counted_wait {
                counted_wait = true;
                self.metrics.report_rejected_held("waited");
                tracing::debug!(tenant = %slot.id(), next = %held.next, "rejected-token report within the rate-limit interval; waiting for the next allowed refresh");
            }
            let nap = self.clock.now().until(held.next);
            // Whatever comes first: the interval's end, a new token, the
            // tenant's end. Each is re-judged at the top of the loop. The
            // senders live in the slot we hold, so `changed` never fails.
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                Ok(()) = tokens.changed() => {}
                Ok(()) = end.changed() => {}
            }
        }
    }

    /// Under the fetch lock: the token that replaced `rejected`, or a fresh
    /// one fetched now, or (inner `Err`) when the interval allows the next
    /// report-forced refresh.
    async fn refresh_reported(
        &self,
        slot: &Arc<Slot>,
        rejected: &str,
        interval: i64,
    ) -> Result<Result<Arc<AccessToken>, Held>, TokenError> {
        let _flight = slot.fetch_lock().await;
        let now = self.clock.now();
        // Someone refreshed while we waited for the lock (single flight).
        if let Some(t) = replacement(slot, rejected, now) {
            return Ok(Ok(t));
        }
        if slot.state() == TenantState::CredentialsRejected {
            if let Some(e) = Self::credential_fault_error(slot) {
                return Err(e);
            }
            // Retried on the rare schedule only, never per report.
            return Err(TokenError::NotServable {
                tenant: slot.id().to_string(),
                state: TenantState::CredentialsRejected,
                hint: REJECTED_HINT,
            });
        }
        // The interval only spares a valid held token: without one a fetch
        // is needed anyway (GetToken would make it too).
        let holds_valid = slot.token().is_some_and(|t| t.valid_for(now, 0));
        if holds_valid {
            if let Some(next) = slot.next_report_refresh(now, interval) {
                return Ok(Err(Held {
                    last: slot.last_report_refresh(),
                    next,
                }));
            }
        }
        slot.mark_report_refresh(now);
        self.fetch_locked(slot, now, Lane::Demand, Scheduling::default())
            .await
            .map(Ok)
    }
}

/// The held token, if it is valid and not the reported one.
fn replacement(slot: &Slot, rejected: &str, now: UnixMs) -> Option<Arc<AccessToken>> {
    slot.token()
        .filter(|t| t.value.expose() != rejected && t.valid_for(now, 0))
}

/// UNAVAILABLE: the caller's deadline ends before the next allowed refresh
/// could finish; the message says when to report again.
fn too_soon(slot: &Slot, held: &Held, interval: i64, deadline: UnixMs) -> TokenError {
    let last = held.last.map(|at| format!(" at {at}")).unwrap_or_default();
    TokenError::Unavailable {
        tenant: slot.id().to_string(),
        reason: format!(
            "a report already forced a refresh{last}, and [token] report_rejected_interval_ms \
             ({interval} ms) allows the next at {}: this call's deadline ({deadline}) leaves no \
             room for it ({FETCH_ROOM_MS} ms); report again then, or with a longer deadline",
            held.next
        ),
        retry_at: Some(held.next),
    }
}

#[cfg(test)]
mod tests;
