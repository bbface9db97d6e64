//! The change feed and the replicas table: what several replicas sharing
//! one database need to keep their in-memory caches current and to see
//! each other (`GetServerStatus`, admin calls that wait for every replica).
//!
//! A backend with one process (SQLite) has no feed: its cache is the only
//! writer's, so `change_hints` is `None`, the feed is empty and the
//! replicas table holds nobody (the overview shows the process itself).
//! A networked backend (PostgreSQL) records a [`Change`] for every write to
//! a tenant, its token or an API client in the writing transaction, and
//! sends a hint when it commits; the hint may be lost, the rows are not.
//!
//! Does not: apply changes (`cluster/` does, above the broker), or decide
//! what a gap in the ids means (ids are taken at insert and seen at
//! commit, so `cluster/` re-checks gaps for a while).

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{CachedTenant, StoreError};
use crate::clock::UnixMs;
use crate::domain::TenantId;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A tenant (inserted, state or base URL changed, deleted) or its
    /// token: `key` is the tenant id.
    Tenant,
    /// An API client (created, revoked): `key` is the client id.
    Client,
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub kind: ChangeKind,
    pub key: String,
    /// How old the change was when it was read, on the database's clock
    /// (its row is stamped in the writing transaction), so no replica's
    /// clock need agree with the database's: the first part of the
    /// change-feed lag.
    pub age_ms: i64,
}

/// A hint from the backend's listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// The listening connection is (re)established: notifications sent
    /// while it was down are lost, read the feed.
    Connected,
    /// Something committed: read the feed.
    Notified,
    /// The listening connection was lost (once per outage): changes come
    /// by polling only until the next [`Hint::Connected`].
    Disconnected,
}

/// A replica as its heartbeat last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub name: String,
    /// On the database's clock.
    pub last_heartbeat: UnixMs,
    /// Every change up to this id is in its cache.
    pub applied_change_id: i64,
    /// Hosts whose renewal lease it holds (unexpired), ordered.
    pub renewing_hosts: Vec<String>,
    /// Whether its heartbeat is younger than the `live_ms` asked for.
    pub live: bool,
}

/// The change feed and replicas table (see the module comment).
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// A receiver of hints from a listener the backend keeps connected
    /// (reconnecting by itself) for as long as the receiver lives; `None`
    /// when the backend has no feed (one process).
    fn change_hints(&self) -> Option<mpsc::Receiver<Hint>>;

    /// The highest change id committed so far (0: none).
    async fn latest_change_id(&self) -> Result<i64, StoreError>;

    /// The lowest change id still kept (`None`: the feed is empty): a
    /// reader that stopped before it must reload everything.
    async fn oldest_change_id(&self) -> Result<Option<i64>, StoreError>;

    /// Up to `limit` changes with an id above `after` or in `also` (gaps
    /// being re-checked), by id.
    async fn changes_after(
        &self,
        after: i64,
        also: Vec<i64>,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError>;

    /// Deletes changes older than `age_ms` on the database's clock;
    /// returns how many.
    async fn prune_changes(&self, age_ms: i64) -> Result<u64, StoreError>;

    /// One tenant as the cache holds it (`None`: no such tenant). A token
    /// that does not open is left out.
    async fn cached_tenant(&self, id: &TenantId) -> Result<Option<CachedTenant>, StoreError>;

    /// [`ChangeFeed::cached_tenant`] for each of `ids`, in their order; a
    /// backend may read them all at once (a replica applying a burst of
    /// renewals reads one statement, not one transaction per tenant).
    async fn cached_tenants(
        &self,
        ids: &[TenantId],
    ) -> Result<Vec<Option<CachedTenant>>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.cached_tenant(id).await?);
        }
        Ok(out)
    }

    /// Writes `name`'s heartbeat (database clock) and the change id it has
    /// applied.
    async fn replica_heartbeat(&self, name: &str, applied_change_id: i64)
        -> Result<(), StoreError>;

    /// Every replica that wrote a heartbeat within the last `keep_ms`, by
    /// name; `live` says which did within `live_ms`.
    async fn replicas(&self, live_ms: i64, keep_ms: i64) -> Result<Vec<ReplicaRow>, StoreError>;
}
