//! The SQLite backend's lifecycle: the master key check at opening, the
//! heartbeat, WAL checkpoints, `PRAGMA optimize`, backups (`VACUUM INTO`
//! snapshots, see `backup.rs`) and closing.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::Connection;

use super::connection::lock;
use super::{backup, masterkey, SqliteStore};
use crate::clock::UnixMs;
use crate::store::{BackupInfo, KeyCheck, Lifecycle, StoreError};

#[async_trait]
impl Lifecycle for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    /// Verifies that the keyring opens this database (see module docs).
    /// `WrongMasterKey` if not; nothing is changed then.
    async fn check_master_key(&self) -> Result<KeyCheck, StoreError> {
        self.write(|tx, keys| masterkey::check_or_init(tx, keys))
            .await
    }

    /// The heartbeat: one tiny committed write. Success proves the database
    /// can be written right now (health status, systemd watchdog).
    async fn heartbeat(&self, now: UnixMs) -> Result<(), StoreError> {
        self.write(move |tx, _| {
            tx.prepare_cached(
                "INSERT INTO heartbeat (id, at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )?
            .execute([now.0])?;
            Ok(())
        })
        .await
    }

    /// Writes a snapshot into `dir` as `pbx-tokend-<now>.db` and removes the
    /// oldest backups beyond `keep` (0 keeps every one).
    async fn backup_into(
        &self,
        dir: &Path,
        now: UnixMs,
        keep: u32,
    ) -> Result<BackupInfo, StoreError> {
        let db = self.path().to_owned();
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || backup::backup_into_dir(&db, &dir, now, keep))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Maintenance: checkpoint the WAL (TRUNCATE). Afterwards the `-wal` file
    /// is empty, so no old page image (of a deleted row) stays in it.
    async fn wal_checkpoint(&self) -> Result<(), StoreError> {
        self.with_writer(|conn, _| checkpoint(conn)).await
    }

    /// Maintenance: `PRAGMA optimize`.
    async fn optimize(&self) -> Result<(), StoreError> {
        self.with_writer(|conn, _| Ok(conn.execute_batch("PRAGMA optimize")?))
            .await
    }

    /// Flushes and closes; later calls fail.
    async fn close(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(move || {
            inner.readers.close()?;
            let Some(conn) = lock(&inner.writer).take() else {
                return Ok(());
            };
            conn.execute_batch("PRAGMA optimize")?;
            checkpoint(&conn)?;
            conn.close().map_err(|(_, e)| StoreError::Sqlite(e))
        })
        .await
    }
}

fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        tracing::warn!(
            log,
            done,
            "WAL checkpoint could not finish: readers were busy"
        );
    }
    Ok(())
}
