//! The `host_leases` table: renewal duty per PBX host. A claim is one
//! IMMEDIATE transaction (read the row, decide, write), so two claims
//! never both win; times are the caller's clock, which on one node is the
//! only clock there is.
//!
//! Also the (unsupported) shared host budget: one node keeps it in memory.
//!
//! Does not: decide when to claim or what a lost lease stops (the
//! scheduler does).

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::{SqliteStore, StoreError};
use crate::clock::UnixMs;
use crate::store::{HostBudget, Lease, LeaseClaim, LeaseTable, SlotGrant, SlotRequest};

/// One node has no budget to share: its limiter (`pbx::limiter`) keeps the
/// per-host limits in memory, and nothing calls these.
#[async_trait]
impl HostBudget for SqliteStore {
    async fn take_host_slot(&self, _: SlotRequest) -> Result<SlotGrant, StoreError> {
        Err(unsupported())
    }

    async fn release_host_slot(&self, _: i64) -> Result<(), StoreError> {
        Err(unsupported())
    }

    async fn throttle_host(&self, _: &str, _: i64) -> Result<(), StoreError> {
        Err(unsupported())
    }
}

fn unsupported() -> StoreError {
    StoreError::Unsupported(
        "the shared per-host budget exists only on PostgreSQL ([store] backend = \"postgres\"); one SQLite node keeps its limits in memory".into(),
    )
}

#[async_trait]
impl LeaseTable for SqliteStore {
    async fn claim_lease(
        &self,
        host: &str,
        holder: &str,
        ttl_ms: i64,
        now: UnixMs,
    ) -> Result<LeaseClaim, StoreError> {
        let (host, holder) = (host.to_owned(), holder.to_owned());
        self.write(move |tx, _| claim(tx, &host, &holder, ttl_ms, now))
            .await
    }

    async fn release_lease(&self, host: &str, holder: &str, epoch: i64) -> Result<(), StoreError> {
        let (host, holder) = (host.to_owned(), holder.to_owned());
        self.write(move |tx, _| {
            // Expired at once rather than deleted: the epoch must survive.
            tx.prepare_cached(
                "UPDATE host_leases SET expires_at = min(expires_at, 0) \
                 WHERE pbx_host = ?1 AND holder = ?2 AND epoch = ?3",
            )?
            .execute(params![host, holder, epoch])?;
            Ok(())
        })
        .await
    }

    async fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.read(|conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT pbx_host, holder, epoch, expires_at FROM host_leases ORDER BY pbx_host",
            )?;
            let rows = stmt.query_map([], lease_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

fn lease_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Lease> {
    Ok(Lease {
        host: r.get(0)?,
        holder: r.get(1)?,
        epoch: r.get(2)?,
        expires_at: UnixMs(r.get(3)?),
    })
}

fn claim(
    tx: &Connection,
    host: &str,
    holder: &str,
    ttl_ms: i64,
    now: UnixMs,
) -> Result<LeaseClaim, StoreError> {
    let current = tx
        .prepare_cached(
            "SELECT pbx_host, holder, epoch, expires_at FROM host_leases WHERE pbx_host = ?1",
        )?
        .query_row([host], lease_from_row)
        .optional()?;
    let expires_at = now.plus_ms(ttl_ms.max(0));
    let epoch = match current {
        Some(l) if l.holder == holder && l.expires_at > now => l.epoch,
        Some(l) if l.expires_at > now => return Ok(LeaseClaim::Refused(l)),
        Some(l) => l.epoch + 1,
        None => 1,
    };
    tx.prepare_cached(
        "INSERT INTO host_leases (pbx_host, holder, epoch, expires_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (pbx_host) DO UPDATE SET holder = excluded.holder, \
             epoch = excluded.epoch, expires_at = excluded.expires_at",
    )?
    .execute(params![host, holder, epoch, expires_at.0])?;
    Ok(LeaseClaim::Granted(Lease {
        host: host.to_owned(),
        holder: holder.to_owned(),
        epoch,
        expires_at,
    }))
}
