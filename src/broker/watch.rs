//! What a WatchToken stream subscribes to: the tenant's token channel and
//! its end signal. The end signal exists because a stream must not simply
//! fall silent (disabled tenant) or end with OK (deleted tenant): the
//! watcher has to learn that no token will come and why.
//!
//! Does not: build the gRPC stream or check the caller (api/watch.rs).

use std::sync::Arc;

use tokio::sync::watch;

use super::TokenError;
use crate::domain::{AccessToken, TenantState};

/// Why a tenant's streams end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// The tenant hands out no tokens in this state (DISABLED by an
    /// operator; PENDING_AUTHORIZATION after re-enabling one without
    /// credentials).
    NotServable(TenantState),
    /// The tenant was deleted.
    Deleted,
}

impl WatchEnd {
    /// The error the stream ends with.
    pub fn error(self, tenant: &str) -> TokenError {
        match self {
            WatchEnd::NotServable(state) => {
                match super::slot::not_servable_error(tenant, state) {
                    Some(e) => e,
                    // Not reachable: only unservable states are sent.
                    None => TokenError::Deleted(tenant.to_owned()),
                }
            }
            WatchEnd::Deleted => TokenError::Deleted(tenant.to_owned()),
        }
    }
}

/// A tenant's token channel (current first, then each new one) and the
/// signal that ends its streams.
#[derive(Debug)]
pub struct TokenWatch {
    pub tokens: watch::Receiver<Option<Arc<AccessToken>>>,
    pub end: watch::Receiver<Option<WatchEnd>>,
    /// Keeps the tenant busy while the stream lives (activity/mod.rs).
    pub(super) _open: super::OpenStream,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_name_the_reason() {
        let e = WatchEnd::NotServable(TenantState::Disabled).error("acme");
        assert!(matches!(e, TokenError::NotServable { .. }), "{e:?}");
        assert!(e.to_string().contains("UpdateTenant(enabled=true)"), "{e}");
        let e = WatchEnd::Deleted.error("acme");
        assert!(e.to_string().contains("acme was deleted"), "{e}");
    }
}
