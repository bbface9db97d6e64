//! The `api_clients` table on PostgreSQL: callers of the gRPC API with
//! their role, tenant patterns and the SHA-256 of their key (never the
//! key). Revoking sets `revoked_at`; rows are kept for the audit log.
//!
//! Does not: generate keys, match patterns or authenticate (`access` does).

use async_trait::async_trait;
use tokio_postgres::Row;

use super::{execute, query, query_one, query_opt, PgStore};
use crate::clock::UnixMs;
use crate::domain::clients::{ClientInfo, KeyHash, Role};
use crate::store::{ClientRepo, NewClientRow, StoreError};

const COLUMNS: &str =
    "client_id, name, role, tenant_patterns, created_at, created_by, revoked_at, key_hash";

fn row_to_info(r: &Row) -> Result<(ClientInfo, Vec<u8>), StoreError> {
    let client_id: String = r.try_get(0)?;
    let role: String = r.try_get(2)?;
    let patterns: String = r.try_get(3)?;
    let role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("client {client_id}: role {role:?}")))?;
    let tenant_patterns: Vec<String> = serde_json::from_str(&patterns)
        .map_err(|e| StoreError::Corrupt(format!("client {client_id}: tenant_patterns: {e}")))?;
    let info = ClientInfo {
        name: r.try_get(1)?,
        role,
        tenant_patterns,
        created_at: UnixMs(r.try_get(4)?),
        created_by: r.try_get(5)?,
        revoked_at: r.try_get::<_, Option<i64>>(6)?.map(UnixMs),
        client_id,
    };
    Ok((info, r.try_get(7)?))
}

#[async_trait]
impl ClientRepo for PgStore {
    async fn insert_client(&self, row: NewClientRow) -> Result<(), StoreError> {
        self.write(move |tx, _| Box::pin(async move { insert(tx, &row).await }))
            .await
    }

    /// Under a transaction-level advisory lock, so replicas starting
    /// together on an empty database see each other's admin: exactly one
    /// inserts.
    async fn insert_first_admin(&self, row: NewClientRow) -> Result<bool, StoreError> {
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&BOOTSTRAP_LOCK]).await?;
                let exists: bool = query_one(tx, ACTIVE_ADMIN_EXISTS, &[]).await?.try_get(0)?;
                if exists {
                    return Ok(false);
                }
                insert(tx, &row).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn list_clients(&self) -> Result<Vec<ClientInfo>, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                query(
                    tx,
                    &format!("SELECT {COLUMNS} FROM api_clients ORDER BY created_at, client_id"),
                    &[],
                )
                .await?
                .iter()
                .map(|r| Ok(row_to_info(r)?.0))
                .collect()
            })
        })
        .await
    }

    /// Read in a transaction of its own after the create or revoke
    /// committed, so it always reflects them.
    async fn active_client_keys(&self) -> Result<Vec<(KeyHash, ClientInfo)>, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move {
                query(
                    tx,
                    &format!("SELECT {COLUMNS} FROM api_clients WHERE revoked_at IS NULL"),
                    &[],
                )
                .await?
                .iter()
                .map(|r| {
                    let (info, hash) = row_to_info(r)?;
                    let hash: KeyHash = hash.as_slice().try_into().map_err(|_| {
                        StoreError::Corrupt(format!("client {}: key_hash length", info.client_id))
                    })?;
                    Ok((hash, info))
                })
                .collect()
            })
        })
        .await
    }

    async fn revoke_client(
        &self,
        client_id: &str,
        now: UnixMs,
    ) -> Result<Option<ClientInfo>, StoreError> {
        let id = client_id.to_owned();
        self.write(move |tx, _| {
            Box::pin(async move {
                let row = query_opt(
                    tx,
                    &format!(
                        "UPDATE api_clients SET revoked_at = coalesce(revoked_at, $2) \
                         WHERE client_id = $1 RETURNING {COLUMNS}"
                    ),
                    &[&id, &now.0],
                )
                .await?;
                row.map(|r| Ok(row_to_info(&r)?.0)).transpose()
            })
        })
        .await
    }

    async fn has_active_admin(&self) -> Result<bool, StoreError> {
        self.read(|tx, _| {
            Box::pin(async move { Ok(query_one(tx, ACTIVE_ADMIN_EXISTS, &[]).await?.try_get(0)?) })
        })
        .await
    }
}

const ACTIVE_ADMIN_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM api_clients WHERE role = 'admin' AND revoked_at IS NULL)";

/// The advisory lock of the bootstrap admin ("pbxadmin" in ASCII).
const BOOTSTRAP_LOCK: i64 = 0x7062_7861_646d_696e;

async fn insert(tx: &super::Tx<'_>, row: &NewClientRow) -> Result<(), StoreError> {
    let patterns = serde_json::to_string(&row.info.tenant_patterns)
        .map_err(|e| StoreError::Corrupt(format!("tenant patterns: {e}")))?;
    let hash: &[u8] = row.key_hash.as_slice();
    execute(
        tx,
        "INSERT INTO api_clients (client_id, name, role, tenant_patterns, key_hash, \
             created_at, created_by, revoked_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &row.info.client_id,
            &row.info.name,
            &row.info.role.as_str(),
            &patterns,
            &hash,
            &row.info.created_at.0,
            &row.info.created_by,
            &row.info.revoked_at.map(|t| t.0),
        ],
    )
    .await?;
    Ok(())
}
