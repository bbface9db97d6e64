//! The waiting line of a coalescing writer: callers add an item, the first
//! one to find no drainer running becomes (or starts) the drainer, which
//! takes batches until the line is empty. Shared by SQLite's refresh group
//! commit and PostgreSQL's refresh batches and budget calls.
//!
//! Does not: run the drainer or answer the callers.

use std::sync::{Mutex, MutexGuard};

/// Items waiting for the next batch, and whether a drainer is running.
pub(crate) struct BatchQueue<T> {
    items: Vec<T>,
    draining: bool,
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            draining: false,
        }
    }
}

impl<T> BatchQueue<T> {
    /// Adds `item`; true when no drainer is running and the caller must
    /// start one (it now counts as running).
    pub(crate) fn push(&mut self, item: T) -> bool {
        self.items.push(item);
        !std::mem::replace(&mut self.draining, true)
    }

    /// The next batch of at most `max` items, oldest first; `None` when
    /// the line is empty, and then the drainer counts as stopped.
    pub(crate) fn next_batch(&mut self, max: usize) -> Option<Vec<T>> {
        if self.items.is_empty() {
            self.draining = false;
            return None;
        }
        let n = self.items.len().min(max);
        Some(self.items.drain(..n).collect())
    }

    /// The drainer went away mid-way (its task dropped): the next caller
    /// starts another.
    pub(crate) fn drainer_gone(&mut self) {
        self.draining = false;
    }
}

/// A [`BatchQueue`] behind its own lock, for a queue a store handle keeps
/// (one per kind of batch).
pub(crate) struct SharedBatchQueue<T> {
    state: Mutex<BatchQueue<T>>,
}

impl<T> Default for SharedBatchQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(BatchQueue::default()),
        }
    }
}

impl<T> SharedBatchQueue<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, BatchQueue<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_caller_starts_the_drainer_which_stops_when_empty() {
        let mut q = BatchQueue::default();
        assert!(q.push(1));
        assert!(!q.push(2));
        assert!(!q.push(3));
        assert_eq!(q.next_batch(2), Some(vec![1, 2]));
        assert_eq!(q.next_batch(2), Some(vec![3]));
        assert_eq!(q.next_batch(2), None);
        assert!(q.push(4), "a drained line needs a new drainer");
        q.drainer_gone();
        assert!(q.push(5), "so does one whose drainer went away");
    }
}
