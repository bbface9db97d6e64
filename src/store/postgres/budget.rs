//! The per-host PBX request budget shared by every replica, on PostgreSQL
//! (`migrations/postgres/0003_host_budget.sql`, `0006_host_budget_buckets.sql`):
//! taking slots is one call of `pbx_take_host_slots`, which locks the
//! host's budget row, prunes the window, checks the 429 reset time and the
//! in-flight slots, and records the starts, all on the database's clock in
//! one round trip and one transaction. A slot is a row with an expiry, so a
//! replica killed mid-request frees its slots when they expire.
//!
//! Coalesced per host, as refresh outcomes are: the takes of one host that
//! arrive while this handle's previous call for it runs go in the next
//! call together (each answered as if it had called alone, in arrival
//! order), and releases that arrive while a release runs are deleted
//! together. Under load a host's row lock is then taken once per batch
//! rather than once per request, by one connection rather than by every
//! request's own (with 64 sessions queueing on one row lock, each hand-over
//! woke a server process, and the waits were most of each take's time). A release that waits for the
//! batch before it holds its slot a moment longer: safe, the limits only
//! get stricter.
//!
//! Why each call is one autocommit statement with `synchronous_commit`
//! off for its own transaction: taking a slot locks the host's budget row
//! until commit, so every request to a host, from every replica, queues on
//! that lock. Inside an explicit transaction the lock was held across two
//! client round trips (the statement's answer, then COMMIT) and the WAL
//! flush; under load the cluster's renewals were capped by that queue (the
//! cluster campaign saw 40 sessions waiting on it and renewals falling
//! behind at ~130/s). Now the lock lasts only the server-side statement
//! and its commit, which does not wait for the disk. Losing the last few
//! slot records to a database crash is harmless: a slot is a moment in a
//! one-second window and a crash or failover takes longer than that.
//!
//! Does not: wait, retry or decide what a refusal means (`pbx::gated`
//! does, through the engine's adapter).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio_postgres::Row;

use super::drainer::Drainer;
use super::{error, execute, PgStore};
use crate::store::batch_queue::{BatchQueue, SharedBatchQueue};
use crate::store::{HostBudget, SlotGrant, SlotRequest, StoreError};

/// What a failed batch's callers hear it was doing.
const BUDGET: &str = "the shared host budget";

/// Most takes or releases in one call.
const MAX_BATCH: usize = 64;

type Answer<T> = oneshot::Sender<Result<T, StoreError>>;

/// Takes waiting per request kind (host, holder and limits), and releases.
#[derive(Default)]
pub(super) struct SlotQueues {
    takes: Mutex<HashMap<SlotRequest, BatchQueue<Answer<SlotOutcome>>>>,
    releases: SharedBatchQueue<(i64, Answer<SlotOutcome>)>,
}

/// A take's grant, or nothing for a release.
type SlotOutcome = Option<SlotGrant>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Clears `draining` of a take queue if its drainer is dropped mid-way
/// (its runtime shutting down), so a later caller starts another.
struct TakeDrainer {
    store: PgStore,
    req: SlotRequest,
    armed: bool,
}

impl Drop for TakeDrainer {
    fn drop(&mut self) {
        if self.armed {
            let mut takes = lock(&self.store.inner.slots.takes);
            if let Some(w) = takes.get_mut(&self.req) {
                w.drainer_gone();
            }
        }
    }
}

impl PgStore {
    /// `n` slots of `req`'s host in one call, answered in order.
    async fn take_slots(&self, req: &SlotRequest, n: usize) -> Result<Vec<SlotGrant>, StoreError> {
        let rps = i32::try_from(req.rps).unwrap_or(i32::MAX);
        let concurrent = i32::try_from(req.concurrent).unwrap_or(i32::MAX);
        let count = i32::try_from(n).unwrap_or(i32::MAX);
        let rows = self
            .autocommit(
                // set_config(.., true): this statement's implicit
                // transaction commits without waiting for the WAL flush.
                "SELECT outcome, slot, wait_ms, \
                        set_config('synchronous_commit', 'off', true) \
                 FROM pbx_take_host_slots($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &req.host,
                    &req.holder,
                    &rps,
                    &concurrent,
                    &req.window_ms,
                    &req.slot_ttl_ms,
                    &count,
                ],
            )
            .await?;
        if rows.len() != n {
            return Err(StoreError::Corrupt(format!(
                "pbx_take_host_slots answered {} rows for {n} requests",
                rows.len()
            )));
        }
        rows.iter().map(grant).collect()
    }

    async fn release_slots(&self, slots: &[i64]) -> Result<(), StoreError> {
        self.autocommit(
            "WITH gone AS (DELETE FROM host_slots WHERE slot_id = ANY($1) RETURNING 1) \
             SELECT set_config('synchronous_commit', 'off', true), (SELECT count(*) FROM gone)",
            &[&slots],
        )
        .await?;
        Ok(())
    }
}

