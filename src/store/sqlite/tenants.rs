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

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[tokio::test]
    async fn insert_then_get_joins_everything() {
        let t = open_temp();
        t.store
            .insert_tenant(new_tenant("acme", TenantState::Active))
            .await
            .unwrap();
        let got = t.store.get_tenant(&tid("acme")).await.unwrap().unwrap();
        assert_eq!(got.id, tid("acme"));
        assert_eq!(got.display_name, "Tenant acme");
        assert_eq!(got.base_url.as_str(), "https://pbx.example.com");
        assert_eq!(got.state, TenantState::Active);
        assert_eq!(got.trusted_client_id.as_deref(), Some("app-acme"));
        assert_eq!(got.token_expires_at, Some(T0.plus_ms(HOUR)));
        assert_eq!(got.next_refresh_at, Some(T0.plus_ms(HOUR * 8 / 10)));
        assert_eq!(got.last_refresh_at, Some(T0));
        assert_eq!(got.consecutive_failures, 0);
        assert_eq!((got.created_at, got.updated_at), (T0, T0));
        assert!(got.pbx_user.is_none() && got.last_error.is_none());
        assert!(t.store.get_tenant(&tid("nobody")).await.unwrap().is_none());

        // A pending tenant has only its public app.
        let mut p = new_tenant("pend", TenantState::PendingAuthorization);
        p.public_app = Some((app("pub-id", "pub-secret"), "https://crm/cb".into()));
        t.store.insert_tenant(p).await.unwrap();
        let got = t.store.get_tenant(&tid("pend")).await.unwrap().unwrap();
        assert!(got.trusted_client_id.is_none() && got.token_expires_at.is_none());
        assert!(got.next_refresh_at.is_none() && got.last_refresh_at.is_none());
        let (public, redirect) = t
            .store
            .public_credentials(&tid("pend"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(public.client_id, "pub-id");
        assert_eq!(public.client_secret.expose(), "pub-secret");
        assert_eq!(redirect, "https://crm/cb");
        assert!(t
            .store
            .trusted_credentials(&tid("pend"))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn list_pages_by_id_and_filters_by_state() {
        let t = open_temp();
        let states = [
            TenantState::Active,
            TenantState::Disabled,
            TenantState::PendingAuthorization,
        ];
        let ts = (0..25)
            .map(|i| new_tenant(&format!("t{i:02}"), states[i % 3]))
            .collect();
        t.store.insert_tenants(ts).await.unwrap();

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = t.store.list_tenants(after.clone(), 10, None).await.unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 10);
            after = page.last().map(|x| x.id.clone());
            seen.extend(page.into_iter().map(|x| x.id.to_string()));
        }
        let expected: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
        assert_eq!(seen, expected);

        let disabled = t
            .store
            .list_tenants(Some(tid("t03")), 3, Some(TenantState::Disabled))
            .await
            .unwrap();
        let ids: Vec<&str> = disabled.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, ["t04", "t07", "t10"]);
        assert!(disabled.iter().all(|x| x.state == TenantState::Disabled));
        let none = t
            .store
            .list_tenants(None, 10, Some(TenantState::RenewalFailing))
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(t
            .store
            .list_tenants(None, 0, None)
            .await
            .unwrap()
            .is_empty());

        let counts = t.store.count_by_state().await.unwrap();
        assert_eq!(counts.len(), TenantState::ALL.len());
        let get = |s| counts.iter().find(|(st, _)| *st == s).unwrap().1;
        assert_eq!(get(TenantState::Active), 9);
        assert_eq!(get(TenantState::Disabled), 8);
        assert_eq!(get(TenantState::PendingAuthorization), 8);
        assert_eq!(get(TenantState::RenewalFailing), 0);
    }
}
