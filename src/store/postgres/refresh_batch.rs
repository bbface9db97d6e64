//! Group commit for refresh outcomes on PostgreSQL, as SQLite does
//! (`sqlite/group_commit.rs`): outcomes queue while a batch is being
//! committed and the next transaction takes them all (at most
//! [`MAX_BATCH`]). A batch is ONE call of `pbx_record_refreshes`
//! (`migrations/postgres/0005_record_refreshes.sql`), which checks each
//! outcome's fence and applies it in the same transaction, and answers
//! per outcome with a status instead of raising: one fenced outcome or
//! deleted tenant leaves the others of its batch alone. So a renewal costs
//! a share of one round trip, one commit and one WAL flush, where one
//! transaction per outcome cost eight round trips and a flush each.
//!
//! When the batch call itself fails (not a status: an error), nothing of
//! it was written. A database that is unreachable answers every caller
//! `Unavailable`; any other error is retried outcome by outcome, each in
//! its own transaction, so the outcome that caused it gets its error and
//! the others land. A failed COMMIT is answered as is to everybody (the
//! batch may or may not have landed, exactly as for one outcome alone).
//! With no load there is no waiting: the first caller commits at once.
//!
//! Does not: decide what an outcome contains (the broker), or seal
//! anything but the token (`store/seal/`).

use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use super::drainer::Drainer;
use super::events::{EventCx, EVENTS_LOCK};
use super::{error, Conn, PgStore};
use crate::clock::UnixMs;
use crate::crypto::Keyring;
use crate::domain::TenantId;
use crate::store::batch_queue::SharedBatchQueue;
use crate::store::seal::{self, Field};
use crate::store::{event_messages, RefreshRecord, StoreError, TenantEventKind, WriteFence};

/// Largest batch in one transaction: bounds how long its row locks are
/// held and how long the last outcome of a batch waits for its answer.
const MAX_BATCH: usize = 256;

/// One outcome waiting for its batch, its token already sealed.
pub(super) struct Pending {
    id: TenantId,
    fence: WriteFence,
    record: RefreshRecord,
    sealed: Option<Vec<u8>>,
    now: UnixMs,
    reply: oneshot::Sender<Result<u32, StoreError>>,
}

/// The outcomes waiting, and whether a committer is running (one per
/// store handle).
pub(super) type Queue = SharedBatchQueue<Pending>;

impl PgStore {
    /// Queues one outcome; the caller that finds no committer running
    /// starts one. Answers as one transaction per outcome would.
    pub(super) async fn record_refresh_grouped(
        &self,
        id: TenantId,
        record: RefreshRecord,
        fence: WriteFence,
        now: UnixMs,
    ) -> Result<u32, StoreError> {
        let sealed = seal_token(&self.inner.keyring, &id, &record)?;
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            id,
            fence,
            record,
            sealed,
            now,
            reply,
        };
        if let Some(drainer) = Drainer::push(self, |s| &s.inner.refreshes, pending) {
            tokio::spawn(drain(drainer));
        }
        answer
            .await
            .map_err(|_| StoreError::Task("the refresh committer stopped".into()))?
    }
}

fn seal_token(
    keys: &Keyring,
    id: &TenantId,
    record: &RefreshRecord,
) -> Result<Option<Vec<u8>>, StoreError> {
    match record {
        RefreshRecord::Success { token, .. } => Ok(Some(seal::seal(
            keys,
            id.as_str(),
            Field::AccessToken,
            token.value.expose(),
        )?)),
        RefreshRecord::Failure { .. } => Ok(None),
    }
}

async fn drain(mut drainer: Drainer<Pending>) {
    while let Some(batch) = drainer.next_batch(MAX_BATCH) {
        commit(drainer.store(), batch).await;
    }
}

/// Where a batch failed.
enum Failed {
    /// Before COMMIT was sent: nothing was written.
    Before(StoreError),
    /// At COMMIT: the batch may or may not have landed.
    AtCommit(StoreError),
}

