//! PostgreSQL failures as `StoreError`s. What matters to callers is whether
//! to try again: a lost connection, a server shutting down or starting up,
//! a standby that is read-only after a failover, a pool that found no
//! connection in time are `Unavailable` (nothing was written; retry), and
//! the connection they happened on is dropped so the pool reconnects
//! (a multi-host URL then finds the new primary). Everything else is
//! `Postgres` with the server's severity, SQLSTATE and message: never the
//! DETAIL line (it can quote row values) and never the URL.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// `e` again, for each caller of a batch that failed as a whole (a
/// `StoreError` is not `Clone`): unavailable and server errors as they
/// are, anything else as a task error saying what the batch was doing.
pub(super) fn for_each_caller(e: &StoreError, doing: &str) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Postgres(m) => StoreError::Postgres(m.clone()),
        other => StoreError::Task(format!("{doing}: {other}")),
    }
}

/// SQLSTATEs that mean "not now": the same call may work later.
fn transient_code(code: &SqlState) -> bool {
    let c = code.code();
    // Class 08: connection exception.
    c.starts_with("08")
        || matches!(
            *code,
            // admin_shutdown, crash_shutdown, cannot_connect_now (starting up)
            SqlState::ADMIN_SHUTDOWN
                | SqlState::CRASH_SHUTDOWN
                | SqlState::CANNOT_CONNECT_NOW
                // read_only_sql_transaction: a standby, or a primary demoted by a failover
                | SqlState::READ_ONLY_SQL_TRANSACTION
                // The server ended a session left idle inside a transaction
                // (its replica was paused): nothing was committed.
                | SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
                | SqlState::TOO_MANY_CONNECTIONS
                // Two transactions crossed; the loser may simply run again.
                | SqlState::T_R_SERIALIZATION_FAILURE
                | SqlState::T_R_DEADLOCK_DETECTED
        )
}

/// Whether `e` leaves its connection useless (closed, or on a server that
/// will not take writes): the pool must not hand it out again.
pub(super) fn breaks_connection(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let msg = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            return if transient_code(db.code()) {
                StoreError::Unavailable(msg)
            } else {
                StoreError::Postgres(msg)
            };
        }
        if let Some(code) = e.code() {
            if transient_code(code) {
                return StoreError::Unavailable(e.to_string());
            }
        }
        // No SQLSTATE: the connection itself failed (closed, I/O, TLS,
        // timeout), unless it is a value that does not convert.
        let io = e
            .source()
            .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        let text = e.to_string();
        if e.is_closed()
            || io
            || text.starts_with("error connecting")
            || text.starts_with("timeout")
            || text.contains("tls")
            || text.contains("TLS")
        {
            let detail = e.source().map(|s| format!(": {s}")).unwrap_or_default();
            StoreError::Unavailable(format!("{text}{detail}"))
        } else {
            StoreError::Postgres(text)
        }
    }
}

/// The pool's failures: no connection within the wait (the database is
/// slow or gone), or connecting failed.
pub(super) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => StoreError::from(e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "no database connection within the pool's timeout ({kind:?})"
        )),
        PoolError::Closed => StoreError::Task("the store is closed".into()),
        PoolError::NoRuntimeSpecified => {
            StoreError::Task("the connection pool has no runtime".into())
        }
        PoolError::PostCreateHook(e) => StoreError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_and_connection_codes_are_transient() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ] {
            assert!(transient_code(&code), "{code:?}");
        }
        for code in [
            SqlState::UNIQUE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::UNDEFINED_TABLE,
        ] {
            assert!(!transient_code(&code), "{code:?}");
        }
    }
}
