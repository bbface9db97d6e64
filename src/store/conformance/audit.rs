//! AuditLog: ids grow, pages come newest first by id, `before_id` pages
//! without gaps or repeats, filters by tenant and client are exact, the
//! limit holds.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::store::{AuditEntry, AuditQuery, NewAuditEvent, Store};

fn event(i: i64, tenant: Option<&str>) -> NewAuditEvent {
    NewAuditEvent {
        at: T0.plus_ms(i),
        client_id: if i % 2 == 0 { "cl_even" } else { "cl_odd" }.into(),
        action: "tenant.update".into(),
        tenant_id: tenant.map(str::to_owned),
        outcome: if i % 5 == 0 { "NOT_FOUND" } else { "ok" }.into(),
        detail: format!("event {i}"),
    }
}

pub(crate) async fn append_and_page_newest_first<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let tenant = if i < 4 { Some("acme") } else { None };
        ids.push(store.insert_audit(event(i, tenant)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let page = |before_id, tenant: Option<&str>, client: Option<&str>| AuditQuery {
        before_id,
        tenant_id: tenant.map(str::to_owned),
        client_id: client.map(str::to_owned),
        limit: 3,
    };
    let first = store.list_audit(page(None, None, None)).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.event.at).collect::<Vec<_>>(),
        vec![T0.plus_ms(6), T0.plus_ms(5), T0.plus_ms(4)]
    );
    // Stored whole.
    assert_eq!(
        first[0],
        AuditEntry {
            id: ids[6],
            event: event(6, None)
        }
    );
    let second = store
        .list_audit(page(Some(first[2].id), None, None))
        .await
        .unwrap();
    assert_eq!(second[0].event, event(3, Some("acme")));
    let acme = store
        .list_audit(AuditQuery {
            limit: 100,
            ..page(None, Some("acme"), None)
        })
        .await
        .unwrap();
    assert_eq!(acme.len(), 4);
    let odd = store
        .list_audit(AuditQuery {
            limit: 100,
            ..page(None, None, Some("cl_odd"))
        })
        .await
        .unwrap();
    assert_eq!(odd.len(), 3);
    let both = store
        .list_audit(AuditQuery {
            limit: 100,
            ..page(None, Some("acme"), Some("cl_odd"))
        })
        .await
        .unwrap();
    let at: Vec<i64> = both.iter().map(|e| e.event.at.0 - T0.0).collect();
    assert_eq!(at, [3, 1]);
    let none = store
        .list_audit(AuditQuery {
            limit: 100,
            ..page(None, Some("nobody"), None)
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let zero = store
        .list_audit(AuditQuery {
            limit: 0,
            ..page(None, None, None)
        })
        .await
        .unwrap();
    assert!(zero.is_empty());
}

/// Every page of a filtered listing, following `before_id`.
async fn all_pages(store: &Store, tenant: Option<&str>, client: Option<&str>) -> Vec<i64> {
    let mut out = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_audit(AuditQuery {
                before_id,
                tenant_id: tenant.map(str::to_owned),
                client_id: client.map(str::to_owned),
                limit: 4,
            })
            .await
            .unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else {
            return out;
        };
        before_id = Some(last.id);
        out.extend(page.iter().map(|e| e.id));
    }
}

pub(crate) async fn pages_have_no_gaps_or_repeats_under_filters<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let tenants = [Some("acme"), Some("beta"), None];
    let mut all = Vec::new();
    for i in 0..41 {
        let e = event(i, tenants[(i % 3) as usize]);
        all.push((store.insert_audit(e.clone()).await.unwrap(), e));
    }
    all.reverse();
    let want = |tenant: Option<&str>, client: Option<&str>| -> Vec<i64> {
        all.iter()
            .filter(|(_, e)| tenant.is_none_or(|t| e.tenant_id.as_deref() == Some(t)))
            .filter(|(_, e)| client.is_none_or(|c| e.client_id == c))
            .map(|(id, _)| *id)
            .collect()
    };
    for (tenant, client) in [
        (None, None),
        (Some("acme"), None),
        (None, Some("cl_even")),
        (Some("beta"), Some("cl_odd")),
    ] {
        let got = all_pages(&store, tenant, client).await;
        assert_eq!(got, want(tenant, client), "{tenant:?} {client:?}");
    }
    // Events appended while paging appear on no older page: a page
    // before an id holds only older events.
    let mid = all[10].0;
    store.insert_audit(event(99, Some("acme"))).await.unwrap();
    let page = store
        .list_audit(AuditQuery {
            before_id: Some(mid),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = page.iter().map(|e| e.id).collect();
    let older: Vec<i64> = all
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| *id < mid)
        .collect();
    assert_eq!(ids, older);
}
