//! `pbx-tokend migrate-store --config FILE --to-postgres URL
//! [--password-file FILE]`: moves a single node's SQLite state into an
//! empty PostgreSQL database, with the daemon stopped, so replicas can
//! start on it (README "Running several replicas").
//!
//! It locks the state directory (refused while a daemon runs), loads the
//! configured master key (the replicas must use the same one), reads the
//! password from `--password-file` or `[store] postgres_password_file`
//! (never from the URL: refused there, as in the config), and lets
//! `store::sqlite_to_postgres` copy and verify. The SQLite file is left as
//! it was: after checking the replicas, the operator switches the config
//! to `backend = "postgres"`.
//!
//! Does not: switch the config, or delete the SQLite state.

use std::path::Path;
use std::sync::Arc;

use crate::config::{has_password, Config, ConfigError, StoreBackend};
use crate::daemon::{load_keyring, DaemonError};
use crate::statedir::{self, StateDirError};
use crate::store::{sqlite_to_postgres, CopyReport, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MigrateStoreError {
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] DaemonError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies the configured SQLite state into the database at `url`.
pub async fn migrate_store(
    config: &Config,
    url: &str,
    password_file: Option<&Path>,
) -> Result<CopyReport, MigrateStoreError> {
    if config.store.backend != StoreBackend::Sqlite {
        return Err(MigrateStoreError::Usage(
            "migrate-store copies the SQLite state of a config with store.backend = \"sqlite\" (the source); this config already uses PostgreSQL".into(),
        ));
    }
    if url.trim().is_empty() {
        return Err(MigrateStoreError::Usage(
            "--to-postgres needs a URL such as postgresql://pbx@db1:5432/pbxtokend".into(),
        ));
    }
    if has_password(url) {
        return Err(MigrateStoreError::Usage(
            "the --to-postgres URL holds a password: URLs end up in process listings and shell history. Remove it and give --password-file FILE (mode 0600) or [store] postgres_password_file".into(),
        ));
    }
    let _lock = statedir::lock(&config.state_dir)?;
    let db = config.database_path();
    if !db.exists() {
        return Err(MigrateStoreError::Usage(format!(
            "there is no SQLite database at {}; nothing to migrate (check state_dir)",
            db.display()
        )));
    }
    let keys = Arc::new(load_keyring(config)?);
    let mut store_config = config.store.clone();
    if let Some(p) = password_file {
        store_config.postgres_password_file = Some(p.to_owned());
    }
    let password = store_config.read_password()?;
    Ok(sqlite_to_postgres(&db, keys, url, password.as_ref()).await?)
}
