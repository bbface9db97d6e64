//! Storage: the daemon's durable state (tenants, sealed credentials,
//! tokens, the renewal queue, host leases, authorization flows, tenant
//! events and the webhook outbox, API clients, the audit log) behind a
//! narrow async interface (`interface.rs`), with SQLite as the embedded
//! backend (`sqlite/`) and PostgreSQL for several replicas (`postgres/`).
//! The only module that knows SQL.
//!
//! Files: `interface.rs` (the traits and the [`Store`] handle),
//! `records.rs`, `flow.rs` and `events.rs` (the plain data they take and
//! return), `error.rs` (one error type for every backend), `seal/`
//! (sealing, alike for every backend), `rows.rs` (checks on rows read
//! back), `sqlite/` (the SQLite backend, its migrations runner, backups
//! and master key rotation), `postgres/` (the PostgreSQL backend),
//! `conformance/` (test-only: the suite every backend must pass).
//!
//! Does not: decide states or schedules (the broker and renewal do), speak
//! HTTP, or know protobuf.

mod batch_queue;
mod copy;
mod error;
mod events;
mod feed;
mod flow;
mod interface;
pub mod postgres;
mod records;
mod rows;
mod seal;
pub mod sqlite;

#[cfg(test)]
pub(crate) mod conformance;

use std::path::Path;
use std::sync::Arc;

pub use copy::{sqlite_to_postgres, CopyReport};
pub use error::StoreError;
pub(crate) use events::messages as event_messages;
pub use events::{EventPage, EventSettings, OutboxEntry, TenantEvent, TenantEventKind};
pub use feed::{Change, ChangeFeed, ChangeKind, Hint, ReplicaRow};
pub use flow::{Flow, FlowCompletion, FlowKey, FlowStep, FlowUpdate};
pub use interface::{
    AuditLog, ClientRepo, CredentialRepo, EventLog, FlowClaims, FlowRepo, HostBudget, JobQueue,
    LeaseTable, Lifecycle, Storage, Store, StoreStats, TenantRepo, TokenRepo,
};
pub use postgres::PgStore;
pub use records::{
    AuditEntry, AuditQuery, BackupInfo, CacheLoad, CachedTenant, CredentialFault, DueJob, HostLoad,
    KeyCheck, Lease, LeaseClaim, NewAuditEvent, NewClientRow, NewTenant, QueueStats, ReadyJobs,
    RefreshRecord, SlotGrant, SlotRequest, TenantChanges, TokenHealth, WriteFence,
};
pub use sqlite::backup;
pub use sqlite::{has_sealed_data, BackupCheck, RestoreReport, RotationReport, SqliteStore};

use crate::crypto::Keyring;

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// migrations (see [`SqliteStore::open`]).
    ///
    /// Blocking (file system and SQLite); call it at start-up or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, keyring: Arc<Keyring>) -> Result<Store, StoreError> {
        Ok(Store::new(SqliteStore::open(path, keyring)?))
    }

    /// As [`Store::open`], with every query run inline on the awaiting
    /// task: for the deterministic simulation only (see
    /// [`SqliteStore::open_inline`]).
    pub fn open_inline(path: &Path, keyring: Arc<Keyring>) -> Result<Store, StoreError> {
        Ok(Store::new(SqliteStore::open_inline(path, keyring)?))
    }
}
