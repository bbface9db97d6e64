//! Changes made elsewhere: another replica sharing the database wrote a
//! tenant or its token, and the cache must follow (`cluster/` reads the
//! change feed and calls [`Broker::apply_stored`]); and the read-through
//! of a tenant the cache does not hold yet (created on another replica a
//! moment ago), enabled only on a shared database: on SQLite the cache is
//! the only writer's and a miss means "no such tenant".
//!
//! The database is the truth for a tenant's existence, state and base URL.
//! For the token, the newer one wins (by issue time): a token this replica
//! holds but could not store yet (`unstored/`) is not replaced by an older
//! stored one, and our own writes echoed back by the feed wake no watcher.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Broker, Slot, TokenError};
use crate::domain::TenantId;
use crate::store::CachedTenant;

impl Broker {
    /// Reads a tenant the cache does not hold through to the database,
    /// when read-through is on.
    pub(super) async fn slot_or_load(&self, tenant: &str) -> Result<Arc<Slot>, TokenError> {
        match self.slot(tenant) {
            Err(TokenError::NotFound(_)) if self.read_through.load(Ordering::Relaxed) => {
                let id = TenantId::parse(tenant)?;
                let stored = self.store.cached_tenant(&id).await?;
                match stored {
                    Some(t) => {
                        self.apply_stored(&id, Some(t));
                        self.slot(tenant)
                    }
                    None => Err(TokenError::NotFound(tenant.to_owned())),
                }
            }
            other => other,
        }
    }

    /// [`Broker::watch`], reading a tenant the cache does not hold yet
    /// through to the database (when read-through is on).
    pub async fn watch_or_load(&self, tenant: &str) -> Result<super::TokenWatch, TokenError> {
        self.slot_or_load(tenant).await?;
        self.watch(tenant)
    }

    /// Brings one tenant's cache entry in line with the database (`None`:
    /// the tenant is gone; its streams end).
    pub fn apply_stored(&self, id: &TenantId, stored: Option<CachedTenant>) {
        let Some(t) = stored else {
            self.remove_slot(id);
            return;
        };
        let existing = self.slots_read().get(id).cloned();
        match existing {
            Some(slot) => slot.apply_stored(t),
            None => {
                self.slots_write()
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(Slot::from_cached(t)));
            }
        }
        self.schedule_changed.notify_one();
    }

    /// Whether a cache miss reads through to the database (a shared one).
    pub fn with_read_through(self, on: bool) -> Self {
        self.read_through.store(on, Ordering::Relaxed);
        self
    }
}

impl Slot {
    /// See [`Broker::apply_stored`].
    fn apply_stored(&self, t: CachedTenant) {
        self.set_base_url(t.base_url);
        if self.state() != t.state {
            self.set_state(t.state);
        }
        if let Some(token) = t.token {
            let newer = match self.token() {
                None => true,
                Some(held) => {
                    token.issued_at > held.issued_at
                        || (token.issued_at == held.issued_at
                            && token.value.expose() != held.value.expose())
                }
            };
            if newer {
                self.replace_token(Arc::new(token));
            }
        }
    }
}

impl Broker {
    /// The whole cache brought in line with `stored` (a replica that fell
    /// behind the change feed): tenants not in it are forgotten.
    pub fn resync(&self, stored: Vec<CachedTenant>) {
        let keep: std::collections::HashSet<TenantId> =
            stored.iter().map(|t| t.id.clone()).collect();
        for t in stored {
            let id = t.id.clone();
            self.apply_stored(&id, Some(t));
        }
        let gone: Vec<TenantId> = self
            .slots_read()
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove_slot(&id);
        }
    }
}
