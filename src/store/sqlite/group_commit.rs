//! Group commit for refresh outcomes. With `synchronous=FULL` every commit
//! waits for the disk; one commit per renewal would cap renewals at the
//! disk's fsync rate. Instead, outcomes queue up while a commit is running
//! and the next commit takes them all: one transaction, one fsync, each
//! outcome in its own savepoint so one bad record cannot undo the others.
//! With no load there is no waiting: the first caller commits at once.
//!
//! Does not: decide what a record contains (tokens.rs writes it).

use std::sync::Mutex;

use rusqlite::TransactionBehavior;
use tokio::sync::oneshot;

use super::connection::{closed, lock};
use super::{tokens, Inner, RefreshRecord, StoreError, WriteFence};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::batch_queue::BatchQueue;

/// Largest batch in one transaction: bounds the time the writer is held.
const MAX_BATCH: usize = 512;

pub(super) struct Pending {
    id: TenantId,
    record: RefreshRecord,
    fence: WriteFence,
    now: UnixMs,
    reply: oneshot::Sender<Result<u32, StoreError>>,
}

/// The outcomes waiting, and whether a committer is running.
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<BatchQueue<Pending>>,
}

/// Queues one outcome; the caller that finds no committer running becomes
/// the committer and drains the queue on the blocking pool.
pub(super) async fn record(
    inner: &std::sync::Arc<Inner>,
    id: TenantId,
    record: RefreshRecord,
    fence: WriteFence,
    now: UnixMs,
) -> Result<u32, StoreError> {
    let (reply, answer) = oneshot::channel();
    let start_committer = lock(&inner.refresh_queue.state).push(Pending {
        id,
        record,
        fence,
        now,
        reply,
    });
    if start_committer {
        if inner.inline {
            // The simulation's store: commit on this task, deterministically.
            drain(inner);
        } else {
            let inner = std::sync::Arc::clone(inner);
            // Detached on purpose: it must finish the batch even if this
            // caller is cancelled, or the other waiters would never hear back.
            tokio::task::spawn_blocking(move || drain(&inner));
        }
    }
    answer
        .await
        .map_err(|_| StoreError::Task("the refresh committer stopped".into()))?
}

fn drain(inner: &Inner) {
    while let Some(batch) = lock(&inner.refresh_queue.state).next_batch(MAX_BATCH) {
        commit_batch(inner, batch);
    }
}

fn commit_batch(inner: &Inner, batch: Vec<Pending>) {
    let mut guard = lock(&inner.writer);
    let Some(conn) = guard.as_mut() else {
        for p in batch {
            let _ = p.reply.send(Err(closed()));
        }
        return;
    };
    let mut results: Vec<Result<u32, StoreError>> = Vec::with_capacity(batch.len());
    let ev = inner.events.begin();
    let outcome = (|| -> Result<(), StoreError> {
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for p in &batch {
            let sp = tx.savepoint()?;
            let r = tokens::check_fence(&sp, p.id.as_str(), &p.fence).and_then(|()| {
                tokens::record_refresh(&sp, &inner.keyring, &ev, p.id.as_str(), &p.record, p.now)
            });
            if r.is_ok() {
                sp.commit()?;
            }
            // An Err drops the savepoint, rolling back just this record.
            results.push(r);
        }
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            inner.events.committed(&ev);
            for (p, r) in batch.into_iter().zip(results) {
                let _ = p.reply.send(r);
            }
        }
        Err(e) => {
            // The whole transaction is gone: nobody's record was stored.
            let msg = e.to_string();
            for p in batch {
                let _ = p
                    .reply
                    .send(Err(StoreError::Task(format!("group commit failed: {msg}"))));
            }
        }
    }
}
