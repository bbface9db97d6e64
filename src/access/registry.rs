//! API clients: create (the key is returned once), list, revoke, and the
//! bootstrap admin key. Keeps the authentication table in memory: SHA-256 of
//! each active key -> its [`Caller`], replaced as a whole after every create
//! or revoke, so a revoked key fails on the very next call and a lookup
//! never touches SQLite.
//!
//! Why a hash-map lookup is a safe comparison: the map is keyed by the
//! SHA-256 of the presented key, so any timing difference in the lookup can
//! only tell an attacker about hashes of keys they already hold, never about
//! a stored key.
//!
//! Does not: know gRPC (api/auth.rs reads the metadata) or audit RPCs (the
//! API layer does; the bootstrap key is audited here because no RPC makes it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use super::TenantPattern;
use super::{
    generate_client_id, generate_key, hash_key, Caller, ClientInfo, KeyHash, Lapsed, Role,
};
use crate::audit::{self, Audit};
use crate::clock::SharedClock;
use crate::domain::ValidationError;
use crate::replicas::ReplicaConfirm;
use crate::secret::Secret;
use crate::store::{NewClientRow, Store, StoreError};

/// The bootstrap key's file name inside `state_dir`.
pub const ADMIN_KEY_FILE: &str = "admin.key";
/// Who created the bootstrap admin, in the client list and the audit log.
pub const BOOTSTRAP: &str = "bootstrap";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    InvalidArgument(#[from] ValidationError),
    #[error("API client {0} does not exist; see ListClients")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("cannot write the bootstrap admin key {}: {source}", .path.display())]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the admin key file {} is readable by other users (mode {mode:04o}) and cannot be made private (chmod 0600): {source}; fix its mode or remove it", .path.display())]
    KeyFileMode {
        path: PathBuf,
        mode: u32,
        source: std::io::Error,
    },
}

/// CreateClient input.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    /// `None` when the request left the role unspecified.
    pub role: Option<Role>,
    pub tenant_patterns: Vec<String>,
}

/// One snapshot of the active clients, indexed by key hash (authenticate)
/// and by client id (re-checking a caller authenticated earlier).
#[derive(Default)]
struct Table {
    by_key: HashMap<KeyHash, Arc<Caller>>,
    by_id: HashMap<String, Arc<Caller>>,
}

pub struct Clients {
    store: Store,
    clock: SharedClock,
    audit: Audit,
    /// Replaced whole (never mutated in place): readers clone the `Arc`
    /// under a read lock held for nanoseconds.
    table: RwLock<Arc<Table>>,
    /// Serialises reloads: two reloads finishing out of order must not put
    /// an older snapshot (with a revoked key) back.
    reloading: tokio::sync::Mutex<()>,
    /// Bumped after every reload, so open streams re-check their caller at
    /// once instead of waiting for their next message.
    changes: watch::Sender<u64>,
    confirm: std::sync::OnceLock<ReplicaConfirm>,
}

const MAX_NAME_LEN: usize = 128;
const MAX_PATTERNS: usize = 100;

impl Clients {
    /// Loads the active clients from the store.
    pub async fn load(store: Store, clock: SharedClock, audit: Audit) -> Result<Self, StoreError> {
        let clients = Self {
            store,
            clock,
            audit,
            table: RwLock::new(Arc::new(Table::default())),
            reloading: tokio::sync::Mutex::new(()),
            changes: watch::channel(0).0,
            confirm: std::sync::OnceLock::new(),
        };
        clients.reload().await?;
        Ok(clients)
    }

    /// The caller a presented key belongs to, if the key is active. The hot
    /// path: one SHA-256 and one map lookup, no SQLite, no allocation.
    pub fn authenticate(&self, key: &str) -> Option<Arc<Caller>> {
        let hash = hash_key(key);
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.by_key.get(&hash).cloned()
    }

