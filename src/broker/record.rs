//! Applying a refresh's outcome (a [`FetchFailure`] comes from
//! `pbx::gated`, which made the request): the rules ([`outcome::decide`], pure, in
//! the policy module) say what the tenant's state and next due time become;
//! this file does the effects in order: count, decide, write, publish (or
//! record the failure), log, wake the scheduler.
//!
//! Why apart from `mod.rs`: the broker's core is the cache, single flight
//! and watch channels; the order of these effects (and what happens when
//! the write fails, see `unstored.rs`) is its own concern.

use std::sync::Arc;

use super::{unstored, Broker, Slot, TokenError, REJECTED_HINT};
use crate::clock::UnixMs;
use crate::domain::{AccessToken, TenantState};
use crate::metrics::FetchStage;
use crate::pbx::gated::FetchFailure;
use crate::pbx::{PbxError, TokenGrant};
use crate::policy::outcome::{self, Decision, Outcome};
use crate::store::{RefreshRecord, StoreError, WriteFence};

impl Broker {
    /// Applies the outcome rules ([`outcome::decide`]) to a fetch's result:
    /// writes the decision, publishes a token, counts and logs.
    pub(super) async fn record_outcome(
        &self,
        slot: &Arc<Slot>,
        issued_at: UnixMs,
        result: Result<TokenGrant, FetchFailure>,
        latency: std::time::Duration,
        fence: WriteFence,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let now = self.clock.now();
        let class = result
            .as_ref()
            .map_or_else(FetchFailure::class, |_| "success");
        self.metrics.renewal(class, latency);
        let latency_ms = latency.as_millis() as u64;
        let (settings, held) = (self.settings(), slot.token());
        // Exactly one jitter draw per outcome, as before the rules moved.
        let decide = |outcome: Outcome<'_>, error: &str| {
            let failures = slot.failures();
            let (held, rand) = (held.as_deref(), self.jitter());
            outcome::decide(
                &settings.policy,
                outcome::Input {
                    outcome,
                    failures,
                    now,
                    held,
                    error,
                    rand,
                },
            )
        };
        match result {
            Ok(grant) => {
                let token = self.token_from_grant(grant, issued_at);
                let renew_at = decide(Outcome::Success { token: &token }, "").next_due;
                self.apply_success(slot, token, renew_at, latency_ms, now, fence)
                    .await
            }
            Err(f) => {
                let decision = decide(outcome_of(&f, now), &f.describe());
                self.apply_failure(slot, class, decision, latency_ms, now, fence)
                    .await
            }
        }
    }

    async fn apply_success(
        &self,
        slot: &Arc<Slot>,
        token: AccessToken,
        renew_at: UnixMs,
        latency_ms: u64,
        now: UnixMs,
        fence: WriteFence,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let writing = tokio::time::Instant::now();
        let stored = self
            .store
            .record_refresh_fenced(
                slot.id(),
                RefreshRecord::Success {
                    token: token.clone(),
                    renew_at,
                },
                fence,
                now,
            )
            .await;
        self.metrics
            .fetch_stage(FetchStage::Record, writing.elapsed());
        let token = Arc::new(token);
        match stored {
            // The database moved on (another replica's duty or token): the
            // token just fetched is dropped, never published or served.
            Err(e @ StoreError::Fenced { .. }) => {
                self.metrics.fenced_write();
                tracing::warn!(tenant = %slot.id(), "token write fenced, the fetched token is dropped: {e}");
                return Err(e.into());
            }
            Ok(_) => {
                slot.publish(token.clone());
                self.store_recovered(slot);
            }
            // A token is a cache: serve it from memory; the next commit that
            // works writes it.
            Err(e) if unstored::is_write_failure(&e) => {
                slot.publish(token.clone());
                let error =
                    self.store_failed(slot, Some((token.clone(), renew_at)), &e, renew_at, now);
                slot.set_last_error(Some(error));
            }
            Err(e) => return Err(e.into()),
        }
        self.schedule_changed.notify_one();
        tracing::debug!(tenant = %slot.id(), outcome = "success", latency_ms, expires_at = %token.expires_at, next_renewal = %renew_at, "token renewed");
        Ok(token)
    }

    async fn apply_failure(
        &self,
        slot: &Arc<Slot>,
        class: &'static str,
        d: Decision,
        latency_ms: u64,
        now: UnixMs,
        fence: WriteFence,
    ) -> Result<Arc<AccessToken>, TokenError> {
        let (state, retry_at, failures) = (d.state, d.next_due, d.failures);
        let message = d.last_error.unwrap_or_default();
        tracing::warn!(tenant = %slot.id(), outcome = "failure", class, latency_ms, failures, next_renewal = %retry_at, "token refresh failed: {message}");
        let writing = tokio::time::Instant::now();
        let stored = self
            .store
            .record_refresh_fenced(
                slot.id(),
                RefreshRecord::Failure {
                    state,
                    error: message.clone(),
                    retry_at,
                },
                fence,
                now,
            )
            .await;
        self.metrics
            .fetch_stage(FetchStage::Record, writing.elapsed());
        if let Err(e @ StoreError::Fenced { .. }) = stored {
            // Someone else renewed meanwhile: this failure is old news.
            self.metrics.fenced_write();
            tracing::warn!(tenant = %slot.id(), "failure record fenced: {e}");
            return Err(e.into());
        }
        slot.record_failure(state, message.clone());
        match stored {
            // The failure row carries the job's new due time, but not a
            // token still waiting in memory; that one stays pending for the
            // next success.
            Ok(_) => {
                if slot.unstored().is_some_and(|u| u.token.is_none()) {
                    self.store_recovered(slot);
                }
            }
            // The caller hears the PBX failure; the lost write only moves
            // the retry into memory.
            Err(e) if unstored::is_write_failure(&e) => {
                let error = self.store_failed(slot, None, &e, retry_at, now);
                slot.set_last_error(Some(format!("{message}; {error}")));
            }
            Err(e) => return Err(e.into()),
        }
        self.schedule_changed.notify_one();
        Err(match state {
            TenantState::CredentialsRejected => TokenError::NotServable {
                tenant: slot.id().to_string(),
                state,
                hint: REJECTED_HINT,
            },
            _ => TokenError::Unavailable {
                tenant: slot.id().to_string(),
                reason: message,
                retry_at: d.throttled_until.or(Some(retry_at)),
            },
        })
    }
}

/// The class the outcome rules know a failed fetch by, at `now`.
fn outcome_of(f: &FetchFailure, now: UnixMs) -> Outcome<'static> {
    match f {
        FetchFailure::Pbx(PbxError::CredentialsRejected { .. }) => Outcome::CredentialsRejected,
        FetchFailure::HostThrottled { until } => Outcome::Throttled { until: *until },
        FetchFailure::Pbx(PbxError::Throttled { retry_after }) => Outcome::Throttled {
            until: now.plus(*retry_after),
        },
        FetchFailure::Pbx(PbxError::Protocol { .. }) => Outcome::Malformed,
        FetchFailure::Pbx(_) => Outcome::Failed,
    }
}
