//! The `api_clients` table: callers of the gRPC API with their role, tenant
//! patterns and the SHA-256 of their key (never the key). Revoking sets
//! `revoked_at`; rows are kept so the audit log's client ids stay readable.
//!
//! Does not: generate keys, match patterns or authenticate (`access` does).

use async_trait::async_trait;

use crate::store::ClientRepo;
use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;
use super::{NewClientRow, SqliteStore};
use crate::clock::UnixMs;
use crate::domain::clients::{ClientInfo, KeyHash, Role};

#[async_trait]
impl ClientRepo for SqliteStore {
    /// Inserts a client. `Sqlite` (constraint) if the id or hash is taken.
    async fn insert_client(&self, row: NewClientRow) -> Result<(), StoreError> {
        self.write(move |tx, _| insert(tx, &row)).await
    }

    /// Every client, oldest first (revoked ones included).
    async fn list_clients(&self) -> Result<Vec<ClientInfo>, StoreError> {
        self.read(|conn, _| list(conn)).await
    }

    /// Clients that are not revoked, with their key hashes.
    async fn active_client_keys(&self) -> Result<Vec<(KeyHash, ClientInfo)>, StoreError> {
        // From the writer: right after a create or revoke commits, the
        // cache reload must see it (a reader could lag a snapshot behind).
        self.with_writer(|conn, _| active_keys(conn)).await
    }

    /// Marks the client revoked; `None` if there is no such client.
    async fn revoke_client(
        &self,
        client_id: &str,
        now: UnixMs,
    ) -> Result<Option<ClientInfo>, StoreError> {
        let id = client_id.to_owned();
        self.write(move |tx, _| revoke(tx, &id, now)).await
    }

    async fn has_active_admin(&self) -> Result<bool, StoreError> {
        self.with_writer(|conn, _| has_active_admin(conn)).await
    }

    /// The check and the insert in one write transaction (the one writer).
    async fn insert_first_admin(&self, row: NewClientRow) -> Result<bool, StoreError> {
        self.write(move |tx, _| {
            if has_active_admin(tx)? {
                return Ok(false);
            }
            insert(tx, &row)?;
            Ok(true)
        })
        .await
    }
}

fn insert(tx: &Connection, row: &NewClientRow) -> Result<(), StoreError> {
    let patterns = serde_json::to_string(&row.info.tenant_patterns)
        .map_err(|e| StoreError::Corrupt(format!("tenant patterns: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO api_clients (client_id, name, role, tenant_patterns, key_hash, \
             created_at, created_by, revoked_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.info.client_id,
        row.info.name,
        row.info.role.as_str(),
        patterns,
        row.key_hash.as_slice(),
        row.info.created_at.0,
        row.info.created_by,
        row.info.revoked_at.map(|t| t.0),
    ])?;
    Ok(())
}

const COLUMNS: &str =
    "client_id, name, role, tenant_patterns, created_at, created_by, revoked_at, key_hash";

fn row_to_info(r: &rusqlite::Row<'_>) -> Result<(ClientInfo, Vec<u8>), StoreError> {
    let client_id: String = r.get(0)?;
    let role: String = r.get(2)?;
    let patterns: String = r.get(3)?;
    let role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("client {client_id}: role {role:?}")))?;
    let tenant_patterns: Vec<String> = serde_json::from_str(&patterns)
        .map_err(|e| StoreError::Corrupt(format!("client {client_id}: tenant_patterns: {e}")))?;
    let info = ClientInfo {
        name: r.get(1)?,
        role,
        tenant_patterns,
        created_at: UnixMs(r.get(4)?),
        created_by: r.get(5)?,
        revoked_at: r.get::<_, Option<i64>>(6)?.map(UnixMs),
        client_id,
    };
    Ok((info, r.get(7)?))
}

/// Every client, oldest first.
fn list(conn: &Connection) -> Result<Vec<ClientInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_clients ORDER BY created_at, client_id"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(row_to_info(r)?.0);
    }
    Ok(out)
}

/// Clients that are not revoked, with their key hashes (the auth table).
fn active_keys(conn: &Connection) -> Result<Vec<(KeyHash, ClientInfo)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_clients WHERE revoked_at IS NULL"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let (info, hash) = row_to_info(r)?;
        let hash: KeyHash = hash.as_slice().try_into().map_err(|_| {
            StoreError::Corrupt(format!("client {}: key_hash length", info.client_id))
        })?;
        out.push((hash, info));
    }
    Ok(out)
}

/// Sets `revoked_at` (kept if already set). `None` if there is no such client.
fn revoke(tx: &Connection, client_id: &str, now: UnixMs) -> Result<Option<ClientInfo>, StoreError> {
    let changed = tx
        .prepare_cached(
            "UPDATE api_clients SET revoked_at = coalesce(revoked_at, ?2) WHERE client_id = ?1",
        )?
        .execute(params![client_id, now.0])?;
    if changed == 0 {
        return Ok(None);
    }
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_clients WHERE client_id = ?1"
    ))?
    .query_row([client_id], |r| Ok(row_to_info(r)))
    .optional()?
    .transpose()
    .map(|o| o.map(|(info, _)| info))
}

/// Whether any ADMIN client is not revoked (bootstrap decides on this).
fn has_active_admin(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM api_clients WHERE role = 'admin' AND revoked_at IS NULL)",
        )?
        .query_row([], |r| r.get(0))?)
}
