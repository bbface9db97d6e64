//! The state directory: created 0700, and locked for as long as a daemon,
//! a `restore` or a `rotate-master-key` run uses it, so two daemons never
//! share a database and a key rotation never runs under a live daemon
//! (whose cache would still seal with the old key). The lock dies with the
//! process: a crash leaves nothing to clean up.
//!
//! The lock that counts is a `flock` on the directory itself: a lock file
//! can be deleted out from under a running daemon (and was: a second
//! daemon then started on the same database), the directory cannot while
//! the database lives in it. `<state_dir>/pbx-tokend.lock` is still locked
//! too, so older binaries (which only know the file) are kept out as well,
//! and it names the holder's pid for the refusal message.
//!
//! Also: the one way secret files (admin.key, a rotated master key) are
//! written, `replace_secret_file`.
//!
//! Does not: open the database or read keys.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

pub const LOCK_FILE: &str = "pbx-tokend.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create the state directory {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another pbx-tokend (daemon, restore or rotate-master-key{}) is using the state directory {} (it holds the lock on the directory and on {}/pbx-tokend.lock); stop it first", .holder.as_deref().map(|p| format!(", pid {p}")).unwrap_or_default(), .path.display(), .path.display())]
    Busy {
        path: PathBuf,
        /// The holder's pid as it wrote it into the lock file, when readable.
        holder: Option<String>,
    },
    #[error("cannot change the mode of the state directory {} to 0700: {source}", .path.display())]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open and lock {} (the state directory lock; it must be writable): {source}", .path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `contents` to a new 0600 file beside `path`, syncs it, renames it
/// over `path` (an old file is replaced atomically) and syncs the directory.
/// A failed write leaves no temporary file behind.
pub fn replace_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Held while the state directory is in use; unlocks on drop.
#[derive(Debug)]
pub struct StateLock {
    _dir: File,
    _file: File,
}

/// Creates `dir` (0700) if needed and tightens an existing one to 0700
/// (only when it is not already: a read-only directory then fails later,
/// naming the file that could not be written, not here).
pub fn create(dir: &Path) -> Result<(), StateDirError> {
    std::fs::create_dir_all(dir).map_err(|source| StateDirError::Create {
        path: dir.to_owned(),
        source,
    })?;
    let mode_err = |source| StateDirError::Mode {
        path: dir.to_owned(),
        source,
    };
    let mode = std::fs::metadata(dir)
        .map_err(mode_err)?
        .permissions()
        .mode();
    if mode & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(mode_err)?;
    }
    Ok(())
}

/// Takes the exclusive lock without waiting; `Busy` if someone holds it.
/// The directory first (the lock that cannot be deleted), then the lock
/// file (older binaries), then our pid into the file.
pub fn lock(dir: &Path) -> Result<StateLock, StateDirError> {
    let busy = || StateDirError::Busy {
        path: dir.to_owned(),
        holder: std::fs::read_to_string(dir.join(LOCK_FILE))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())),
    };
    let dir_err = |source| StateDirError::Lock {
        path: dir.to_owned(),
        source,
    };
    let dir_file = File::open(dir).map_err(dir_err)?;
    match flock(&dir_file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(busy()),
        Err(e) => return Err(dir_err(e.into())),
    }
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| StateDirError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lock_err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(busy()),
        Err(e) => return Err(lock_err(e.into())),
    }
    // Only a hint for the next one refused; failing to write it is harmless.
    {
        use std::io::Write;
        if file.set_len(0).is_ok() {
            let _ = writeln!(file, "{}", std::process::id());
        }
    }
    Ok(StateLock {
        _dir: dir_file,
        _file: file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let first = lock(&state).unwrap();
        assert!(matches!(lock(&state), Err(StateDirError::Busy { .. })));
        drop(first);
        assert!(lock(&state).is_ok());
    }

    #[test]
    fn deleting_the_lock_file_does_not_release_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create(&state).unwrap();
        let _first = lock(&state).unwrap();
        let pid = std::fs::read_to_string(state.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        std::fs::remove_file(state.join(LOCK_FILE)).unwrap();
        let err = lock(&state).unwrap_err();
        assert!(matches!(err, StateDirError::Busy { .. }), "{err}");
        assert!(
            err.to_string().contains(&state.display().to_string()),
            "{err}"
        );
    }
}
