//! Holding a flow's claim while this call drives the flow on. A claim
//! lasts [`super::EXCHANGE_CLAIM_MS`] from when it was taken or last
//! extended; a flow can take longer than that (a slow PBX, limiter waits
//! across six steps), and another replica must not resume it meanwhile
//! (two apps created). So the driving call extends its claim every third of
//! that length for as long as it works on the flow: a replica that crashes
//! or is cut off stops extending, and the flow is free one claim length
//! later, as before.
//!
//! A claim is named by its end time (`FlowClaims::extend_flow_claim`): an
//! extension that finds another end learns that the claim lapsed and was
//! taken over, and stops (the flow's later writes are fenced: it completes
//! once, with its own first token).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, UnixMs};
use crate::domain::TenantId;
use crate::store::Store;

/// Keeps the claim alive until dropped.
pub(super) struct ClaimHeartbeat {
    stop: CancellationToken,
}

impl Drop for ClaimHeartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Extends the claim on `id`'s flow that ends at `held` every
/// `claim_ms / 3`, by `claim_ms` from then, until the guard is dropped.
pub(super) fn hold(
    store: Store,
    clock: SharedClock,
    id: TenantId,
    held: UnixMs,
    claim_ms: i64,
) -> ClaimHeartbeat {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let every = Duration::from_millis(u64::try_from(claim_ms / 3).unwrap_or(1).max(1));
    tokio::spawn(async move {
        let mut held = held;
        loop {
            tokio::select! {
                _ = stopped.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let until = clock.now().plus_ms(claim_ms);
            match store.extend_flow_claim(&id, held, until).await {
                Ok(true) => held = until,
                // Ended meanwhile (the flow finished, failed or released
                // its claim on an error), or lapsed and taken over.
                Ok(false) if stopped.is_cancelled() => return,
                Ok(false) => {
                    tracing::info!(tenant = %id, "the authorization flow's claim was not extended: the flow ended, released its claim, or another call took it over after the claim lapsed");
                    return;
                }
                // Tried again at the next beat while the claim lasts.
                Err(e) => {
                    tracing::warn!(tenant = %id, "the authorization flow's claim could not be extended: {e}")
                }
            }
        }
    });
    ClaimHeartbeat { stop }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::TokioClock;
    use crate::crypto::Keyring;
    use crate::store::conformance::fixtures::{hash, pending_tenant, tid};
    use crate::store::conformance::flows::advance;
    use crate::store::FlowKey;

    const CLAIM: i64 = 30_000;
    const T0: UnixMs = UnixMs(1_700_000_000_000);

    #[tokio::test(start_paused = true)]
    async fn a_flow_driven_longer_than_a_claim_stays_claimed_until_the_guard_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_inline(
            &dir.path().join("db"),
            Arc::new(Keyring::from_key(&[5; 32])),
        )
        .unwrap();
        let clock: SharedClock = Arc::new(TokioClock::starting_at(T0));
        store.insert_tenant(pending_tenant("acme")).await.unwrap();
        let acme = tid("acme");
        store
            .begin_flow(&acme, hash(1), T0.plus_ms(3_600_000), T0)
            .await
            .unwrap();
        let held = T0.plus_ms(CLAIM);
        store
            .consume_state(FlowKey::State(hash(1)), T0, held)
            .await
            .unwrap()
            .expect("claimed");
        advance(&store, &acme, 1).await;
        let guard = hold(store.clone(), clock.clone(), acme.clone(), held, CLAIM);
        // Three claim lengths of work: nobody else may resume the flow.
        tokio::time::sleep(Duration::from_millis(3 * CLAIM as u64)).await;
        let now = clock.now();
        assert!(!store
            .claim_flow(&acme, now, now.plus_ms(CLAIM))
            .await
            .unwrap());
        // The driver is gone: free one claim length later, not before.
        drop(guard);
        tokio::time::sleep(Duration::from_millis(CLAIM as u64 / 2)).await;
        let now = clock.now();
        assert!(!store
            .claim_flow(&acme, now, now.plus_ms(CLAIM))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(CLAIM as u64 * 2 / 3)).await;
        let now = clock.now();
        assert!(store
            .claim_flow(&acme, now, now.plus_ms(CLAIM))
            .await
            .unwrap());
    }
}
