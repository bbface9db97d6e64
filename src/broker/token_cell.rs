//! A slot's held token, with a change channel for WatchToken streams made
//! only when a stream subscribes.
//!
//! Why not a tokio `watch` channel per slot: one takes about 350 bytes
//! (its shared state holds nine `Notify`s), 35 MB at 100,000 tenants, and
//! puts one more allocation between a GetToken lookup and the token. Most
//! tenants never have a stream. The token itself sits behind a plain
//! `RwLock` read on the hot path; the channel exists once someone watches.
//!
//! Every write and every subscription takes the `watchers` lock, so a
//! subscriber made while a token is replaced either starts from the new
//! token or is told about it: no update is lost between the two.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::watch;

use crate::domain::AccessToken;

type Held = Option<Arc<AccessToken>>;

#[derive(Debug)]
pub(super) struct TokenCell {
    held: RwLock<Held>,
    watchers: Mutex<Option<watch::Sender<Held>>>,
}

impl TokenCell {
    pub(super) fn new(token: Held) -> Self {
        Self {
            held: RwLock::new(token),
            watchers: Mutex::new(None),
        }
    }

    /// `f` of the held token, read under the lock without cloning it.
    pub(super) fn with<R>(&self, f: impl FnOnce(Option<&Arc<AccessToken>>) -> R) -> R {
        // Poisoning would need a panic inside an assignment.
        f(self.held.read().unwrap_or_else(|p| p.into_inner()).as_ref())
    }

    pub(super) fn get(&self) -> Held {
        self.with(|t| t.cloned())
    }

    /// Holds `token` and tells the streams.
    pub(super) fn replace(&self, token: Held) {
        let watchers = self.watchers();
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = token.clone();
        if let Some(tell) = watchers.as_ref() {
            tell.send_replace(token);
        }
    }

    /// A receiver that has seen the held token and wakes on the next one.
    pub(super) fn subscribe(&self) -> watch::Receiver<Held> {
        let mut watchers = self.watchers();
        watchers
            .get_or_insert_with(|| watch::channel(self.get()).0)
            .subscribe()
    }

    fn watchers(&self) -> MutexGuard<'_, Option<watch::Sender<Held>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixMs;
    use crate::secret::Secret;

    fn token(value: &str) -> Arc<AccessToken> {
        Arc::new(AccessToken {
            value: Secret::new(value.to_owned()),
            token_type: "Bearer".to_owned(),
            issued_at: UnixMs(1_000),
            expires_at: UnixMs(61_000),
        })
    }

    fn value(t: &Held) -> Option<String> {
        t.as_ref().map(|t| t.value.expose().clone())
    }

    #[test]
    fn it_holds_the_last_token_without_any_watcher() {
        let cell = TokenCell::new(None);
        assert!(cell.get().is_none());
        cell.replace(Some(token("a")));
        cell.replace(Some(token("b")));
        assert_eq!(value(&cell.get()), Some("b".into()));
        assert_eq!(cell.with(|t| t.map(|t| t.expires_at)), Some(UnixMs(61_000)));
        assert!(
            cell.watchers().is_none(),
            "no channel until someone subscribes"
        );
    }

    #[tokio::test]
    async fn a_subscriber_starts_from_the_held_token_and_sees_each_new_one() {
        let cell = TokenCell::new(Some(token("a")));
        let mut rx = cell.subscribe();
        assert_eq!(value(&rx.borrow_and_update()), Some("a".into()));
        assert!(!rx.has_changed().unwrap(), "the held token counts as seen");
        cell.replace(Some(token("b")));
        rx.changed().await.unwrap();
        assert_eq!(value(&rx.borrow_and_update()), Some("b".into()));
        let mut late = cell.subscribe();
        assert_eq!(value(&late.borrow_and_update()), Some("b".into()));
        cell.replace(None);
        late.changed().await.unwrap();
        assert!(late.borrow().is_none());
    }
}
