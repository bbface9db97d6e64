//! Opening SQLite connections with the settings the daemon relies on, the
//! file-system preparation around them (directory 0700, files 0600), and the
//! tiny pool of read-only connections.
//!
//! Does not: run migrations (see `migrate.rs`) or any query of the schema.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// How long a statement waits for a lock held by another connection (the
/// writer checkpointing, another process) before it reports SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the parent directory (0700) when missing and the database file
/// itself (0600) before SQLite does: SQLite would create it with the umask
/// (often 0644), and its `-wal` and `-shm` files copy the main file's mode.
/// Existing files that are readable by others are tightened to 0600.
pub(super) fn prepare_location(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| failed("create the directory", parent, e))?;
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed("open for writing", path, e))?;
    for p in [
        path.to_owned(),
        sibling(path, "-wal"),
        sibling(path, "-shm"),
    ] {
        match std::fs::metadata(&p) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| failed("change the mode to 0600 of", &p, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("read the metadata of", &p, e)),
        }
    }
    Ok(())
}

/// An open-time failure naming the operation and the file, so a start-up
/// error reads "cannot open /x/pbx-tokend.db for writing: Read-only file
/// system" and the operator knows what to fix.
pub(super) fn failed(op: &'static str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    // "open for writing" reads better with the path in the middle.
    let (op, path) = match op {
        "open for writing" => ("open", format!("{} for writing", path.display())),
        "open for reading" => ("open", format!("{} for reading", path.display())),
        _ => (op, path.display().to_string()),
    };
    StoreError::Open {
        op,
        path: PathBuf::from(path),
        message: e.to_string(),
    }
}

/// `path` with `suffix` appended to the file name (`db` -> `db-wal`).
pub(super) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The one connection that writes.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed("open for writing", path, e))?;
    configure(&conn)?;
    // WAL: readers never block the writer and the writer never blocks
    // readers, and a commit is one sequential append.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| failed("set the WAL journal mode on", path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot switch the database to WAL mode (journal_mode is {mode})"
        )));
    }
    // FULL, not NORMAL: a trusted application's secret exists exactly once,
    // in the PBX's answer to the create call. It must be on disk (WAL fsynced
    // at every commit) before anything reports success, or a power cut
    // after "ok" would lose the tenant for good.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows (old sealed secrets and tokens) are overwritten with
    // zeros instead of lingering in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    Ok(conn)
}

/// A read-only connection: it can never write by mistake.
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed("open for reading", path, e))?;
    configure(&conn)?;
    Ok(conn)
}

/// Settings every connection gets, reader or writer.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Query planner stability: without it SQLite marks a cached statement
    // stale whenever a bound value it peeked at while planning is rebound,
    // e.g. the scheduler's `LIMIT ?3`, and compiles it again on the next
    // run: 29 % of the full-size simulation's CPU went to re-preparing the
    // scheduler's query (perf, docs/RELIABILITY.md). Our queries pin their
    // plans (CROSS JOIN, INDEXED BY), so a plan that ignores the values
    // loses nothing.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

/// Locks a std mutex, taking over a poisoned one. A panic while a
/// connection was held rolled its open transaction back (rusqlite's
/// `Transaction` rolls back on drop), so the connection is still sound.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn closed() -> StoreError {
    StoreError::Task("the store is closed".into())
}

/// A few read-only connections shared by the blocking tasks. A std `Mutex`
/// and `Condvar` (not tokio's): they are only ever taken inside
/// `spawn_blocking`, never held across an `.await`.
pub(super) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    available: Condvar,
    closed: AtomicBool,
}

impl ReadPool {
    pub(super) fn open(path: &Path, size: usize) -> Result<Self, StoreError> {
        let idle = (0..size)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            idle: Mutex::new(idle),
            available: Condvar::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// Runs `f` on an idle connection, waiting for one if all are busy
    /// (blocking: call from the blocking pool).
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let loan = Loan {
            pool: self,
            conn: self.take()?,
        };
        match loan.conn.as_ref() {
            Some(conn) => f(conn),
            None => Err(closed()),
        }
    }

