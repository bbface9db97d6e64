//! Lifecycle: the heartbeat is a committed write, the master key check
//! writes its check value once and then verifies it, a closed handle
//! refuses work, and a database whose schema is newer than the backend
//! knows is refused at opening with its data untouched. Housekeeping
//! (checkpoint, optimizer statistics, snapshots) keeps the data.

use super::fixtures::*;
use super::{open_store, Harness};
use crate::domain::TenantState;
use crate::store::{KeyCheck, StoreError};

pub(crate) async fn heartbeat_writes_the_time<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store.heartbeat(T0).await.unwrap();
    store.heartbeat(T0.plus_ms(5)).await.unwrap();
    let at = h.query_i64("SELECT at FROM heartbeat WHERE id = 1").await;
    assert_eq!(at, T0.0 + 5);
    assert_eq!(h.query_i64("SELECT count(*) FROM heartbeat").await, 1);
    assert!(!store.backend_name().is_empty());
}

pub(crate) async fn check_master_key_initializes_then_verifies<H: Harness>(h: &H) {
    let store = open_store(h).await;
    assert_eq!(
        store.check_master_key().await.unwrap(),
        KeyCheck::Initialized
    );
    assert_eq!(store.check_master_key().await.unwrap(), KeyCheck::Verified);
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.close().await.unwrap();
    let again = open_store(h).await;
    assert_eq!(again.check_master_key().await.unwrap(), KeyCheck::Verified);
    // A wrong key on an initialized, empty-of-tenants database is refused
    // as well (the check value, not a tenant's secret, finds it).
    again.delete_tenant(&tid("acme"), T0).await.unwrap();
    again.close().await.unwrap();
    let wrong = h.open(other_keys()).await.unwrap();
    assert!(matches!(
        wrong.check_master_key().await,
        Err(StoreError::WrongMasterKey { .. })
    ));
}

pub(crate) async fn a_closed_store_refuses_work<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    let clone = store.clone();
    store.close().await.unwrap();
    assert!(clone.get_tenant(&tid("acme")).await.is_err());
    assert!(clone.delete_tenant(&tid("acme"), T0).await.is_err());
    assert!(clone.heartbeat(T0).await.is_err());
    // What was written before closing is there.
    let again = open_store(h).await;
    assert!(again.get_tenant(&tid("acme")).await.unwrap().is_some());
}

pub(crate) async fn a_newer_schema_is_refused_and_the_data_untouched<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.close().await.unwrap();
    let latest = h.schema_version().await;
    assert!(latest >= 1, "schema version {latest}");
    h.set_schema_version(latest + 1).await;
    match h.open(keys()).await {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (latest + 1, latest));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert_eq!(h.schema_version().await, latest + 1, "left as found");
    assert_eq!(h.query_i64("SELECT count(*) FROM tenants").await, 1);
    // Put back, it opens with everything in it.
    h.set_schema_version(latest).await;
    let again = open_store(h).await;
    let creds = again
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
}

pub(crate) async fn housekeeping_keeps_the_data<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", TenantState::Active))
        .await
        .unwrap();
    store.wal_checkpoint().await.unwrap();
    store.optimize().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    match store.backup_into(dir.path(), T0, 2).await {
        Ok(info) => {
            assert!(info.path.starts_with(dir.path()), "{info:?}");
            assert!(info.bytes > 0 && info.pruned.is_empty(), "{info:?}");
        }
        // A backend whose backups are the database's own.
        Err(StoreError::Unsupported(_)) => {}
        Err(e) => panic!("backup_into: {e}"),
    }
    let creds = store
        .trusted_credentials(&tid("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.client_secret.expose(), "secret-acme");
}
