//! The `renewal_jobs` table: one row per tenant saying when its token is
//! next due for renewal and how many attempts failed in a row, plus the
//! per-host load report the scheduler uses to see capacity problems coming.
//!
//! Does not: pick due times, back off or rate-limit (renewal does); jobs of
//! tenants that are not renewing are kept but never reported as due.

use rusqlite::{params, Connection, OptionalExtension};

use super::{DueJob, HostLoad, ReadyJobs, StoreError};
use crate::clock::UnixMs;
/// The states in which `TenantState::is_renewing` holds, as SQL. A macro so
/// it can be spliced into static query strings; a test checks it against
/// the domain.
macro_rules! renewing_states {
    () => {
        "('active', 'renewal_failing', 'credentials_rejected')"
    };
}

/// What an upsert does to the failed-attempts counter.
#[derive(Clone, Copy, Debug)]
pub(super) enum Attempts {
    Reset,
    Keep,
    Increment,
}

pub(super) fn upsert(
    tx: &Connection,
    tenant_id: &str,
    host: &str,
    due_at: UnixMs,
    attempts: Attempts,
) -> Result<(), StoreError> {
    let sql = match attempts {
        Attempts::Reset => {
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) VALUES (?1, ?2, ?3, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET pbx_host = excluded.pbx_host, \
                 due_at = excluded.due_at, attempts = 0"
        }
        Attempts::Keep => {
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) VALUES (?1, ?2, ?3, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET pbx_host = excluded.pbx_host, \
                 due_at = excluded.due_at"
        }
        Attempts::Increment => {
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) VALUES (?1, ?2, ?3, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET pbx_host = excluded.pbx_host, \
                 due_at = excluded.due_at, attempts = renewal_jobs.attempts + 1"
        }
    };
    tx.prepare_cached(sql)?
        .execute(params![tenant_id, host, due_at.0])?;
    Ok(())
}

/// Due jobs walk the `(due_at, pbx_host, tenant_id)` index from the earliest job and
/// stop after `limit` matches. `CROSS JOIN` pins that join order: left to
/// itself the planner may start from the tenants' state index and sort
/// every renewing tenant's job on each call (a test checks the plan).
const DUE_SQL: &str = concat!(
    "SELECT j.tenant_id, j.pbx_host, j.due_at FROM renewal_jobs j \
     CROSS JOIN tenants t ON t.tenant_id = j.tenant_id \
     WHERE j.due_at <= ?1 AND t.state IN ",
    renewing_states!(),
    " ORDER BY j.due_at, j.pbx_host, j.tenant_id LIMIT ?2"
);

/// The scheduler's pass: due jobs of renewing tenants, earliest first,
/// skipping the hosts in the JSON array `?2` (all their workers are busy).
/// Skipped hosts' entries are passed over in the index (it carries the
/// host) without their rows being read.
const READY_SQL: &str = concat!(
    "SELECT j.tenant_id, j.pbx_host, j.due_at FROM renewal_jobs j INDEXED BY renewal_jobs_due \
     CROSS JOIN tenants t ON t.tenant_id = j.tenant_id \
     WHERE j.due_at <= ?1 AND j.pbx_host NOT IN (SELECT value FROM json_each(?2)) \
     AND t.state IN ",
    renewing_states!(),
    " ORDER BY j.due_at, j.pbx_host, j.tenant_id LIMIT ?3"
);

/// When the pass must look again: the first job due after `?1`, same
/// filters.
const NEXT_READY_SQL: &str = concat!(
    "SELECT j.due_at FROM renewal_jobs j INDEXED BY renewal_jobs_due \
     CROSS JOIN tenants t ON t.tenant_id = j.tenant_id \
     WHERE j.due_at > ?1 AND j.pbx_host NOT IN (SELECT value FROM json_each(?2)) \
     AND t.state IN ",
    renewing_states!(),
    " ORDER BY j.due_at LIMIT 1"
);

pub(super) fn due(conn: &Connection, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError> {
    let mut stmt = conn.prepare_cached(DUE_SQL)?;
    let mut rows = stmt.query(params![now.0, limit])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        out.push(DueJob {
            tenant_id: super::tenants::parse_id(&id)?,
            host: r.get(1)?,
            due_at: UnixMs(r.get(2)?),
        });
    }
    Ok(out)
}

