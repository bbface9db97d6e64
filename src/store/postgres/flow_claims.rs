//! `FlowClaims` on PostgreSQL: extending a flow's claim by its end time
//! (the claim's identity: a replica that took the flow over after a lapse
//! set another one), and voiding every claim (not used with several
//! replicas: their claims are live; kept for the interface).

use async_trait::async_trait;

use super::{execute, PgStore};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::{FlowClaims, StoreError};

#[async_trait]
impl FlowClaims for PgStore {
    async fn extend_flow_claim(
        &self,
        id: &TenantId,
        held: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.write(move |tx, _| {
            Box::pin(async move {
                let n = execute(
                    tx,
                    "UPDATE onboarding_flows SET exchange_claimed_until = $3 \
                     WHERE tenant_id = $1 AND exchange_claimed_until = $2 \
                       AND step NOT IN ('completed', 'failed')",
                    &[&id, &held.0, &until.0],
                )
                .await?;
                Ok(n == 1)
            })
        })
        .await
    }

    async fn clear_flow_claims(&self) -> Result<u64, StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE onboarding_flows SET exchange_claimed_until = NULL \
                     WHERE exchange_claimed_until IS NOT NULL",
                    &[],
                )
                .await
            })
        })
        .await
    }
}
