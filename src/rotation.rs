//! `pbx-tokend rotate-master-key --new-key-file FILE`: re-seals every sealed
//! value under a new master key, with the daemon stopped.
//!
//! Procedure (README "Rotating the master key"): stop the daemon; run the
//! command; it locks the state directory (refusing while a daemon runs),
//! opens the database with a keyring holding the new key (current) and the
//! old one (retired), proves the old key opens the database, re-seals every
//! value in ONE transaction (with an audit event), and then:
//! - when the key is the daemon-managed `<state_dir>/master.key`, keeps the
//!   old key as `master.key.retired-<id>` and installs the new one;
//! - otherwise (master_key_file, systemd credential) says which file to
//!   replace with the new key; the old file is needed until that is done.
//!
//! Until the transaction commits, only the old key opens the database; after,
//! only the new one. A crash between the commit and installing the key file
//! leaves a daemon that refuses to start naming both key ids; running the
//! command again with the same new key finishes the job (it is idempotent).
//!
//! Does not: read keys from argv or the environment, or run beside a daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::{self, Audit};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::{key_id, CryptoError, Keyring, KEY_LEN};
use crate::daemon::master_key_location;
use crate::statedir::{self, StateDirError};
use crate::store::{SqliteStore, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("current master key {}: {source}", .path.display())]
    CurrentKey { path: PathBuf, source: CryptoError },
    #[error("new master key {}: {source}", .path.display())]
    NewKey { path: PathBuf, source: CryptoError },
    #[error("the new key {} is the key already in use (id {id:08x}); generate a new one, e.g. `head -c 32 /dev/urandom > new.key && chmod 600 new.key`", .path.display())]
    SameKey { path: PathBuf, id: u32 },
    #[error("there is no database at {}; nothing to rotate", .0.display())]
    NoDatabase(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("re-sealed under the new key, but installing it as {} failed: {source}. Copy the new key file there (mode 0600) before starting the daemon", .path.display())]
    Install {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub old_key_id: u32,
    pub new_key_id: u32,
    pub resealed: u64,
    /// Where the daemon reads its key from.
    pub key_path: PathBuf,
    /// Whether the new key was installed there (daemon-managed key file).
    pub installed: bool,
    /// Where the old key was kept, when installed.
    pub retired_copy: Option<PathBuf>,
}

pub async fn rotate_master_key(
    config: &Config,
    new_key_file: &Path,
    clock: SharedClock,
) -> Result<Rotated, RotationError> {
    let _lock = statedir::lock(&config.state_dir)?;
    let (key_path, managed) = master_key_location(config);
    let old = Keyring::read_key_file(&key_path).map_err(|source| RotationError::CurrentKey {
        path: key_path.clone(),
        source,
    })?;
    let new = Keyring::read_key_file(new_key_file).map_err(|source| RotationError::NewKey {
        path: new_key_file.to_owned(),
        source,
    })?;
    let (old_id, new_id) = (key_id(&old), key_id(&new));
    if old_id == new_id {
        return Err(RotationError::SameKey {
            path: new_key_file.to_owned(),
            id: new_id,
        });
    }
    let db = config.database_path();
    if !db.exists() {
        return Err(RotationError::NoDatabase(db));
    }
    let mut ring = Keyring::from_key(&new);
    ring.add_retired_key(&old);
    let sqlite = SqliteStore::open(&db, Arc::new(ring))?;
    let store = Store::new(sqlite.clone());
    // Proves one of the two keys opens the database before touching it
    // (the new one does when re-running after an interrupted rotation).
    let report = match store.check_master_key().await {
        Ok(_) => {
            let audit = Audit::new(store.clone(), clock);
            let event = audit.event(
                "cli",
                audit::action::MASTER_KEY_ROTATE,
                None,
                audit::OK,
                &format!("from key {old_id:08x} to key {new_id:08x}"),
            );
            sqlite.reseal_all(event).await
        }
        Err(e) => Err(e),
    };
    store.close().await?;
    let resealed = report?.resealed;
    let mut rotated = Rotated {
        old_key_id: old_id,
        new_key_id: new_id,
        resealed,
        key_path: key_path.clone(),
        installed: false,
        retired_copy: None,
    };
    if managed {
        let retired = key_path.with_file_name(format!(
            "{}.retired-{old_id:08x}",
            key_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "master.key".into())
        ));
        let install = |path: &Path, source| RotationError::Install {
            path: path.to_owned(),
            source,
        };
        write_key(&retired, &old).map_err(|e| install(&retired, e))?;
        write_key(&key_path, &new).map_err(|e| install(&key_path, e))?;
        rotated.installed = true;
        rotated.retired_copy = Some(retired);
    }
    Ok(rotated)
}

/// Writes a key as hex (see `statedir::replace_secret_file`).
fn write_key(path: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<()> {
    let mut text = zeroize::Zeroizing::new(hex::encode(key));
    text.push('\n');
    statedir::replace_secret_file(path, text.as_bytes())
}
