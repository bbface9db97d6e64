//! The state-directory lock: a running daemon holds an exclusive `flock` on
//! `<state_dir>/pbx-tokend.lock` for its whole life. A second daemon on the
//! same directory refuses to start, and `pbx-tokend restore` refuses to
//! replace the database under a running daemon.
//!
//! Why `flock` and not a pid file: the kernel drops the lock when the
//! process dies, however it dies, so a `kill -9` never leaves a stale lock
//! that an operator must delete by hand.
//!
//! Does not: protect against a second daemon on another machine sharing
//! the directory over a network file system (flock there is unreliable).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "pbx-tokend.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another pbx-tokend holds {path} (pid {holder}); stop it first (systemctl stop pbx-tokend)"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held while alive; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock without waiting. The file records the holder's pid,
    /// for the message another process shows.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
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
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "unknown".into());
                return Err(LockError::Held { path, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        // Made by root (`pbx-tokend restore` before the service ever ran),
        // it would lock the service's own user out: give it the directory's
        // owner.
        let dir = std::fs::metadata(state_dir).map_err(io)?;
        let own = file.metadata().map_err(io)?;
        if (dir.uid(), dir.gid()) != (own.uid(), own.gid()) {
            std::os::unix::fs::fchown(&file, Some(dir.uid()), Some(dir.gid())).map_err(io)?;
        }
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LockError::Held { .. }));
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(first);
        let again = StateLock::acquire(dir.path()).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }
}
