//! `FlowClaims` on SQLite: extending a flow's claim by its end time (the
//! claim's identity), and voiding every claim when the one process starts.

use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, StoreError};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::FlowClaims;

#[async_trait]
impl FlowClaims for SqliteStore {
    async fn extend_flow_claim(
        &self,
        id: &TenantId,
        held: UnixMs,
        until: UnixMs,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.write(move |tx, _| {
            let n = tx
                .prepare_cached(
                    "UPDATE onboarding_flows SET exchange_claimed_until = ?3 \
                     WHERE tenant_id = ?1 AND exchange_claimed_until = ?2 \
                       AND step NOT IN ('completed', 'failed')",
                )?
                .execute(params![id.as_str(), held.0, until.0])?;
            Ok(n == 1)
        })
        .await
    }

    async fn clear_flow_claims(&self) -> Result<u64, StoreError> {
        self.write(move |tx, _| {
            let n = tx.execute(
                "UPDATE onboarding_flows SET exchange_claimed_until = NULL \
                 WHERE exchange_claimed_until IS NOT NULL",
                [],
            )?;
            Ok(n as u64)
        })
        .await
    }
}