    /// Number of active keys (tests, status).
    pub fn active_count(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// May `caller`, authenticated earlier (an open stream), still read
    /// `tenant` now? Looks at the current table only: a revoked client is
    /// gone from it, a changed client has its new patterns there. Peers of
    /// the local admin socket are not API clients and cannot be revoked.
    pub fn recheck(&self, caller: &Caller, tenant: &str) -> Result<(), Lapsed> {
        if caller.is_local_peer() {
            return Ok(());
        }
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        match table.by_id.get(&caller.client_id) {
            None => Err(Lapsed::Revoked),
            Some(now) if now.may_read(tenant) => Ok(()),
            Some(_) => Err(Lapsed::OutOfScope),
        }
    }

    /// Several replicas: a revoke returns once the others applied it
    /// (`crate::replicas`). Unset: nothing to wait for.
    pub fn set_confirm(&self, confirm: ReplicaConfirm) {
        let _ = self.confirm.set(confirm);
    }

    /// Changes whenever a client is created or revoked.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let rows = self.store.active_client_keys().await?;
        let mut table = Table {
            by_key: HashMap::with_capacity(rows.len()),
            by_id: HashMap::with_capacity(rows.len()),
        };
        for (hash, info) in rows {
            let patterns = info
                .tenant_patterns
                .iter()
                // Stored patterns were validated on the way in; a row that
                // fails now (edited by hand) simply matches nothing.
                .filter_map(|p| TenantPattern::parse(p).ok())
                .collect();
            let caller = Arc::new(Caller {
                client_id: info.client_id,
                role: info.role,
                patterns,
            });
            table.by_id.insert(caller.client_id.clone(), caller.clone());
            table.by_key.insert(hash, caller);
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Creates a client; the key in the answer is its only copy.
    pub async fn create(
        &self,
        created_by: &str,
        input: NewClient,
    ) -> Result<(ClientInfo, Secret<String>), ClientError> {
        let role = validate(&input)?;
        let key = generate_key()?;
        let info = ClientInfo {
            client_id: generate_client_id()?,
            name: input.name,
            role,
            tenant_patterns: input.tenant_patterns,
            created_at: self.clock.now(),
            created_by: created_by.to_owned(),
            revoked_at: None,
        };
        self.store
            .insert_client(NewClientRow {
                info: info.clone(),
                key_hash: hash_key(key.expose()),
            })
            .await?;
        self.reload().await?;
        tracing::info!(client = %info.client_id, role = info.role.as_str(), "API client created");
        Ok((info, key))
    }

    pub async fn list(&self) -> Result<Vec<ClientInfo>, ClientError> {
        Ok(self.store.list_clients().await?)
    }

    /// Revokes a client; its key fails from the next call on. Revoking a
    /// revoked client is a no-op.
    pub async fn revoke(&self, client_id: &str) -> Result<ClientInfo, ClientError> {
        let info = self
            .store
            .revoke_client(client_id, self.clock.now())
            .await?
            .ok_or_else(|| ClientError::NotFound(client_id.to_owned()))?;
        self.reload().await?;
        tracing::info!(client = %info.client_id, "API client revoked");
        if let Some(c) = self.confirm.get() {
            c.after_write(&format!("RevokeClient {}", info.client_id))
                .await;
        }
        Ok(info)
    }

    /// On a start with no active ADMIN client: creates one and writes its
    /// key to `<state_dir>/admin.key` (0600, the key alone on one line).
    /// Returns the file's path when it did. Logs only that it wrote it.
    pub async fn bootstrap_admin(&self, state_dir: &Path) -> Result<Option<PathBuf>, ClientError> {
        make_key_file_private(&state_dir.join(ADMIN_KEY_FILE))?;
        if self.store.has_active_admin().await? {
            return Ok(None);
        }
        let key = generate_key()?;
        let path = state_dir.join(ADMIN_KEY_FILE);
        // The file first: an admin row whose key nobody holds would lock the
        // operator out (a later start would see an admin and not bootstrap).
        write_key_file(&path, key.expose())?;
        let info = ClientInfo {
            client_id: generate_client_id()?,
            name: "bootstrap admin".into(),
            role: Role::Admin,
            tenant_patterns: Vec::new(),
            created_at: self.clock.now(),
            created_by: BOOTSTRAP.into(),
            revoked_at: None,
        };
        // Atomic cluster-wide: replicas starting together on an empty
        // database race here, and exactly one inserts; the others drop the
        // key file they wrote (its key was never stored).
        let inserted = self
            .store
            .insert_first_admin(NewClientRow {
                info: info.clone(),
                key_hash: hash_key(key.expose()),
            })
            .await;
        match inserted {
            Ok(true) => {}
            Ok(false) => {
                let _ = std::fs::remove_file(&path);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        }
        self.reload().await?;
        self.audit
            .record(
                BOOTSTRAP,
                audit::action::CLIENT_CREATE,
                None,
                audit::OK,
                &format!(
                    "bootstrap admin {} (key in {})",
                    info.client_id,
                    path.display()
                ),
            )
            .await;
        let systemd_dir = std::env::var("STATE_DIRECTORY").ok();
        tracing::warn!(
            path = %path.display(),
            client = %info.client_id,
            "no admin API client existed: wrote a bootstrap admin key; {}",
            cli_hint(state_dir, systemd_dir.as_deref())
        );
        Ok(Some(path))
    }
}

/// What to tell the operator about using the bootstrap key: pbx-tokenctl
/// looks in `./pbx-tokend-data`, `$STATE_DIRECTORY` (its own environment,
/// so only when the operator's shell sets it) and the packaged
/// `/var/lib/pbx-tokend`; anywhere else it must be told.
fn cli_hint(state_dir: &Path, systemd_dir: Option<&str>) -> &'static str {
    if state_dir == Path::new("/var/lib/pbx-tokend") {
        "pbx-tokenctl run as root on this host finds it with no flags"
    } else if state_dir == Path::new("pbx-tokend-data")
        || state_dir == Path::new("./pbx-tokend-data")
    {
        "pbx-tokenctl run from this working directory finds it with no flags"
    } else if systemd_dir.and_then(|s| s.split(':').next()) == state_dir.to_str() {
        "pbx-tokenctl finds it where STATE_DIRECTORY names this directory; elsewhere pass --admin-key-file with this path"
    } else {
        "pass it to pbx-tokenctl with --admin-key-file and this path, or its content in PBX_TOKEND_API_KEY"
    }
}

fn validate(input: &NewClient) -> Result<Role, ValidationError> {
    let name = input.name.as_str();
    if name.trim().is_empty() {
        return Err(ValidationError::new(
            "name",
            "is required (e.g. the service using the key)",
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            "name",
            format!("is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    let role = input.role.ok_or_else(|| {
        ValidationError::new(
            "role",
            "is required: CLIENT_ROLE_ADMIN or CLIENT_ROLE_READER",
        )
    })?;
    if input.tenant_patterns.len() > MAX_PATTERNS {
        return Err(ValidationError::new(
            "tenant_patterns",
            format!("at most {MAX_PATTERNS} patterns"),
        ));
    }
    for p in &input.tenant_patterns {
        TenantPattern::parse(p)?;
    }
    match role {
        Role::Admin if !input.tenant_patterns.is_empty() => Err(ValidationError::new(
            "tenant_patterns",
            "an ADMIN reaches every tenant; tenant patterns apply to READER clients only",
        )),
        Role::Reader if input.tenant_patterns.is_empty() => Err(ValidationError::new(
            "tenant_patterns",
            "a READER needs at least one pattern, e.g. \"acme-*\" (\"*\" for every tenant)",
        )),
        _ => Ok(role),
    }
}

/// An existing admin.key that group or others may read (copied with `cp`,
/// restored from an archive, chmod'ed by hand) is made 0600 with a warning:
/// fixing it beats refusing to start, since the key in it still works and
/// every minute it stays open is a minute another local user can read it.
/// Fails only when the mode cannot be changed.
fn make_key_file_private(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ClientError::KeyFileMode {
            path: path.to_owned(),
            mode,
            source,
        }
    })?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:04o}"),
        "the admin key file was readable by other users; changed its mode to 0600. Anyone who could read it may hold the key: revoke that client and delete the file if in doubt"
    );
    Ok(())
}

