//! Offline checks of the database a SIGKILL left behind, on a copy (the
//! database file and its WAL, as the next start would find them), so the
//! daemon's own crash recovery still sees the untouched files:
//! `PRAGMA integrity_check` and `foreign_key_check`, the rows every tenant
//! state needs, and every sealed value opened with the master key through
//! the library's own `Store` (tokens, trusted and public app secrets, the
//! secrets an onboarding flow holds).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use pbx_tokend::crypto::Keyring;
use pbx_tokend::domain::{TenantId, TenantState};
use pbx_tokend::store::Store;
use rusqlite::Connection;

/// What one copy of the database holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// tenant id -> (state, trusted client_id).
    pub tenants: HashMap<String, (TenantState, Option<String>)>,
    /// Onboarding flows by step.
    pub flows_by_step: BTreeMap<String, u64>,
    /// client_ids of new trusted apps held by flows (stored, not yet in use).
    pub held_by_flows: Vec<String>,
    /// Sealed values opened.
    pub opened: u64,
}

fn copy_db(db: &Path, scratch: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(scratch).unwrap();
    let target = scratch.join("copy.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
    }
    std::fs::copy(db, &target).unwrap();
    let wal = format!("{}-wal", db.display());
    if Path::new(&wal).exists() {
        std::fs::copy(&wal, format!("{}-wal", target.display())).unwrap();
    }
    target
}

fn sql_checks(path: &Path) -> Result<(), String> {
    let conn = Connection::open(path).map_err(|e| format!("open: {e}"))?;
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| format!("integrity_check: {e}"))?;
    if rows != ["ok"] {
        return Err(format!("integrity_check: {rows:?}"));
    }
    let fk: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .map_err(|e| format!("foreign_key_check: {e}"))?;
    if fk != 0 {
        return Err(format!("foreign_key_check: {fk} violations"));
    }
    // The rows each state needs.
    let checks = [
        (
            "a tenant past authorization without trusted credentials",
            "SELECT count(*) FROM tenants t WHERE t.state <> 'pending_authorization' \
             AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.tenant_id = t.tenant_id AND c.kind = 'trusted')",
        ),
        (
            "an active tenant without a token",
            "SELECT count(*) FROM tenants t WHERE t.state = 'active' \
             AND NOT EXISTS (SELECT 1 FROM tokens k WHERE k.tenant_id = t.tenant_id)",
        ),
        (
            "a renewing tenant without a renewal job",
            "SELECT count(*) FROM tenants t WHERE t.state IN ('active', 'renewal_failing', 'credentials_rejected') \
             AND NOT EXISTS (SELECT 1 FROM renewal_jobs j WHERE j.tenant_id = t.tenant_id)",
        ),
        (
            "a pending tenant without its public app",
            "SELECT count(*) FROM tenants t WHERE t.state = 'pending_authorization' \
             AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.tenant_id = t.tenant_id AND c.kind = 'public')",
        ),
    ];
    for (what, q) in checks {
        let n: i64 = conn
            .query_row(q, [], |r| r.get(0))
            .map_err(|e| format!("{what}: {e}"))?;
        if n != 0 {
            return Err(format!("{n} x {what}"));
        }
    }
    Ok(())
}

/// Copies the database of `state_dir`, checks it and opens every sealed
/// value. Err: what is wrong.
pub async fn check(state_dir: &Path, scratch: &Path) -> Result<Snapshot, String> {
    let db = state_dir.join("pbx-tokend.db");
    if !db.exists() {
        return Ok(Snapshot::default());
    }
    let copy = copy_db(&db, scratch);
    let c = copy.clone();
    tokio::task::spawn_blocking(move || sql_checks(&c))
        .await
        .unwrap()?;
    let key = state_dir.join("master.key");
    let (keyring, _) = Keyring::load_or_create(&key, false).map_err(|e| format!("key: {e}"))?;
    let store = tokio::task::spawn_blocking(move || Store::open(&copy, Arc::new(keyring)))
        .await
        .unwrap()
        .map_err(|e| format!("Store::open: {e}"))?;
    let result = open_everything(&store).await;
    let _ = store.close().await;
    result
}

async fn open_everything(store: &Store) -> Result<Snapshot, String> {
    let mut snap = Snapshot::default();
    // Every token, unsealed.
    let cached = store
        .load_cache()
        .await
        .map_err(|e| format!("load_cache: {e}"))?;
    snap.opened += cached.iter().filter(|c| c.token.is_some()).count() as u64;
    let mut after: Option<TenantId> = None;
    loop {
        let page = store
            .list_tenants(after.clone(), 1000, None)
            .await
            .map_err(|e| format!("list_tenants: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for t in page {
            let id = t.id.clone();
            let trusted = store
                .trusted_credentials(&id)
                .await
                .map_err(|e| format!("trusted credentials of {id}: {e}"))?;
            if let Some(app) = &trusted {
                snap.opened += 1;
                if Some(&app.client_id) != t.trusted_client_id.as_ref() {
                    return Err(format!(
                        "{id}: trusted client_id differs from the tenant row"
                    ));
                }
            }
            if store
                .public_credentials(&id)
                .await
                .map_err(|e| format!("public credentials of {id}: {e}"))?
                .is_some()
            {
                snap.opened += 1;
            }
            if let Some(flow) = store
                .flow_of(&id)
                .await
                .map_err(|e| format!("onboarding flow of {id}: {e}"))?
            {
                *snap
                    .flows_by_step
                    .entry(flow.step.as_str().to_owned())
                    .or_default() += 1;
                snap.opened +=
                    u64::from(flow.public_token.is_some()) + u64::from(flow.token.is_some());
                if let Some(app) = flow.app {
                    snap.opened += 1;
                    snap.held_by_flows.push(app.client_id);
                }
            }
            snap.tenants
                .insert(id.to_string(), (t.state, trusted.map(|a| a.client_id)));
        }
    }
    Ok(snap)
}