async fn commit(store: &PgStore, batch: Vec<Pending>) {
    match run(store, &batch).await {
        Ok(answers) => {
            for (p, a) in batch.into_iter().zip(answers) {
                let _ = p.reply.send(a);
            }
        }
        Err(Failed::Before(e)) if batch.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
            tracing::warn!(
                outcomes = batch.len(),
                "a batch of refresh outcomes failed ({e}); recording them one by one"
            );
            for p in batch {
                let one = std::slice::from_ref(&p);
                let answer = match run(store, one).await {
                    Ok(mut a) => a.pop().unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "pbx_record_refreshes answered no row".into(),
                        ))
                    }),
                    Err(Failed::Before(e) | Failed::AtCommit(e)) => Err(e),
                };
                let _ = p.reply.send(answer);
            }
        }
        Err(Failed::Before(e) | Failed::AtCommit(e)) => {
            for p in batch {
                let _ = p.reply.send(Err(error::for_each_caller(
                    &e,
                    "recording a batch of refresh outcomes",
                )));
            }
        }
    }
}

/// One transaction: the batch call, then COMMIT; this handle's event
/// streams are woken after it. Answers in the batch's order.
async fn run(store: &PgStore, batch: &[Pending]) -> Result<Vec<Result<u32, StoreError>>, Failed> {
    let cx = store.inner.events.begin();
    let mut conn = Conn(Some(store.client().await.map_err(Failed::Before)?));
    let out = async {
        let work = async {
            let tx = conn.client()?.transaction().await?;
            let rows = call(&tx, &cx, batch).await?;
            let answers = answers(batch, &rows, &cx)?;
            Ok::<_, StoreError>((tx, answers))
        };
        let (tx, answers) = store
            .within(Some(store.call_deadline), work)
            .await
            .map_err(Failed::Before)?;
        tx.commit().await.map_err(|e| Failed::AtCommit(e.into()))?;
        Ok(answers)
    }
    .await;
    // A connection abandoned or left useless is closed with `conn`, as in
    // `PgStore::transact`.
    match &out {
        Ok(_) => {
            store.inner.events.committed(&cx);
            conn.release();
        }
        Err(Failed::Before(e) | Failed::AtCommit(e)) if !error::breaks_connection(e) => {
            conn.release()
        }
        Err(_) => {}
    }
    out
}

/// The batch as the function's arrays, and its rows back.
async fn call(
    tx: &super::Tx<'_>,
    cx: &EventCx,
    batch: &[Pending],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let n = batch.len();
    let mut tenant = Vec::with_capacity(n);
    let mut fence = Vec::with_capacity(n);
    let mut f_host: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut f_holder: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut f_epoch: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut f_issued: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut ok = Vec::with_capacity(n);
    let mut state: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut err: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut token: Vec<Option<&[u8]>> = Vec::with_capacity(n);
    let mut token_type: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut issued: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut expires: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut due = Vec::with_capacity(n);
    let mut now = Vec::with_capacity(n);
    for p in batch {
        tenant.push(p.id.as_str());
        let (kind, host, holder, epoch, at) = match &p.fence {
            WriteFence::None => ("none", None, None, None, None),
            WriteFence::Lease {
                host,
                holder,
                epoch,
            } => (
                "lease",
                Some(host.as_str()),
                Some(holder.as_str()),
                Some(*epoch),
                None,
            ),
            WriteFence::TokenIssuedAt(at) => ("issued", None, None, None, at.map(|t| t.0)),
        };
        fence.push(kind);
        f_host.push(host);
        f_holder.push(holder);
        f_epoch.push(epoch);
        f_issued.push(at);
        match &p.record {
            RefreshRecord::Success { token: t, renew_at } => {
                ok.push(true);
                state.push(None);
                err.push(None);
                token.push(p.sealed.as_deref());
                token_type.push(Some(t.token_type.as_str()));
                issued.push(Some(t.issued_at.0));
                expires.push(Some(t.expires_at.0));
                due.push(renew_at.0);
            }
            RefreshRecord::Failure {
                state: s,
                error,
                retry_at,
            } => {
                ok.push(false);
                state.push(Some(s.as_str()));
                err.push(Some(error.as_str()));
                token.push(None);
                token_type.push(None);
                issued.push(None);
                expires.push(None);
                due.push(retry_at.0);
            }
        }
        now.push(p.now.0);
    }
    let (kind, recovered, outbox) = (
        TenantEventKind::StateChanged.as_str(),
        event_messages::RECOVERED,
        cx.outbox(),
    );
    let params: [&(dyn ToSql + Sync); 19] = [
        &tenant,
        &fence,
        &f_host,
        &f_holder,
        &f_epoch,
        &f_issued,
        &ok,
        &state,
        &err,
        &token,
        &token_type,
        &issued,
        &expires,
        &due,
        &now,
        &kind,
        &recovered,
        &outbox,
        &EVENTS_LOCK,
    ];
    let stmt = tx
        .prepare_cached(
            "SELECT r_ord, r_outcome, r_failures, r_event_id, r_host, r_holder, r_epoch, \
                    r_stored_issued \
             FROM pbx_record_refreshes($1::text[], $2::text[], $3::text[], $4::text[], \
                 $5::bigint[], $6::bigint[], $7::boolean[], $8::text[], $9::text[], \
                 $10::bytea[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[], \
                 $15::bigint[], $16::text, $17::text, $18::boolean, $19::bigint)",
        )
        .await?;
    Ok(tx.query(&stmt, &params).await?)
}

