//! The trusted credentials every renewal reads, in batches on PostgreSQL:
//! the reads that arrive while one runs are answered together by the next
//! statement (one primary-key lookup per tenant), as refresh outcomes are
//! committed together (`refresh_batch.rs`). With no load the first caller
//! reads at once. Each caller's secret is opened and checked on its own,
//! so one that does not open fails only its own renewal.
//!
//! Does not: read the public app's credentials, or write anything.

use std::collections::HashMap;
use tokio::sync::oneshot;

use super::credentials::row_from;
use super::drainer::Drainer;
use super::{error, PgStore};
use crate::domain::{AppCredentials, TenantId};
use crate::store::batch_queue::SharedBatchQueue;
use crate::store::seal::credentials::open_checked;
use crate::store::StoreError;

/// Most reads answered by one statement.
const MAX_BATCH: usize = 256;

/// One primary-key lookup per id (see `tokens::SELECT_IDS` for why not
/// `= ANY($1)`).
const SELECT: &str = "SELECT x.* FROM (SELECT DISTINCT unnest($1::text[]) AS id) w \
     CROSS JOIN LATERAL (SELECT c.tenant_id, c.kind, c.client_id, c.secret_sealed, \
            c.redirect_uri, t.pbx_base_url \
         FROM credentials c JOIN tenants t ON t.tenant_id = c.tenant_id \
         WHERE c.tenant_id = w.id COLLATE \"C\" AND c.kind = 'trusted' OFFSET 0) x";

type Answer = Result<Option<AppCredentials>, StoreError>;

pub(super) struct Pending {
    id: TenantId,
    reply: oneshot::Sender<Answer>,
}

/// The reads waiting, and whether a reader is running (one per store
/// handle).
pub(super) type Queue = SharedBatchQueue<Pending>;

impl PgStore {
    /// The tenant's trusted app, read with the others waiting.
    pub(super) async fn trusted_credentials_batched(&self, id: TenantId) -> Answer {
        let (reply, answer) = oneshot::channel();
        let pending = Pending { id, reply };
        if let Some(drainer) = Drainer::push(self, |s| &s.inner.credential_reads, pending) {
            tokio::spawn(drain(drainer));
        }
        answer
            .await
            .map_err(|_| StoreError::Task("the credentials reader stopped".into()))?
    }
}

async fn drain(mut drainer: Drainer<Pending>) {
    while let Some(batch) = drainer.next_batch(MAX_BATCH) {
        read(drainer.store(), batch).await;
    }
}

async fn read(store: &PgStore, batch: Vec<Pending>) {
    let ids: Vec<&str> = batch.iter().map(|p| p.id.as_str()).collect();
    let rows = match store.autocommit(SELECT, &[&ids]).await {
        Ok(rows) => rows,
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(error::for_each_caller(
                    &e,
                    "reading a batch of credentials",
                )));
            }
            return;
        }
    };
    let mut found: HashMap<String, &tokio_postgres::Row> = HashMap::with_capacity(rows.len());
    for r in &rows {
        if let Ok(id) = r.try_get::<_, String>(0) {
            found.insert(id, r);
        }
    }
    for p in batch {
        let answer = match found.get(p.id.as_str()) {
            None => Ok(None),
            Some(r) => row_from(r).and_then(|row| {
                let client_secret = open_checked(&store.inner.keyring, &row)?;
                Ok(Some(AppCredentials {
                    client_id: row.client_id,
                    client_secret,
                }))
            }),
        };
        let _ = p.reply.send(answer);
    }
}
