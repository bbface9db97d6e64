//! The PostgreSQL backend's lifecycle: the master key check (the same
//! sealed check value as SQLite's, `store/seal/check.rs`), the heartbeat,
//! housekeeping (`ANALYZE`; the write-ahead log is the server's business)
//! and closing. Backups are the database's own (pg_dump, base backups and
//! WAL archiving), so `backup_into` is refused with a pointer to them.
//!
//! Several replicas may start at once on a new database: the check value
//! is inserted only if absent, and the value that won is then opened, so a
//! replica started with another key refuses to start whichever came first.

use std::path::Path;

use async_trait::async_trait;

use super::{credentials, execute, query_opt, PgStore};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::store::seal::check::{open_check, seal_check, wrong_key, CheckVersion};
use crate::store::seal::credentials::opens_in_any_format;
use crate::store::seal::{self, Field};
use crate::store::{BackupInfo, KeyCheck, Lifecycle, StoreError};

/// What `backup_into` answers.
pub(super) const NO_BACKUPS: &str = "pbx-tokend does not back up a PostgreSQL database itself: use the database's own backups (pg_dump, or base backups with WAL archiving, e.g. pg_basebackup or pgBackRest), and keep the master key file apart from them";

#[async_trait]
impl Lifecycle for PgStore {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    async fn check_master_key(&self) -> Result<KeyCheck, StoreError> {
        self.write(|tx, keys| {
            Box::pin(async move {
                let existing =
                    query_opt(tx, "SELECT sealed FROM master_key_check WHERE id = 1", &[]).await?;
                if let Some(row) = existing {
                    let sealed: Vec<u8> = row.try_get(0)?;
                    return verified(keys, &sealed);
                }
                probe(tx, keys).await?;
                let sealed = seal_check(keys)?;
                let inserted = execute(
                    tx,
                    "INSERT INTO master_key_check (id, sealed) VALUES (1, $1) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&sealed],
                )
                .await?;
                if inserted == 1 {
                    return Ok(KeyCheck::Initialized);
                }
                // Another replica wrote its check value first: ours must
                // open theirs.
                let row = query_opt(tx, "SELECT sealed FROM master_key_check WHERE id = 1", &[])
                    .await?
                    .ok_or_else(|| StoreError::Corrupt("master_key_check vanished".into()))?;
                let sealed: Vec<u8> = row.try_get(0)?;
                verified(keys, &sealed)
            })
        })
        .await
    }

    async fn heartbeat(&self, now: UnixMs) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO heartbeat (id, at) VALUES (1, $1) \
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    &[&now.0],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The server checkpoints its own write-ahead log: nothing to do.
    async fn wal_checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Refreshes the planner's statistics of our tables.
    async fn optimize(&self) -> Result<(), StoreError> {
        self.bulk(|tx, _| {
            Box::pin(async move {
                tx.batch_execute("ANALYZE").await?;
                Ok(())
            })
        })
        .await
    }

    async fn backup_into(
        &self,
        _dir: &Path,
        _now: UnixMs,
        _keep: u32,
    ) -> Result<BackupInfo, StoreError> {
        Err(StoreError::Unsupported(NO_BACKUPS.into()))
    }

    /// Closes the pool: connections are closed as they come back, and later
    /// calls fail.
    async fn close(&self) -> Result<(), StoreError> {
        self.inner.pool.close();
        Ok(())
    }
}

/// A stored check value opened with the configured key.
fn verified(keys: &Keyring, sealed: &[u8]) -> Result<KeyCheck, StoreError> {
    match open_check(keys, sealed)? {
        CheckVersion::V2 => Ok(KeyCheck::Verified),
        // Only a copy of an old SQLite state can hold one; SQLite upgrades
        // its rows when it starts, PostgreSQL never held the old format.
        CheckVersion::V1 => Err(StoreError::Unsupported(
            "this PostgreSQL database holds a master key check value from before schema 6 (credentials sealed alone), copied from an old SQLite state: start pbx-tokend once on that SQLite state (it upgrades the sealed credentials), then copy it again".into(),
        )),
    }
}

/// No check value yet: one sealed value of each kind must open.
async fn probe(tx: &super::Tx<'_>, keys: &Keyring) -> Result<(), StoreError> {
    if let Some((tenant, kind, sealed_value)) = credentials::first(tx).await? {
        if !opens_in_any_format(keys, &tenant, &kind, &sealed_value)? {
            return Err(wrong_key(keys, &sealed_value));
        }
    }
    let token = query_opt(
        tx,
        "SELECT tenant_id, token_sealed FROM tokens LIMIT 1",
        &[],
    )
    .await?;
    if let Some(r) = token {
        let tenant: String = r.try_get(0)?;
        let sealed_value: Vec<u8> = r.try_get(1)?;
        if seal::open(keys, &tenant, Field::AccessToken, &sealed_value).is_err() {
            return Err(wrong_key(keys, &sealed_value));
        }
    }
    Ok(())
}