/// Each outcome's answer from its row, as one transaction per outcome
/// would have answered (the same `Fenced` reasons as SQLite's).
fn answers(
    batch: &[Pending],
    rows: &[tokio_postgres::Row],
    cx: &EventCx,
) -> Result<Vec<Result<u32, StoreError>>, StoreError> {
    if rows.len() != batch.len() {
        return Err(StoreError::Corrupt(format!(
            "pbx_record_refreshes answered {} rows for {} outcomes",
            rows.len(),
            batch.len()
        )));
    }
    let mut out = Vec::with_capacity(batch.len());
    for (i, (p, r)) in batch.iter().zip(rows).enumerate() {
        let ord: i32 = r.try_get(0)?;
        if usize::try_from(ord).ok() != Some(i + 1) {
            return Err(StoreError::Corrupt(format!(
                "pbx_record_refreshes answered row {ord} in place {}",
                i + 1
            )));
        }
        let tenant = p.id.as_str();
        let outcome: &str = r.try_get(1)?;
        let fenced = |reason: String| {
            Err(StoreError::Fenced {
                tenant: tenant.to_owned(),
                reason,
            })
        };
        out.push(match (outcome, &p.fence) {
            ("ok", _) => {
                if let Some(event) = r.try_get::<_, Option<i64>>(3)? {
                    cx.appended(event);
                }
                let failures: i64 = r.try_get::<_, Option<i64>>(2)?.unwrap_or_default();
                u32::try_from(failures).map_err(|_| {
                    StoreError::Corrupt(format!(
                        "consecutive_failures of tenant {tenant} is {failures}"
                    ))
                })
            }
            ("not_found", _) => Err(StoreError::TenantNotFound(tenant.to_owned())),
            ("moved", WriteFence::Lease { host, .. }) => {
                let now_on: String = r.try_get::<_, Option<String>>(4)?.unwrap_or_default();
                fenced(format!(
                    "the tenant moved from PBX host {host} to {now_on}"
                ))
            }
            (
                "lease",
                WriteFence::Lease {
                    host,
                    holder,
                    epoch,
                },
            ) => {
                let l_holder: String = r.try_get::<_, Option<String>>(5)?.unwrap_or_default();
                let l_epoch: i64 = r.try_get::<_, Option<i64>>(6)?.unwrap_or_default();
                fenced(format!(
                    "replica {holder} no longer holds the renewal duty of {host} at epoch {epoch} (held by {l_holder} at epoch {l_epoch})"
                ))
            }
            ("token", WriteFence::TokenIssuedAt(_)) => {
                let stored: Option<i64> = r.try_get(7)?;
                fenced(format!(
                    "another replica stored a newer token (issued at {}) while this one was fetching",
                    stored.map_or_else(|| "-".into(), |t| UnixMs(t).to_string())
                ))
            }
            (other, _) => {
                return Err(StoreError::Corrupt(format!(
                    "pbx_record_refreshes answered {other:?} for tenant {tenant}"
                )))
            }
        });
    }
    Ok(out)
}
