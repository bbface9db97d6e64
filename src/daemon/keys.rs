//! The master key for the daemon: where it lives (explicit file, systemd
//! credential, or next to the database) and loading or generating it, so
//! a lost key is never silently replaced. Split from `daemon.rs`.

use std::path::PathBuf;

use super::DaemonError;
use crate::config::Config;
use crate::crypto::Keyring;

/// Where the master key is, and whether the daemon may generate it there:
/// explicit file, systemd credential, or generated next to the database
/// (with a warning: it then sits beside what it protects).
pub fn master_key_location(config: &Config) -> (PathBuf, bool) {
    if let Some(path) = &config.master_key_file {
        return (path.clone(), false);
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        return (PathBuf::from(dir).join("master.key"), false);
    }
    (config.state_dir.join("master.key"), true)
}

pub fn load_keyring(config: &Config) -> Result<Keyring, DaemonError> {
    let (path, may_create) = master_key_location(config);
    // Never replace a lost key with a new one while the database holds
    // values sealed under the old one: refuse, so the operator restores it.
    if may_create && !path.exists() && crate::store::has_sealed_data(&config.database_path())? {
        return Err(DaemonError::MasterKeyMissing {
            key: path,
            database: config.database_path(),
        });
    }
    let (keyring, created) =
        Keyring::load_or_create(&path, may_create).map_err(|source| DaemonError::MasterKey {
            path: path.clone(),
            source,
        })?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "generated a new master key next to the database; for production keep it elsewhere (master_key_file, or systemd LoadCredential=master.key)"
        );
    }
    Ok(keyring)
}
