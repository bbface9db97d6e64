//! Backups and restore of the database file, and the heartbeat write.
//!
//! A backup is `VACUUM INTO` on its own read-only connection: a consistent
//! snapshot of one read transaction, written while the daemon keeps
//! committing renewals (WAL lets readers and the writer proceed together).
//! It is written to `<name>.partial` (created 0600 first, so the copy of the
//! sealed data is never readable by others) and renamed when complete, so a
//! crash never leaves a truncated file that looks like a backup.
//!
//! Sealed values are copied as they are: a backup is as safe as the
//! database, and useless without the master key it was sealed under.
//!
//! Does not: schedule backups (renewal/maintenance.rs does), or decide that
//! the daemon is stopped before a restore (the caller holds the state-dir
//! lock, see `crate::statedir`).

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::connection::sibling;
use super::BackupInfo;
use super::{masterkey, migrate, StoreError};
use crate::clock::UnixMs;
use crate::crypto::Keyring;

/// Backup files are `pbx-tokend-<UTC time>.db` in the backup directory.
const PREFIX: &str = "pbx-tokend-";
const SUFFIX: &str = ".db";

/// What a backup file holds, as checked before a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupCheck {
    pub schema_version: i64,
    pub tenants: u64,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub check: BackupCheck,
    /// Where the database that was replaced now is (None if there was none).
    pub previous: Option<PathBuf>,
}

fn invalid(path: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::Backup(format!("{}: {why}", path.display()))
}

/// Blocking: snapshot of the database at `db` into `dir` (created 0700),
/// named after `now`, then pruning to `keep`. Safe while a daemon runs.
pub fn backup_into_dir(
    db: &Path,
    dir: &Path,
    now: UnixMs,
    keep: u32,
) -> Result<BackupInfo, StoreError> {
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // `pbx-tokend backup` run by root must not leave a directory the
        // service's user cannot write to.
        if let Some(state_dir) = db.parent() {
            match_owner(dir, state_dir)?;
        }
    }
    let path = dir.join(backup_name(now));
    let bytes = snapshot_file(db, &path)?;
    match_owner(&path, dir)?;
    let pruned = prune(dir, keep)?;
    Ok(BackupInfo {
        path,
        bytes,
        pruned,
    })
}

/// `pbx-tokend-20261128T072857123Z.db`: sorts by time as text.
pub fn backup_name(now: UnixMs) -> String {
    let stamp: String = now
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{PREFIX}{stamp}{SUFFIX}")
}

/// Blocking: a consistent copy of `db` at `dest` (which must not exist),
/// mode 0600. Returns its size.
pub fn snapshot_file(db: &Path, dest: &Path) -> Result<u64, StoreError> {
    if dest.exists() {
        return Err(invalid(dest, "already exists; not overwriting it"));
    }
    let partial = sibling(dest, ".partial");
    // Leftover of a crashed attempt: it was never a backup.
    let _ = std::fs::remove_file(&partial);
    // VACUUM INTO accepts an empty existing file and keeps its mode.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    let result = (|| -> Result<u64, StoreError> {
        let conn = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let target = partial
            .to_str()
            .ok_or_else(|| invalid(&partial, "path is not UTF-8"))?;
        conn.execute("VACUUM INTO ?1", [target])?;
        drop(conn);
        let file = OpenOptions::new().read(true).open(&partial)?;
        file.sync_all()?;
        Ok(file.metadata()?.len())
    })();
    match result {
        Ok(bytes) => {
            std::fs::rename(&partial, dest)?;
            sync_parent(dest)?;
            Ok(bytes)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Backups in `dir`, oldest first.
pub fn list_backups(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn prune(dir: &Path, keep: u32) -> Result<Vec<PathBuf>, StoreError> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let all = list_backups(dir)?;
    let excess = all.len().saturating_sub(keep as usize);
    let mut removed = Vec::new();
    for old in all.into_iter().take(excess) {
        std::fs::remove_file(&old)?;
        removed.push(old);
    }
    Ok(removed)
}

/// Blocking: opens `path` read-only and checks it is a sound pbx-tokend
/// database this binary can run: `PRAGMA integrity_check` says ok, and the
/// schema is not newer than this binary's.
pub fn check_backup(path: &Path) -> Result<BackupCheck, StoreError> {
    if !path.is_file() {
        return Err(invalid(path, "no such file"));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| invalid(path, format!("not an SQLite database ({e})")))?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| invalid(path, format!("not an SQLite database ({e})")))?;
    if integrity != "ok" {
        return Err(invalid(
            path,
            format!("PRAGMA integrity_check failed: {integrity}"),
        ));
    }
    let version = migrate::user_version(&conn)?;
    let supported = migrate::latest_version();
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    let tenants: i64 = conn
        .query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))
        .map_err(|e| invalid(path, format!("not a pbx-tokend database ({e})")))?;
    Ok(BackupCheck {
        schema_version: version,
        tenants: u64::try_from(tenants).unwrap_or(0),
    })
}

