//! "As soon as the call returns" across replicas (design.md): an admin
//! call that changed a tenant or revoked a client returns only after every
//! other replica with a live heartbeat has applied the change to its cache
//! (each writes the highest change id it applied with its heartbeat,
//! `cluster/`), or after `[cluster] lease_ttl_ms`, logging a warning that
//! names the replicas that did not confirm.
//!
//! Live: a heartbeat within `lease_ttl_ms` (heartbeats come every second),
//! on the database's clock: the same span after which its renewal duty may
//! be taken over. A shorter span let a replica whose heartbeat was merely
//! late (a loaded machine) go unwaited-for and serve a disabled tenant's
//! token after the call returned. A replica silent for longer is presumed
//! dead; when it comes back it reads the feed within its next sync pass
//! (at most 2 s).
//!
//! On SQLite (one process) there is nothing to wait for.

use std::time::Duration;

use crate::clock::SharedClock;
use crate::store::Store;

/// How often the replicas table is read while waiting.
const POLL: Duration = Duration::from_millis(10);

/// Waits for the other replicas (see the module comment).
pub struct ReplicaConfirm {
    store: Store,
    clock: SharedClock,
    /// This replica (its own cache was updated by the call itself).
    name: String,
    wait_ms: i64,
}

/// What the wait found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// Every live replica applied the change (or there is no other).
    All,
    /// These replicas had not applied it when the wait ended.
    Missing(Vec<String>),
}

impl ReplicaConfirm {
    pub fn new(store: Store, clock: SharedClock, name: String, lease_ttl_ms: u64) -> Self {
        ReplicaConfirm {
            store,
            clock,
            name,
            wait_ms: i64::try_from(lease_ttl_ms).unwrap_or(i64::MAX),
        }
    }

    /// After a write that returned: waits for every live replica to apply
    /// it. `what` names the call in the warning. Never fails the call: the
    /// change is committed whatever the other replicas do.
    pub async fn after_write(&self, what: &str) -> Confirmation {
        if self.store.backend_name() == "sqlite" {
            return Confirmation::All;
        }
        let target = match self.store.latest_change_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(
                    "{what}: committed, but other replicas' confirmation cannot be read ({e})"
                );
                return Confirmation::Missing(Vec::new());
            }
        };
        let started = self.clock.now();
        let live_ms = self.wait_ms.max(1_000);
        loop {
            let behind = match self.store.replicas(live_ms, live_ms).await {
                Ok(rows) => rows
                    .into_iter()
                    .filter(|r| r.live && r.name != self.name && r.applied_change_id < target)
                    .map(|r| r.name)
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(
                        "{what}: committed, but other replicas' confirmation cannot be read ({e})"
                    );
                    return Confirmation::Missing(Vec::new());
                }
            };
            if behind.is_empty() {
                return Confirmation::All;
            }
            if self.clock.now().0 - started.0 >= self.wait_ms {
                tracing::warn!(
                    replicas = %behind.join(","),
                    "{what}: committed, but replicas {} did not confirm within [cluster] lease_ttl_ms ({} ms); they may serve the old state until they catch up",
                    behind.join(", "),
                    self.wait_ms
                );
                return Confirmation::Missing(behind);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
