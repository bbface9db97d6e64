//! The task that empties one of a store handle's batch queues (refresh
//! outcomes, credential reads, budget releases): it takes batches until
//! the queue is empty, and if it is dropped mid-way (its runtime shutting
//! down) it clears the queue's `draining` mark, so a later caller starts
//! another; the callers of the batch it held hear from their dropped
//! senders.
//!
//! Does not: run a batch (each queue's own module does).

use super::PgStore;
use crate::store::batch_queue::SharedBatchQueue;

/// Which of the handle's queues a drainer empties.
pub(super) type QueueOf<T> = fn(&PgStore) -> &SharedBatchQueue<T>;

pub(super) struct Drainer<T> {
    store: PgStore,
    queue: QueueOf<T>,
    /// Still owns the queue's `draining` mark.
    armed: bool,
}

impl<T> Drainer<T> {
    /// Queues `item`; the caller that finds no drainer running gets one to
    /// spawn (detached: it must answer the whole batch even if that caller
    /// is cancelled).
    pub(super) fn push(store: &PgStore, queue: QueueOf<T>, item: T) -> Option<Drainer<T>> {
        queue(store).lock().push(item).then(|| Drainer {
            store: store.clone(),
            queue,
            armed: true,
        })
    }

    pub(super) fn store(&self) -> &PgStore {
        &self.store
    }

    /// The next batch, or `None` once the queue is empty (the drainer is
    /// done).
    pub(super) fn next_batch(&mut self, max: usize) -> Option<Vec<T>> {
        let batch = (self.queue)(&self.store).lock().next_batch(max);
        self.armed = batch.is_some();
        batch
    }
}

impl<T> Drop for Drainer<T> {
    fn drop(&mut self) {
        if self.armed {
            (self.queue)(&self.store).lock().drainer_gone();
        }
    }
}