pub(super) fn ready(
    conn: &Connection,
    now: UnixMs,
    skip_hosts: &[String],
    limit: u32,
) -> Result<ReadyJobs, StoreError> {
    let skip = serde_json::Value::from(skip_hosts.to_vec()).to_string();
    let mut stmt = conn.prepare_cached(READY_SQL)?;
    let mut rows = stmt.query(params![now.0, skip, limit])?;
    let mut due = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        due.push(DueJob {
            tenant_id: super::tenants::parse_id(&id)?,
            host: r.get(1)?,
            due_at: UnixMs(r.get(2)?),
        });
    }
    let next_due_at = conn
        .prepare_cached(NEXT_READY_SQL)?
        .query_row(params![now.0, skip], |r| r.get(0))
        .optional()?
        .map(UnixMs);
    Ok(ReadyJobs { due, next_due_at })
}

/// Creates or moves the job; the host comes from the tenant row. Returns
/// whether the tenant exists.
fn move_job(tx: &Connection, tenant_id: &str, due_at: UnixMs) -> Result<bool, StoreError> {
    let changed = tx
        .prepare_cached(
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) \
             SELECT tenant_id, pbx_host, ?2, 0 FROM tenants WHERE tenant_id = ?1 \
             ON CONFLICT (tenant_id) DO UPDATE SET due_at = excluded.due_at",
        )?
        .execute(params![tenant_id, due_at.0])?;
    Ok(changed > 0)
}

pub(super) fn reschedule(
    tx: &Connection,
    tenant_id: &str,
    due_at: UnixMs,
) -> Result<(), StoreError> {
    if move_job(tx, tenant_id, due_at)? {
        Ok(())
    } else {
        Err(StoreError::TenantNotFound(tenant_id.to_owned()))
    }
}

pub(super) fn reschedule_many(
    tx: &Connection,
    jobs: &[(crate::domain::TenantId, UnixMs)],
) -> Result<(), StoreError> {
    for (id, due_at) in jobs {
        // A tenant deleted since the caller looked is simply skipped.
        move_job(tx, id.as_str(), *due_at)?;
    }
    Ok(())
}

pub(super) fn host_loads(conn: &Connection) -> Result<Vec<HostLoad>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT t.pbx_host, count(*), count(k.tenant_id), \
                coalesce(sum(k.expires_at - k.issued_at), 0) \
         FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
         WHERE t.state IN ",
        renewing_states!(),
        " GROUP BY t.pbx_host ORDER BY t.pbx_host"
    ))?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let renewing: i64 = r.get(1)?;
        let with_token: i64 = r.get(2)?;
        out.push(HostLoad {
            host: r.get(0)?,
            renewing_tenants: u64::try_from(renewing).unwrap_or(0),
            lifetime_ms_sum: r.get(3)?,
            tenants_with_token: u64::try_from(with_token).unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::domain::TenantState;

    #[test]
    fn due_queries_walk_the_due_index_without_sorting() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("../../../migrations/0001_initial.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../../../migrations/0005_jobs_by_host.sql"))
            .unwrap();
        for (sql, n) in [
            (super::DUE_SQL, 2),
            (super::READY_SQL, 3),
            (super::NEXT_READY_SQL, 2),
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let params: Vec<String> = vec!["[]".into(); n];
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join("; ");
            assert!(plan.contains("renewal_jobs_due"), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }

    #[test]
    fn renewing_states_match_the_domain() {
        let names: Vec<String> = TenantState::ALL
            .iter()
            .filter(|s| s.is_renewing())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(renewing_states!(), format!("({})", names.join(", ")));
    }
}

#[cfg(test)]
mod job_tests {
    use super::super::testutil::*;
    use super::*;

    #[tokio::test]
    async fn the_scheduler_query_is_compiled_once() {
        // Each pass binds a new `now`, skip list and LIMIT; none of them may
        // make SQLite compile the statement again (see `configure`).
        let t = open_temp();
        insert_many(&t.store, 20).await;
        let reprepared = t
            .store
            .with_writer(|c, _| {
                for (i, skip) in [vec![], vec!["a".to_string()], vec![]].iter().enumerate() {
                    let limit = 5 + i as u32;
                    let ready = ready(c, T0.plus_ms(i as i64), skip, limit)?;
                    assert!(ready.due.len() <= limit as usize);
                }
                let stmt = c.prepare_cached(READY_SQL)?;
                Ok(stmt.get_status(rusqlite::StatementStatus::RePrepare))
            })
            .await
            .unwrap();
        assert_eq!(reprepared, 0);
    }
}
