//! The change feed on SQLite: there is none. One process owns the file,
//! so its cache sees every write as it makes it; the feed is empty, there
//! are no hints and no other replicas (the overview shows the process
//! itself). Only `cached_tenant` is real (a one-tenant cache read).

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{tokens, SqliteStore};
use crate::domain::TenantId;
use crate::store::{CachedTenant, Change, ChangeFeed, Hint, ReplicaRow, StoreError};

#[async_trait]
impl ChangeFeed for SqliteStore {
    fn change_hints(&self) -> Option<mpsc::Receiver<Hint>> {
        None
    }

    async fn latest_change_id(&self) -> Result<i64, StoreError> {
        Ok(0)
    }

    async fn oldest_change_id(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    async fn changes_after(
        &self,
        _after: i64,
        _also: Vec<i64>,
        _limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        Ok(Vec::new())
    }

    async fn prune_changes(&self, _age_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn cached_tenant(&self, id: &TenantId) -> Result<Option<CachedTenant>, StoreError> {
        let id = id.clone();
        self.read(move |conn, keys| {
            let load = tokens::load_cache_of(conn, keys, Some(id.as_str()))?;
            Ok(load.tenants.into_iter().next())
        })
        .await
    }

    async fn replica_heartbeat(
        &self,
        _name: &str,
        _applied_change_id: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn replicas(&self, _live_ms: i64, _keep_ms: i64) -> Result<Vec<ReplicaRow>, StoreError> {
        Ok(Vec::new())
    }
}
