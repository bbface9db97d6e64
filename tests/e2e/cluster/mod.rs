//! Helpers for the tests with several replicas on one PostgreSQL database:
//! real daemon processes (`procs.rs`), a TCP forwarder that cuts one
//! replica off from the database (`proxy.rs`), and reading who holds a
//! host's renewal duty (here).

pub mod procs;
pub mod proxy;

use std::time::{Duration, Instant};

use crate::postgres::testdb;

/// The live holder of the (one) simulator host's lease, if any.
pub async fn holder(db: &testdb::TestDb) -> Option<(String, i64)> {
    let row = db
        .client()
        .await
        .query_opt(
            "SELECT holder, epoch FROM host_leases \
             WHERE expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()?;
    Some((row.get(0), row.get(1)))
}

/// Waits up to `timeout` for a live holder other than `not`.
pub async fn wait_holder(
    db: &testdb::TestDb,
    timeout: Duration,
    not: Option<&str>,
) -> (String, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = holder(db).await.filter(|h| Some(h.0.as_str()) != not) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no lease holder (other than {not:?}) within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
