//! The per-host PBX request budget shared by every replica, on PostgreSQL
//! (`migrations/postgres/0002_host_budget.sql`): taking a slot is one call
//! of `pbx_take_host_slot`, which locks the host's budget row, prunes the
//! window, checks the 429 reset time and the in-flight slots, and records
//! the start, all on the database's clock in one round trip and one
//! transaction. A slot is a row with an expiry, so a replica killed
//! mid-request frees its slots when they expire.
//!
//! Does not: wait, retry or decide what a refusal means (`pbx::gated`
//! does, through the engine's adapter).

use async_trait::async_trait;

use super::{execute, query_one, PgStore};
use crate::store::{HostBudget, SlotGrant, SlotRequest, StoreError};

#[async_trait]
impl HostBudget for PgStore {
    async fn take_host_slot(&self, req: SlotRequest) -> Result<SlotGrant, StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                let rps = i32::try_from(req.rps).unwrap_or(i32::MAX);
                let concurrent = i32::try_from(req.concurrent).unwrap_or(i32::MAX);
                let r = query_one(
                    tx,
                    "SELECT outcome, slot, wait_ms FROM pbx_take_host_slot($1, $2, $3, $4, $5, $6)",
                    &[
                        &req.host,
                        &req.holder,
                        &rps,
                        &concurrent,
                        &req.window_ms,
                        &req.slot_ttl_ms,
                    ],
                )
                .await?;
                let outcome: String = r.try_get(0)?;
                let slot: Option<i64> = r.try_get(1)?;
                let wait_ms: i64 = r.try_get::<_, i64>(2)?.max(0);
                Ok(match (outcome.as_str(), slot) {
                    ("granted", Some(slot)) => SlotGrant::Granted { slot },
                    ("throttled", _) => SlotGrant::Throttled { wait_ms },
                    ("rate", _) => SlotGrant::RateLimited { wait_ms },
                    ("busy", _) => SlotGrant::Busy,
                    (other, _) => {
                        return Err(StoreError::Corrupt(format!(
                            "pbx_take_host_slot answered {other:?}"
                        )))
                    }
                })
            })
        })
        .await
    }

    async fn release_host_slot(&self, slot: i64) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(tx, "DELETE FROM host_slots WHERE slot_id = $1", &[&slot]).await?;
                Ok(())
            })
        })
        .await
    }

    async fn throttle_host(&self, host: &str, retry_after_ms: i64) -> Result<(), StoreError> {
        let host = host.to_owned();
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO host_budget AS b (pbx_host, throttled_until) \
                     VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2) \
                     ON CONFLICT (pbx_host) DO UPDATE SET \
                         throttled_until = GREATEST(b.throttled_until, excluded.throttled_until)",
                    &[&host, &retry_after_ms.max(0)],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
