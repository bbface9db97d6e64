//! The `renewal_jobs` table on PostgreSQL: when each tenant's token is
//! next due and how many attempts failed in a row, the scheduler's due
//! queries (earliest first over the `(due_at, pbx_host, tenant_id)` index)
//! and the per-host load report.
//!
//! Does not: pick due times, back off or rate-limit (renewal does).

use super::{execute, limit as lim, query, query_opt, Tx};
use crate::clock::UnixMs;
use crate::domain::TenantId;
use crate::store::rows::parse_id;
use crate::store::{DueJob, HostLoad, ReadyJobs, StoreError};

/// The states in which `TenantState::is_renewing` holds, as SQL (a test
/// checks it against the domain).
macro_rules! renewing_states {
    () => {
        "('active', 'renewal_failing', 'credentials_rejected')"
    };
}
pub(super) use renewing_states;

/// What an upsert does to the failed-attempts counter.
#[derive(Clone, Copy, Debug)]
pub(super) enum Attempts {
    Reset,
    Keep,
}

pub(super) async fn upsert(
    tx: &Tx<'_>,
    tenant_id: &str,
    host: &str,
    due_at: UnixMs,
    attempts: Attempts,
) -> Result<(), StoreError> {
    let sql = match attempts {
        Attempts::Reset => {
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET pbx_host = excluded.pbx_host, \
                 due_at = excluded.due_at, attempts = 0"
        }
        Attempts::Keep => {
            "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (tenant_id) DO UPDATE SET pbx_host = excluded.pbx_host, \
                 due_at = excluded.due_at"
        }
    };
    execute(tx, sql, &[&tenant_id, &host, &due_at.0]).await?;
    Ok(())
}

/// The tenant of job `j` renews. A per-row check (`OFFSET 0` keeps the
/// planner from turning it into a join): the due queries then always walk
/// the `(due_at, pbx_host, tenant_id)` index in order and stop at their
/// limit. As a join, with statistics that lag behind a bulk of new tenants
/// (seeding, an import), the planner hashed every tenant and sorted every
/// due job on each scheduler pass: 10 to 45 ms a pass instead of under 1
/// ms, the PostgreSQL scheduler's largest cost under a backlog.
macro_rules! renews {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = j.tenant_id AND t.state IN ",
            renewing_states!(),
            " OFFSET 0)"
        )
    };
}

const DUE_SQL: &str = concat!(
    "SELECT j.tenant_id, j.pbx_host, j.due_at FROM renewal_jobs j \
     WHERE j.due_at <= $1 AND ",
    renews!(),
    " ORDER BY j.due_at, j.pbx_host, j.tenant_id LIMIT $2"
);

/// Due jobs of renewing tenants, earliest first, skipping the hosts in
/// `$2` (all their workers are busy).
const READY_SQL: &str = concat!(
    "SELECT j.tenant_id, j.pbx_host, j.due_at FROM renewal_jobs j \
     WHERE j.due_at <= $1 AND j.pbx_host <> ALL($2::text[]) AND ",
    renews!(),
    " ORDER BY j.due_at, j.pbx_host, j.tenant_id LIMIT $3"
);

/// When the pass must look again: the first job due after `$1`.
const NEXT_READY_SQL: &str = concat!(
    "SELECT j.due_at FROM renewal_jobs j \
     WHERE j.due_at > $1 AND j.pbx_host <> ALL($2::text[]) AND ",
    renews!(),
    " ORDER BY j.due_at LIMIT 1"
);

fn due_job(r: &tokio_postgres::Row) -> Result<DueJob, StoreError> {
    let id: String = r.try_get(0)?;
    Ok(DueJob {
        tenant_id: parse_id(&id)?,
        host: r.try_get(1)?,
        due_at: UnixMs(r.try_get(2)?),
    })
}

pub(super) async fn due(tx: &Tx<'_>, now: UnixMs, limit: u32) -> Result<Vec<DueJob>, StoreError> {
    query(tx, DUE_SQL, &[&now.0, &lim(limit)])
        .await?
        .iter()
        .map(due_job)
        .collect()
}

pub(super) async fn ready(
    tx: &Tx<'_>,
    now: UnixMs,
    skip_hosts: &[String],
    limit: u32,
) -> Result<ReadyJobs, StoreError> {
    let skip: Vec<&str> = skip_hosts.iter().map(String::as_str).collect();
    let due = query(tx, READY_SQL, &[&now.0, &skip, &lim(limit)])
        .await?
        .iter()
        .map(due_job)
        .collect::<Result<Vec<_>, _>>()?;
    let next_due_at = query_opt(tx, NEXT_READY_SQL, &[&now.0, &skip])
        .await?
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()?
        .map(UnixMs);
    Ok(ReadyJobs { due, next_due_at })
}

/// Creates or moves the job; the host comes from the tenant row. Returns
/// whether the tenant exists.
async fn move_job(tx: &Tx<'_>, tenant_id: &str, due_at: UnixMs) -> Result<bool, StoreError> {
    let changed = execute(
        tx,
        "INSERT INTO renewal_jobs (tenant_id, pbx_host, due_at, attempts) \
         SELECT tenant_id, pbx_host, $2, 0 FROM tenants WHERE tenant_id = $1 \
         ON CONFLICT (tenant_id) DO UPDATE SET due_at = excluded.due_at",
        &[&tenant_id, &due_at.0],
    )
    .await?;
    Ok(changed > 0)
}

pub(super) async fn reschedule(
    tx: &Tx<'_>,
    tenant_id: &str,
    due_at: UnixMs,
) -> Result<(), StoreError> {
    if move_job(tx, tenant_id, due_at).await? {
        Ok(())
    } else {
        Err(StoreError::TenantNotFound(tenant_id.to_owned()))
    }
}

pub(super) async fn reschedule_many(
    tx: &Tx<'_>,
    jobs: &[(TenantId, UnixMs)],
) -> Result<(), StoreError> {
    for (id, due_at) in jobs {
        // A tenant deleted since the caller looked is simply skipped.
        move_job(tx, id.as_str(), *due_at).await?;
    }
    Ok(())
}

pub(super) async fn host_loads(tx: &Tx<'_>) -> Result<Vec<HostLoad>, StoreError> {
    let rows = query(
        tx,
        concat!(
            "SELECT t.pbx_host, count(*), count(k.tenant_id), \
                    coalesce(sum(k.expires_at - k.issued_at), 0)::bigint \
             FROM tenants t LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
             WHERE t.state IN ",
            renewing_states!(),
            " GROUP BY t.pbx_host ORDER BY t.pbx_host"
        ),
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let renewing: i64 = r.try_get(1)?;
            let with_token: i64 = r.try_get(2)?;
            Ok(HostLoad {
                host: r.try_get(0)?,
                renewing_tenants: u64::try_from(renewing).unwrap_or(0),
                lifetime_ms_sum: r.try_get(3)?,
                tenants_with_token: u64::try_from(with_token).unwrap_or(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::domain::TenantState;

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
