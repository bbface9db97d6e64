//! Reading the `tenants` table: one tenant, keyset-paginated listing,
//! counts per state. Rows become `domain::Tenant` here, with the token
//! expiry, next renewal and trusted client id joined in.
//!
//! Does not: change rows (`tenant_writes.rs` does) or read a secret (a
//! `Tenant` holds none).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::StoreError;
use crate::domain::{Tenant, TenantId, TenantState};
use crate::store::rows::RawTenant;
pub(super) use crate::store::rows::{parse_base_url, parse_id, parse_state};

/// One tenant with the columns joined in from the other tables. A macro so
/// queries can be built with `concat!` and cached as static strings.
macro_rules! select_tenant {
    () => {
        "SELECT t.tenant_id, t.display_name, t.pbx_base_url, t.state, c.client_id, \
                k.expires_at, j.due_at, t.last_refresh_at, t.consecutive_failures, \
                t.last_error, t.pbx_user, t.created_at, t.updated_at \
         FROM tenants t \
         LEFT JOIN credentials c ON c.tenant_id = t.tenant_id AND c.kind = 'trusted' \
         LEFT JOIN tokens k ON k.tenant_id = t.tenant_id \
         LEFT JOIN renewal_jobs j ON j.tenant_id = t.tenant_id "
    };
}

/// A tenant row as SQLite gives it, before validation.
fn raw_from_row(r: &Row<'_>) -> rusqlite::Result<RawTenant> {
    Ok(RawTenant {
        id: r.get(0)?,
        display_name: r.get(1)?,
        base_url: r.get(2)?,
        state: r.get(3)?,
        trusted_client_id: r.get(4)?,
        token_expires_at: r.get(5)?,
        next_refresh_at: r.get(6)?,
        last_refresh_at: r.get(7)?,
        consecutive_failures: r.get(8)?,
        last_error: r.get(9)?,
        pbx_user: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Option<Tenant>, StoreError> {
    conn.prepare_cached(concat!(select_tenant!(), "WHERE t.tenant_id = ?1"))?
        .query_row([id], raw_from_row)
        .optional()?
        .map(RawTenant::into_tenant)
        .transpose()
}

/// Keyset pagination: `tenant_id > after ORDER BY tenant_id LIMIT n`, so a
/// page costs the same however deep it is and concurrent inserts never
/// shift rows between pages.
pub(super) fn list(
    conn: &Connection,
    after: Option<&TenantId>,
    limit: u32,
    state: Option<TenantState>,
) -> Result<Vec<Tenant>, StoreError> {
    // Tenant ids are never empty, so "" sorts before every id.
    let after = after.map_or("", TenantId::as_str);
    let raws = match state {
        None => conn
            .prepare_cached(concat!(
                select_tenant!(),
                "WHERE t.tenant_id > ?1 ORDER BY t.tenant_id LIMIT ?2"
            ))?
            .query_map(params![after, limit], raw_from_row)?
            .collect::<Result<Vec<_>, _>>()?,
        // Served by the (state, tenant_id) index in id order.
        Some(state) => conn
            .prepare_cached(concat!(
                select_tenant!(),
                "WHERE t.state = ?3 AND t.tenant_id > ?1 ORDER BY t.tenant_id LIMIT ?2"
            ))?
            .query_map(params![after, limit, state.as_str()], raw_from_row)?
            .collect::<Result<Vec<_>, _>>()?,
    };
    raws.into_iter().map(RawTenant::into_tenant).collect()
}

pub(super) fn count_by_state(conn: &Connection) -> Result<Vec<(TenantState, u64)>, StoreError> {
    let mut counts: Vec<(TenantState, u64)> = TenantState::ALL.iter().map(|s| (*s, 0)).collect();
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM tenants GROUP BY state")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(0)?;
        let n: i64 = r.get(1)?;
        let state = parse_state("(any)", &state)?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(counts)
}