fn grant(r: &Row) -> Result<SlotGrant, StoreError> {
    let outcome: &str = r.try_get(0)?;
    let slot: Option<i64> = r.try_get(1)?;
    let wait_ms: i64 = r.try_get::<_, i64>(2)?.max(0);
    Ok(match (outcome, slot) {
        ("granted", Some(slot)) => SlotGrant::Granted { slot },
        ("throttled", _) => SlotGrant::Throttled { wait_ms },
        ("rate", _) => SlotGrant::RateLimited { wait_ms },
        ("busy", _) => SlotGrant::Busy,
        (other, _) => {
            return Err(StoreError::Corrupt(format!(
                "pbx_take_host_slots answered {other:?}"
            )))
        }
    })
}

async fn drain_takes(mut d: TakeDrainer) {
    loop {
        let batch = {
            let mut takes = lock(&d.store.inner.slots.takes);
            match takes.get_mut(&d.req).map(|w| w.next_batch(MAX_BATCH)) {
                Some(Some(batch)) => batch,
                Some(None) => {
                    takes.remove(&d.req);
                    d.armed = false;
                    return;
                }
                None => {
                    d.armed = false;
                    return;
                }
            }
        };
        match d.store.take_slots(&d.req, batch.len()).await {
            Ok(grants) => {
                for (a, g) in batch.into_iter().zip(grants) {
                    if let Err(Ok(Some(SlotGrant::Granted { slot }))) = a.send(Ok(Some(g))) {
                        // The caller gave up meanwhile: free its slot now.
                        enqueue_release(&d.store, slot);
                    }
                }
            }
            Err(e) => {
                for a in batch {
                    let _ = a.send(Err(error::for_each_caller(&e, BUDGET)));
                }
            }
        }
    }
}

async fn drain_releases(mut drainer: Drainer<(i64, Answer<SlotOutcome>)>) {
    while let Some(batch) = drainer.next_batch(MAX_BATCH) {
        let slots: Vec<i64> = batch.iter().map(|(s, _)| *s).collect();
        let out = drainer.store().release_slots(&slots).await;
        for (_, a) in batch {
            let _ = a.send(match &out {
                Ok(()) => Ok(None),
                Err(e) => Err(error::for_each_caller(e, BUDGET)),
            });
        }
    }
}

/// Queues the release of `slot`; the answer comes when its batch is done.
fn enqueue_release(
    store: &PgStore,
    slot: i64,
) -> oneshot::Receiver<Result<SlotOutcome, StoreError>> {
    let (tx, rx) = oneshot::channel();
    if let Some(drainer) = Drainer::push(store, |s| &s.inner.slots.releases, (slot, tx)) {
        tokio::spawn(drain_releases(drainer));
    }
    rx
}

fn stopped() -> StoreError {
    StoreError::Task("the shared host budget's batcher stopped".into())
}

#[async_trait]
impl HostBudget for PgStore {
    async fn take_host_slot(&self, req: SlotRequest) -> Result<SlotGrant, StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = lock(&self.inner.slots.takes)
            .entry(req.clone())
            .or_default()
            .push(tx);
        if start {
            tokio::spawn(drain_takes(TakeDrainer {
                store: self.clone(),
                req,
                armed: true,
            }));
        }
        match rx.await.map_err(|_| stopped())?? {
            Some(grant) => Ok(grant),
            None => Err(stopped()),
        }
    }

    async fn release_host_slot(&self, slot: i64) -> Result<(), StoreError> {
        enqueue_release(self, slot).await.map_err(|_| stopped())??;
        Ok(())
    }

    async fn throttle_host(&self, host: &str, retry_after_ms: i64) -> Result<(), StoreError> {
        let host = host.to_owned();
        self.write(move |tx, _| {
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO host_budget AS b (pbx_host, throttled_until) \
                     VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2) \
                     ON CONFLICT (pbx_host) DO UPDATE SET \
                         throttled_until = GREATEST(b.throttled_until, excluded.throttled_until)",
                    &[&host, &retry_after_ms.max(0)],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