    fn take(&self) -> Result<Option<Connection>, StoreError> {
        let mut idle = lock(&self.idle);
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(closed());
            }
            if let Some(conn) = idle.pop() {
                return Ok(Some(conn));
            }
            idle = self
                .available
                .wait(idle)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Closes the idle connections; busy ones close when they come back.
    pub(super) fn close(&self) -> Result<(), StoreError> {
        // Under the lock, so a loan coming back sees `closed` or is taken here.
        let conns: Vec<Connection> = {
            let mut idle = lock(&self.idle);
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *idle)
        };
        self.available.notify_all();
        for conn in conns {
            conn.close().map_err(|(_, e)| e)?;
        }
        Ok(())
    }
}

/// A reader on loan; goes back to the pool on drop, even if the query
/// panicked, so the pool never shrinks.
struct Loan<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = lock(&self.pool.idle);
            if !self.pool.closed.load(Ordering::Acquire) {
                idle.push(conn);
                self.pool.available.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::super::testutil::*;
    use super::super::SqliteStore;
    use super::*;
    use crate::crypto::Keyring;
    use crate::domain::TenantState;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn files_are_private_and_settings_hold() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        assert_eq!(mode(t.path.parent().unwrap()), 0o700);
        assert_eq!(mode(&t.path), 0o600);
        assert_eq!(mode(&sibling(&t.path, "-wal")), 0o600);
        assert_eq!(mode(&sibling(&t.path, "-shm")), 0o600);
        let settings = t
            .store
            .with_writer(|c, _| {
                let q = |sql: &str| -> Result<i64, StoreError> {
                    Ok(c.query_row(sql, [], |r| r.get(0))?)
                };
                let jm: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                Ok((
                    jm,
                    q("PRAGMA synchronous")?,
                    q("PRAGMA foreign_keys")?,
                    q("PRAGMA secure_delete")?,
                ))
            })
            .await
            .unwrap();
        // synchronous 2 = FULL.
        assert_eq!(settings, ("wal".to_string(), 2, 1, 1));
    }

    #[tokio::test]
    async fn loose_existing_file_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SqliteStore::open(&path, Arc::new(Keyring::ephemeral())).unwrap();
        assert_eq!(mode(&path), 0o600);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn closed_store_refuses_work_and_leaves_no_wal() {
        let t = open_temp();
        insert_many(&t.store, 10).await;
        let clone = t.store.clone();
        t.store.close().await.unwrap();
        assert!(matches!(
            clone.get_tenant(&tid("t000001")).await,
            Err(StoreError::Task(_))
        ));
        assert!(matches!(
            clone
                .delete_tenant(&tid("t000001"), crate::clock::UnixMs(1))
                .await,
            Err(StoreError::Task(_))
        ));
        // Closing twice is harmless.
        clone.close().await.unwrap();
        let wal = sibling(&t.path, "-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    }

    #[tokio::test]
    async fn maintenance_runs() {
        let t = open_temp();
        insert_many(&t.store, 50).await;
        t.store.optimize().await.unwrap();
        t.store.wal_checkpoint().await.unwrap();
        let wal = sibling(&t.path, "-wal");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        assert_eq!(t.store.load_cache().await.unwrap().len(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_and_writes() {
        let t = open_temp();
        insert_many(&t.store, 20).await;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let s = t.store.clone();
            tasks.push(tokio::spawn(async move {
                let id = tid(&format!("t{:06}", i % 20));
                if i % 2 == 0 {
                    s.reschedule(&id, T0.plus_ms(i)).await.unwrap();
                } else {
                    assert!(s.get_tenant(&id).await.unwrap().is_some());
                    s.list_tenants(None, 5, None).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
}
