//! The `[store]` section: which storage backend holds the daemon's state
//! (`sqlite`, the embedded default for one node, or `postgres`, shared by
//! several replicas), where PostgreSQL is, and the file its password is
//! read from. Defaults, validation (called from `Config::validate`) and
//! reading the password file (at start-up, with the same owner-only mode
//! rule as the master key file).
//!
//! A password inside `postgres_url` is refused: URLs end up in logs,
//! process listings, unit files, shell history and `check-config` output,
//! while a password file (or a systemd credential) is read by this process
//! alone.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError};
use crate::secret::Secret;

/// Where the state lives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// `<state_dir>/pbx-tokend.db`: one node, zero set-up.
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by every replica.
    Postgres,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// libpq URL (several hosts allowed), without a password.
    pub postgres_url: Option<String>,
    /// File holding the PostgreSQL password (one line; mode 0600 or 0400).
    pub postgres_password_file: Option<PathBuf>,
}

/// The longest password file read (a password, not a document).
const MAX_PASSWORD_FILE: u64 = 4096;

/// Whether a PostgreSQL URL or key=value string carries a password.
pub fn has_password(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("postgresql://")
        .or_else(|| lower.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return true;
            }
        }
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        return query.split('&').any(|p| p.starts_with("password="));
    }
    lower
        .split_whitespace()
        .any(|p| p.starts_with("password=") || p.starts_with("password ="))
}

impl Config {
    /// The `[store]` rules.
    pub(super) fn validate_store(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let s = &self.store;
        let url = s.postgres_url.as_deref().filter(|u| !u.trim().is_empty());
        if let Some(url) = url {
            if has_password(url) {
                return Err(bad(
                    "store.postgres_url",
                    "holds a password: URLs end up in logs, process listings, unit files and shell history. Remove it from the URL and put it, alone on one line, in a file named by store.postgres_password_file (mode 0600, or a systemd credential)".into(),
                ));
            }
        }
        if s.backend == StoreBackend::Postgres && url.is_none() {
            return Err(bad(
                "store.postgres_url",
                "is required with store.backend = \"postgres\": set it (or PBX_TOKEND_STORE_POSTGRES_URL) to a URL such as postgresql://pbx@db1:5432,db2:5432/pbxtokend?target_session_attrs=read-write".into(),
            ));
        }
        if matches!(&s.postgres_password_file, Some(p) if p.as_os_str().is_empty()) {
            return Err(bad(
                "store.postgres_password_file",
                "is empty: name the file holding the password, or leave the key out".into(),
            ));
        }
        Ok(())
    }
}

impl StoreConfig {
    /// The password from `postgres_password_file`, if set: the file must be
    /// a regular file readable by its owner only; one trailing newline is
    /// dropped. Errors name the key and the file, never the content.
    pub fn read_password(&self) -> Result<Option<Secret<String>>, ConfigError> {
        let Some(path) = &self.postgres_password_file else {
            return Ok(None);
        };
        read_password_file(path).map(Some)
    }
}

fn read_password_file(path: &Path) -> Result<Secret<String>, ConfigError> {
    read_secret_file(path, "store.postgres_password_file", "password")
}

/// A one-line secret from the file named by config key `key`: the file
/// must be a regular file readable by its owner only; one trailing newline
/// is dropped. `what` names the secret in messages ("password"). Errors
/// name the key and the file, never the content. Shared by every
/// `*_file` secret key so they keep one rule.
pub(super) fn read_secret_file(
    path: &Path,
    key: &str,
    what: &str,
) -> Result<Secret<String>, ConfigError> {
    let bad = |message: String| ConfigError::Invalid {
        key: key.into(),
        message: format!("{}: {message}", path.display()),
    };
    let mut file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    // The opened file itself, not the path again (no race with a swap).
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("is not a regular file".into()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "has mode {mode:04o}; it holds a {what}, so only its owner may read it: chmod 600 {}",
            path.display()
        )));
    }
    if meta.len() > MAX_PASSWORD_FILE {
        return Err(bad(format!(
            "holds {} bytes; expected the {what} alone on one line",
            meta.len()
        )));
    }
    let mut raw = Vec::new();
    Read::by_ref(&mut file)
        .take(MAX_PASSWORD_FILE + 1)
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let text = match String::from_utf8(raw) {
        Ok(t) => Secret::new(t),
        Err(e) => {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            return Err(bad("is not UTF-8 text".into()));
        }
    };
    let password = text
        .expose()
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(text.expose());
    if password.is_empty() || password.contains('\n') {
        return Err(bad(format!(
            "must hold the {what} alone on one line (it is empty or has several lines)"
        )));
    }
    Ok(Secret::new(password.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::tests::env;
    use super::*;

    #[test]
    fn backend_and_url_from_env_and_the_rules() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Sqlite);
        let c = Config::load_with_env(
            None,
            env(&[
                ("PBX_TOKEND_STORE_BACKEND", "postgres"),
                (
                    "PBX_TOKEND_STORE_POSTGRES_URL",
                    "postgresql://pbx@db1:5432,db2:5432/pbx?target_session_attrs=read-write",
                ),
                (
                    "PBX_TOKEND_STORE_POSTGRES_PASSWORD_FILE",
                    "/run/pg.password",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.store.backend, StoreBackend::Postgres);
        assert_eq!(
            c.store.postgres_password_file.as_deref(),
            Some(Path::new("/run/pg.password"))
        );

        let err = Config::load_with_env(None, env(&[("PBX_TOKEND_STORE_BACKEND", "postgres")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store.postgres_url") && err.contains("required"),
            "{err}"
        );

        for url in [
            "postgresql://pbx:hunter2@db1/pbx",
            "postgres://pbx@db1/pbx?password=hunter2",
            "host=db1 user=pbx password=hunter2",
        ] {
            let err = Config::load_with_env(None, env(&[("PBX_TOKEND_STORE_POSTGRES_URL", url)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("store.postgres_url") && err.contains("password"),
                "{err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }

        let err = Config::from_toml_str("[store]\nbackend = \"mysql\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqlite") && err.contains("postgres"), "{err}");
    }

    #[test]
    fn password_file_is_read_once_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.password");
        std::fs::write(&path, "s3cret-pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = StoreConfig {
            postgres_password_file: Some(path.clone()),
            ..StoreConfig::default()
        };
        assert_eq!(cfg.read_password().unwrap().unwrap().expose(), "s3cret-pw");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = cfg.read_password().unwrap_err().to_string();
        assert!(
            err.contains("store.postgres_password_file") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");

        std::fs::write(&path, "\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(cfg
            .read_password()
            .unwrap_err()
            .to_string()
            .contains("alone on one line"));
        assert!(StoreConfig::default().read_password().unwrap().is_none());
    }
}
