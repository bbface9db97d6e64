//! Where the daemon's master key comes from, and when it may make one: an
//! explicit `master_key_file`, the systemd credential
//! `$CREDENTIALS_DIRECTORY/master.key`, or a key generated once next to the
//! database (development only, with a warning).
//!
//! Why the credential can be *required*: a systemd older than 247 ignores
//! `LoadCredential=` (with only a warning in its own log), so the unit's
//! key never arrives. Falling back to generating one would then either stop
//! at the sealed database (after an upgrade) or, on a fresh install,
//! silently put the only key beside what it protects. The unit sets
//! `require_master_key_credential`, and the start refuses instead.

use std::path::{Path, PathBuf};

use super::DaemonError;
use crate::config::Config;
use crate::crypto::Keyring;

/// `$CREDENTIALS_DIRECTORY`, when systemd set it (an empty value counts as
/// unset: it names no directory).
fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Where the master key is, and whether the daemon may generate it there:
/// explicit file, systemd credential, or generated next to the database
/// (with a warning: it then sits beside what it protects).
pub fn master_key_location(config: &Config) -> (PathBuf, bool) {
    location(config, credentials_directory().as_deref())
}

fn location(config: &Config, credentials: Option<&Path>) -> (PathBuf, bool) {
    if let Some(path) = &config.master_key_file {
        return (path.clone(), false);
    }
    if let Some(dir) = credentials {
        return (dir.join("master.key"), false);
    }
    (config.state_dir.join("master.key"), true)
}

/// Opens (or, where allowed, creates) the master key for a start.
pub fn load_keyring(config: &Config) -> Result<Keyring, DaemonError> {
    load(config, credentials_directory().as_deref())
}

fn load(config: &Config, credentials: Option<&Path>) -> Result<Keyring, DaemonError> {
    if config.require_master_key_credential && credentials.is_none() {
        return Err(DaemonError::MasterKeyCredentialMissing);
    }
    let (path, may_create) = location(config, credentials);
    // Never replace a lost key with a new one while the database holds
    // values sealed under the old one: refuse, so the operator restores it.
    if may_create && !path.exists() && crate::store::has_sealed_data(&config.database_path())? {
        return Err(DaemonError::MasterKeyMissing {
            key: path,
            database: config.database_path(),
        });
    }
    let (keyring, created) =
        Keyring::load_or_create(&path, may_create).map_err(|error| DaemonError::MasterKey {
            path: path.clone(),
            error,
        })?;
    if created {
        tracing::warn!(
            path = %path.display(),
            "generated a new master key next to the database; for production keep it elsewhere (master_key_file, or systemd LoadCredential=master.key)"
        );
    }
    Ok(keyring)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path, required: bool) -> Config {
        Config {
            state_dir: dir.join("state"),
            require_master_key_credential: required,
            ..Config::default()
        }
    }

    #[test]
    fn required_credential_missing_refuses_and_generates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), true);
        std::fs::create_dir_all(&c.state_dir).unwrap();
        let err = load(&c, None).err().unwrap().to_string();
        assert!(err.contains("CREDENTIALS_DIRECTORY"), "{err}");
        assert!(err.contains("247"), "{err}");
        assert!(err.contains("require_master_key_credential"), "{err}");
        assert!(!c.state_dir.join("master.key").exists());
    }

    #[test]
    fn required_credential_present_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir_all(&creds).unwrap();
        let key = creds.join("master.key");
        std::fs::write(&key, hex::encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        let c = config(dir.path(), true);
        assert_eq!(location(&c, Some(&creds)), (key, false));
        load(&c, Some(&creds)).unwrap();
        assert!(!c.state_dir.join("master.key").exists());
    }

    #[test]
    fn without_the_requirement_a_development_key_is_generated() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), false);
        std::fs::create_dir_all(&c.state_dir).unwrap();
        load(&c, None).unwrap();
        assert!(c.state_dir.join("master.key").exists());
    }
}
