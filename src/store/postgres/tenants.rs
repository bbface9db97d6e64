//! Reading the `tenants` table: one tenant, keyset-paginated listing,
//! counts per state, with the token expiry, next renewal and trusted
//! client id joined in (as `sqlite/tenants.rs`).
//!
//! Does not: change rows (`tenant_writes.rs` does) or read a secret.

use tokio_postgres::Row;

use super::{limit as lim, query, query_opt, Tx};
use crate::domain::{Tenant, TenantId, TenantState};
use crate::store::rows::{parse_state, RawTenant};
use crate::store::StoreError;

/// One tenant with the columns from the other tables. They are scalar
/// subqueries, not joins, so a page reads only its own rows whatever plan
/// PostgreSQL picks: it does not carry `tenant_id > $1` over to joined
/// tables, and a merge join (or, with a generic plan, a hash join) over
/// the listing read every row before the page, O(n) per page.
macro_rules! select_tenant {
    () => {
        "SELECT t.tenant_id, t.display_name, t.pbx_base_url, t.state, \
                (SELECT c.client_id FROM credentials c \
                  WHERE c.tenant_id = t.tenant_id AND c.kind = 'trusted'), \
                (SELECT k.expires_at FROM tokens k WHERE k.tenant_id = t.tenant_id), \
                (SELECT j.due_at FROM renewal_jobs j WHERE j.tenant_id = t.tenant_id), \
                t.last_refresh_at, t.consecutive_failures, \
                t.last_error, t.pbx_user, t.created_at, t.updated_at \
         FROM tenants t "
    };
}

fn raw(r: &Row) -> Result<RawTenant, StoreError> {
    Ok(RawTenant {
        id: r.try_get(0)?,
        display_name: r.try_get(1)?,
        base_url: r.try_get(2)?,
        state: r.try_get(3)?,
        trusted_client_id: r.try_get(4)?,
        token_expires_at: r.try_get(5)?,
        next_refresh_at: r.try_get(6)?,
        last_refresh_at: r.try_get(7)?,
        consecutive_failures: r.try_get(8)?,
        last_error: r.try_get(9)?,
        pbx_user: r.try_get(10)?,
        created_at: r.try_get(11)?,
        updated_at: r.try_get(12)?,
    })
}

pub(super) async fn get(tx: &Tx<'_>, id: &str) -> Result<Option<Tenant>, StoreError> {
    let row = query_opt(
        tx,
        concat!(select_tenant!(), "WHERE t.tenant_id = $1"),
        &[&id],
    )
    .await?;
    row.map(|r| raw(&r)?.into_tenant()).transpose()
}

/// Keyset pagination: `tenant_id > after ORDER BY tenant_id LIMIT n` (the
/// id column is COLLATE "C": byte order, as SQLite's).
pub(super) async fn list(
    tx: &Tx<'_>,
    after: Option<&TenantId>,
    limit: u32,
    state: Option<TenantState>,
) -> Result<Vec<Tenant>, StoreError> {
    // Tenant ids are never empty, so "" sorts before every id.
    let after = after.map_or("", TenantId::as_str);
    let n = lim(limit);
    let rows = match state {
        None => {
            query(
                tx,
                concat!(
                    select_tenant!(),
                    "WHERE t.tenant_id > $1 ORDER BY t.tenant_id LIMIT $2"
                ),
                &[&after, &n],
            )
            .await?
        }
        Some(state) => {
            query(
                tx,
                concat!(
                    select_tenant!(),
                    "WHERE t.state = $3 AND t.tenant_id > $1 ORDER BY t.tenant_id LIMIT $2"
                ),
                &[&after, &n, &state.as_str()],
            )
            .await?
        }
    };
    rows.iter().map(|r| raw(r)?.into_tenant()).collect()
}

pub(super) async fn count_by_state(tx: &Tx<'_>) -> Result<Vec<(TenantState, u64)>, StoreError> {
    let mut counts: Vec<(TenantState, u64)> = TenantState::ALL.iter().map(|s| (*s, 0)).collect();
    for r in query(
        tx,
        "SELECT state, count(*) FROM tenants GROUP BY state",
        &[],
    )
    .await?
    {
        let state: String = r.try_get(0)?;
        let n: i64 = r.try_get(1)?;
        let state = parse_state("(any)", &state)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(counts)
}
