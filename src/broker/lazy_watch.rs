//! A value of a slot (its token, why its streams must end) with a change
//! channel made only when someone subscribes.
//!
//! Why not a tokio `watch` channel per value: one takes about 350 bytes
//! (its shared state holds nine `Notify`s), 35 MB per value at 100,000
//! tenants, and puts one more allocation between a GetToken lookup and the
//! token. Most tenants never have a WatchToken stream or a waiting report.
//! The value itself sits behind a plain `RwLock` read (the token is read
//! on GetToken's hot path); the channel exists once someone watches.
//!
//! Every write and every subscription takes the `watchers` lock, so a
//! subscriber made while the value is replaced either starts from the new
//! value or is told about it: no update is lost between the two.

use std::sync::{Mutex, MutexGuard, RwLock};

use tokio::sync::watch;

#[derive(Debug)]
pub(super) struct LazyWatch<T> {
    held: RwLock<T>,
    watchers: Mutex<Option<watch::Sender<T>>>,
}

impl<T: Clone> LazyWatch<T> {
    pub(super) fn new(value: T) -> Self {
        Self {
            held: RwLock::new(value),
            watchers: Mutex::new(None),
        }
    }

    /// `f` of the held value, read under the lock without cloning it.
    pub(super) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        // Poisoning would need a panic inside an assignment.
        f(&self.held.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(super) fn get(&self) -> T {
        self.with(T::clone)
    }

    /// Holds `value` and tells the watchers.
    pub(super) fn replace(&self, value: T) {
        self.replace_if(value, |_, _| true);
    }

    /// Holds `value` and tells the watchers, only when `changed(old, new)`.
    pub(super) fn replace_if(&self, value: T, changed: impl FnOnce(&T, &T) -> bool) {
        let watchers = self.watchers();
        let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
        if !changed(&held, &value) {
            return;
        }
        *held = value.clone();
        drop(held);
        if let Some(tell) = watchers.as_ref() {
            tell.send_replace(value);
        }
    }

    /// A receiver that has seen the held value and wakes on the next one.
    pub(super) fn subscribe(&self) -> watch::Receiver<T> {
        let mut watchers = self.watchers();
        watchers
            .get_or_insert_with(|| watch::channel(self.get()).0)
            .subscribe()
    }

    fn watchers(&self) -> MutexGuard<'_, Option<watch::Sender<T>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::UnixMs;
    use crate::domain::AccessToken;
    use crate::secret::Secret;

    type Held = Option<Arc<AccessToken>>;

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
        let cell: LazyWatch<Held> = LazyWatch::new(None);
        assert!(cell.get().is_none());
        cell.replace(Some(token("a")));
        cell.replace(Some(token("b")));
        assert_eq!(value(&cell.get()), Some("b".into()));
        assert_eq!(
            cell.with(|t| t.as_ref().map(|t| t.expires_at)),
            Some(UnixMs(61_000))
        );
        assert!(
            cell.watchers().is_none(),
            "no channel until someone subscribes"
        );
    }

    #[tokio::test]
    async fn a_subscriber_starts_from_the_held_token_and_sees_each_new_one() {
        let cell = LazyWatch::new(Some(token("a")));
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

    #[test]
    fn an_unchanged_value_wakes_nobody() {
        let cell = LazyWatch::new(1);
        let rx = cell.subscribe();
        cell.replace_if(1, |old, new| old != new);
        assert!(!rx.has_changed().unwrap());
        cell.replace_if(2, |old, new| old != new);
        assert!(rx.has_changed().unwrap());
        assert_eq!(cell.get(), 2);
    }
}
