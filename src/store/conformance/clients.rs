//! ClientRepo: API clients are listed with their role and patterns,
//! revoking keeps the first time and is seen at once by the key table;
//! only the key's SHA-256 is stored.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::clients::{hash_key, ClientInfo, Role};
use crate::store::NewClientRow;

pub(crate) fn row(id: &str, role: Role, patterns: &[&str]) -> NewClientRow {
    NewClientRow {
        info: ClientInfo {
            client_id: id.into(),
            name: format!("name {id}"),
            role,
            tenant_patterns: patterns.iter().map(|s| s.to_string()).collect(),
            created_at: T0,
            created_by: "test".into(),
            revoked_at: None,
        },
        key_hash: hash_key(&format!("ptk_{id}")),
    }
}

pub(crate) async fn insert_list_revoke<H: Harness>(h: &H) {
    let store = open_store(h).await;
    assert!(!store.has_active_admin().await.unwrap());
    assert!(store.list_clients().await.unwrap().is_empty());
    store
        .insert_client(row("cl_a", Role::Admin, &[]))
        .await
        .unwrap();
    store
        .insert_client(row("cl_r", Role::Reader, &["acme-*", "b"]))
        .await
        .unwrap();
    assert!(store.has_active_admin().await.unwrap());
    let all = store.list_clients().await.unwrap();
    assert_eq!(all.len(), 2);
    let reader = all.iter().find(|c| c.client_id == "cl_r").unwrap();
    assert_eq!(reader, &row("cl_r", Role::Reader, &["acme-*", "b"]).info);
    let active = store.active_client_keys().await.unwrap();
    assert_eq!(active.len(), 2);
    let admin = active.iter().find(|(_, c)| c.client_id == "cl_a").unwrap();
    assert_eq!(admin.0, hash_key("ptk_cl_a"));
    assert_eq!(admin.1.role, Role::Admin);

    let revoked = store
        .revoke_client("cl_a", T0.plus_ms(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revoked.client_id, "cl_a");
    assert_eq!(revoked.revoked_at, Some(T0.plus_ms(5)));
    // Revoking again keeps the first time.
    let again = store
        .revoke_client("cl_a", T0.plus_ms(9))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.revoked_at, Some(T0.plus_ms(5)));
    assert!(store.revoke_client("cl_none", T0).await.unwrap().is_none());
    assert!(!store.has_active_admin().await.unwrap());
    // Listed still (revoked), but its key no longer works.
    let all = store.list_clients().await.unwrap();
    let a = all.iter().find(|c| c.client_id == "cl_a").unwrap();
    assert_eq!(a.revoked_at, Some(T0.plus_ms(5)));
    let active = store.active_client_keys().await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].0, hash_key("ptk_cl_r"));
}

pub(crate) async fn the_key_itself_is_not_stored<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_client(row("cl_a", Role::Admin, &[]))
        .await
        .unwrap();
    let stored = h
        .query_bytes("SELECT key_hash FROM api_clients WHERE client_id = 'cl_a'")
        .await
        .unwrap();
    assert_eq!(stored, hash_key("ptk_cl_a").to_vec());
    let clear = h
        .query_i64(
            "SELECT count(*) FROM api_clients WHERE name LIKE '%ptk_%' \
             OR created_by LIKE '%ptk_%'",
        )
        .await;
    assert_eq!(clear, 0);
}