/// Writes `key` + newline as admin.key (see `statedir::replace_secret_file`).
fn write_key_file(path: &Path, key: &str) -> Result<(), ClientError> {
    let line = zeroize::Zeroizing::new(format!("{key}\n"));
    crate::statedir::replace_secret_file(path, line.as_bytes()).map_err(|source| {
        ClientError::KeyFile {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::clock::{ManualClock, UnixMs};
    use crate::crypto::Keyring;

    async fn clients(dir: &Path) -> (Clients, Store) {
        let store = Store::open(&dir.join("db"), Arc::new(Keyring::ephemeral())).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(UnixMs(1_700_000_000_000)));
        let audit = Audit::new(store.clone(), clock.clone());
        (
            Clients::load(store.clone(), clock, audit).await.unwrap(),
            store,
        )
    }

    fn reader(patterns: &[&str]) -> NewClient {
        NewClient {
            name: "svc".into(),
            role: Some(Role::Reader),
            tenant_patterns: patterns.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = clients(dir.path()).await;
        let (info, key) = c.create("cl_admin", reader(&["acme-*"])).await.unwrap();
        let caller = c.authenticate(key.expose()).unwrap();
        assert_eq!(caller.client_id, info.client_id);
        assert!(caller.may_read("acme-1") && !caller.may_read("other"));
        assert!(c.authenticate("ptk_unknown").is_none());
        assert_eq!(c.recheck(&caller, "acme-1"), Ok(()));
        assert_eq!(c.recheck(&caller, "other"), Err(Lapsed::OutOfScope));
        let mut changes = c.changes();
        changes.borrow_and_update();
        c.revoke(&info.client_id).await.unwrap();
        assert!(c.authenticate(key.expose()).is_none());
        // An earlier authenticated caller lapses, and watchers are told.
        assert!(changes.has_changed().unwrap());
        assert_eq!(c.recheck(&caller, "acme-1"), Err(Lapsed::Revoked));
        assert_eq!(c.recheck(&Caller::local_admin(0), "acme-1"), Ok(()));
        assert!(matches!(
            c.revoke("cl_nope").await,
            Err(ClientError::NotFound(_))
        ));
        let listed = c.list().await.unwrap();
        assert!(listed[0].revoked_at.is_some());
    }

    #[tokio::test]
    async fn role_and_pattern_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = clients(dir.path()).await;
        for bad in [
            reader(&[]),
            reader(&["a b"]),
            NewClient {
                role: None,
                ..reader(&["x"])
            },
            NewClient {
                role: Some(Role::Admin),
                ..reader(&["x"])
            },
            NewClient {
                name: " ".into(),
                ..reader(&["x"])
            },
        ] {
            assert!(matches!(
                c.create("x", bad).await,
                Err(ClientError::InvalidArgument(_))
            ));
        }
    }

    #[tokio::test]
    async fn bootstrap_writes_a_private_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let (c, store) = clients(dir.path()).await;
        let path = c.bootstrap_admin(dir.path()).await.unwrap().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("ptk_") && text.ends_with('\n'));
        assert_eq!(text.lines().count(), 1);
        let caller = c.authenticate(text.trim()).unwrap();
        assert!(caller.is_admin());
        // An admin exists now: no second key.
        assert!(c.bootstrap_admin(dir.path()).await.unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        let events = store
            .list_audit(crate::store::AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(!events[0].event.detail.contains(text.trim()));
    }

    #[tokio::test]
    async fn an_open_admin_key_file_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _store) = clients(dir.path()).await;
        let path = c.bootstrap_admin(dir.path()).await.unwrap().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(c.bootstrap_admin(dir.path()).await.unwrap().is_none());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Same key, still valid: only the mode changed.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