/// Blocking: whether `keys` (the configured master key) opens the backup
/// at `path`, checked read-only. A backup sealed under another key would
/// replace a working database with one the daemon refuses to start on.
pub fn check_backup_key(path: &Path, keys: &Keyring) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| invalid(path, format!("not an SQLite database ({e})")))?;
    masterkey::verify_readonly(&conn, keys).map_err(|e| match e {
        StoreError::WrongMasterKey {
            configured,
            sealed_with,
        } => invalid(
            path,
            format!(
                "the configured master key (id {configured}) does not open this backup (sealed with key id {sealed_with}); restore it with the master key it was written with (master_key_file, $CREDENTIALS_DIRECTORY/master.key or <state_dir>/master.key). Nothing was changed"
            ),
        ),
        other => other,
    })
}

/// Blocking: replaces the database at `db` with the backup at `backup`.
/// The caller must make sure no daemon uses `db` (hold the state-dir lock).
/// Refused, before anything is touched, unless `keys` opens the backup.
///
/// The current database is first checkpointed (so its WAL is folded in)
/// and kept as `<db>.before-restore-<now>`; the backup is copied next to
/// `db`, synced, and renamed over it, so `db` is always either the old or
/// the new database. Run as root, the new file gets the owner of the state
/// directory (the service's user).
pub fn restore(
    backup: &Path,
    db: &Path,
    now: UnixMs,
    keys: &Keyring,
) -> Result<RestoreReport, StoreError> {
    let check = check_backup(backup)?;
    check_backup_key(backup, keys)?;
    let previous = if db.exists() {
        // Folds a crashed daemon's WAL into the main file first; on close
        // SQLite removes the -wal and -shm files.
        let conn = Connection::open(db)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        conn.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
        let aside = sibling(db, &format!(".before-restore-{}", backup_stamp(now)));
        std::fs::rename(db, &aside)?;
        Some(aside)
    } else {
        None
    };
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(sibling(db, suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let staging = sibling(db, ".restoring");
    let _ = std::fs::remove_file(&staging);
    {
        let mut from = std::fs::File::open(backup)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()?;
    }
    if let Some(dir) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        match_owner(&staging, dir)?;
    }
    std::fs::rename(&staging, db)?;
    sync_parent(db)?;
    Ok(RestoreReport { check, previous })
}

/// Gives `path` the owner of `reference` when they differ (only root can,
/// and only root needs to: the service's files belong to its user).
fn match_owner(path: &Path, reference: &Path) -> Result<(), StoreError> {
    let want = std::fs::metadata(reference)?;
    let have = std::fs::metadata(path)?;
    if (want.uid(), want.gid()) != (have.uid(), have.gid()) {
        std::os::unix::fs::chown(path, Some(want.uid()), Some(want.gid()))?;
    }
    Ok(())
}

fn backup_stamp(now: UnixMs) -> String {
    backup_name(now)
        .trim_start_matches(PREFIX)
        .trim_end_matches(SUFFIX)
        .to_owned()
}

/// A rename is durable only once its directory is synced.
fn sync_parent(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::testutil::*;
    use super::super::SqliteStore;
    use super::*;
    use crate::domain::TenantState;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn names_sort_by_time() {
        assert_eq!(
            backup_name(UnixMs(1_700_000_000_123)),
            "pbx-tokend-20231114T221320123Z.db"
        );
        assert!(backup_name(UnixMs(1_700_000_000_123)) < backup_name(UnixMs(1_700_000_001_000)));
    }

    #[tokio::test]
    async fn backup_is_private_consistent_and_pruned() {
        let t = open_temp();
        insert_many(&t.store, 30).await;
        let dir = t.path.parent().unwrap().join("backups");
        let mut made = Vec::new();
        for i in 0..4 {
            let info = t
                .store
                .backup_into(&dir, T0.plus_ms(i * 1000), 3)
                .await
                .unwrap();
            assert!(info.bytes > 0);
            assert_eq!(mode(&info.path), 0o600);
            made.push(info);
        }
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(made[3].pruned, vec![made[0].path.clone()]);
        let left = list_backups(&dir).unwrap();
        assert_eq!(left.len(), 3);
        assert!(!left
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".partial")));
        let check = check_backup(&made[3].path).unwrap();
        assert_eq!(check.tenants, 30);
        assert_eq!(check.schema_version, migrate::latest_version());
        // Never overwrites.
        assert!(snapshot_file(&t.path, &made[3].path).is_err());
    }

    #[test]
    fn check_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        std::fs::write(&p, b"not a database at all, really not").unwrap();
        assert!(matches!(check_backup(&p), Err(StoreError::Backup(_))));
        assert!(matches!(
            check_backup(&dir.path().join("missing.db")),
            Err(StoreError::Backup(_))
        ));
    }

    #[tokio::test]
    async fn restore_replaces_and_keeps_the_old_database() {
        let t = open_temp();
        insert_many(&t.store, 5).await;
        let dir = t.path.parent().unwrap().join("backups");
        let info = t.store.backup_into(&dir, T0, 0).await.unwrap();
        t.store
            .insert_tenant(new_tenant("late", TenantState::Active))
            .await
            .unwrap();
        t.store.close().await.unwrap();

        let report = restore(&info.path, &t.path, T0.plus_ms(1), &t.keys).unwrap();
        assert_eq!(report.check.tenants, 5);
        let previous = report.previous.unwrap();
        assert!(previous.exists());
        assert_eq!(mode(&t.path), 0o600);
        let store = SqliteStore::open(&t.path, t.keys.clone()).unwrap();
        assert_eq!(store.load_cache().await.unwrap().len(), 5);
        assert!(store.get_tenant(&tid("late")).await.unwrap().is_none());
        store.close().await.unwrap();
        // The database that was replaced still has the late tenant.
        assert_eq!(check_backup(&previous).unwrap().tenants, 6);
    }

    #[tokio::test]
    async fn restore_of_a_backup_under_another_key_changes_nothing() {
        let t = open_temp();
        insert_many(&t.store, 3).await;
        t.store.check_master_key().await.unwrap();
        let dir = t.path.parent().unwrap().join("backups");
        let info = t.store.backup_into(&dir, T0, 0).await.unwrap();
        t.store
            .insert_tenant(new_tenant("late", TenantState::Active))
            .await
            .unwrap();
        t.store.close().await.unwrap();
        let before = std::fs::read(&t.path).unwrap();

        let other = crate::crypto::Keyring::ephemeral();
        let err = restore(&info.path, &t.path, T0.plus_ms(1), &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not open this backup"), "{err}");
        assert!(
            err.contains(&format!("{:08x}", t.keys.current_key_id())),
            "{err}"
        );
        assert_eq!(std::fs::read(&t.path).unwrap(), before);
        let siblings: Vec<_> = std::fs::read_dir(t.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("before-restore") || n.contains("restoring"))
            .collect();
        assert!(siblings.is_empty(), "{siblings:?}");

        // A backup without a check value is probed through its rows.
        t.raw().execute("DELETE FROM master_key_check", []).unwrap();
        let bare = t.path.parent().unwrap().join("bare.db");
        snapshot_file(&t.path, &bare).unwrap();
        assert!(check_backup_key(&bare, &other).is_err());
        check_backup_key(&bare, &t.keys).unwrap();
        // The right key restores.
        restore(&info.path, &t.path, T0.plus_ms(2), &t.keys).unwrap();
    }
}
