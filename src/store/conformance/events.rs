//! EventLog: every change writes its tenant events in its own transaction
//! (and nothing when nothing changed), ids ascend and pages resume without
//! gaps or repeats (also across handles), the outbox only when enabled and
//! in order per tenant, retention that never drops an undelivered event
//! and says how far it pruned, and a commit wakes the handle's subscribers.

use super::fixtures::*;
use super::flows::completion;
use super::{open_store, Harness};
use crate::clock::UnixMs;
use crate::domain::TenantState::{self, *};
use crate::store::{
    EventSettings, FlowUpdate, RefreshRecord, Store, TenantChanges, TenantEvent, TenantEventKind,
};

use TenantEventKind::*;

/// Every stored event, ascending.
async fn all(store: &Store) -> Vec<TenantEvent> {
    store.events_after(0, 1000).await.unwrap().events
}

/// (tenant, kind, previous, state) of each event: what most cases check.
fn shape(
    events: &[TenantEvent],
) -> Vec<(
    String,
    TenantEventKind,
    Option<TenantState>,
    Option<TenantState>,
)> {
    events
        .iter()
        .map(|e| {
            (
                e.tenant_id.as_str().to_owned(),
                e.kind,
                e.previous_state,
                e.state,
            )
        })
        .collect()
}

fn ok(at: UnixMs) -> RefreshRecord {
    RefreshRecord::Success {
        token: token("t", at),
        renew_at: at.plus_ms(HOUR),
    }
}

fn fail(state: TenantState, error: &str, at: UnixMs) -> RefreshRecord {
    RefreshRecord::Failure {
        state,
        error: error.into(),
        retry_at: at.plus_ms(HOUR),
    }
}

fn ev(
    t: &str,
    k: TenantEventKind,
    p: Option<TenantState>,
    s: TenantState,
) -> (
    String,
    TenantEventKind,
    Option<TenantState>,
    Option<TenantState>,
) {
    (t.to_owned(), k, p, Some(s))
}

pub(crate) async fn every_change_writes_its_events_and_no_change_none<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let a = tid("acme");
    store
        .insert_tenant(new_tenant("acme", Active))
        .await
        .unwrap();
    store
        .insert_tenants(vec![pending_tenant("p1"), new_tenant("b", Active)])
        .await
        .unwrap();
    // A renewal that changes nothing writes nothing (renewals stay cheap).
    store
        .record_refresh(&a, ok(T0), T0.plus_ms(1))
        .await
        .unwrap();
    let t2 = T0.plus_ms(2);
    let rejected = fail(CredentialsRejected, "the PBX rejected the credentials", t2);
    store
        .record_refresh(&a, rejected.clone(), t2)
        .await
        .unwrap();
    store
        .record_refresh(&a, rejected, T0.plus_ms(3))
        .await
        .unwrap();
    store
        .record_refresh(&a, ok(T0), T0.plus_ms(4))
        .await
        .unwrap();
    let rename = TenantChanges {
        display_name: Some("Acme".into()),
        ..TenantChanges::default()
    };
    store
        .update_tenant(&a, rename, T0.plus_ms(5))
        .await
        .unwrap();
    let disable = TenantChanges {
        state: Some(Disabled),
        ..TenantChanges::default()
    };
    store
        .update_tenant(&a, disable, T0.plus_ms(6))
        .await
        .unwrap();
    store.delete_tenant(&a, T0.plus_ms(7)).await.unwrap();

    let got = all(&store).await;
    assert_eq!(
        shape(&got),
        vec![
            ev("acme", Created, None, Active),
            ev("p1", Created, None, PendingAuthorization),
            ev("b", Created, None, Active),
            ev("acme", StateChanged, Some(Active), CredentialsRejected),
            ev("acme", StateChanged, Some(CredentialsRejected), Active),
            ev("acme", Updated, None, Active),
            ev("acme", Updated, None, Disabled),
            ev("acme", StateChanged, Some(Active), Disabled),
            ev("acme", Deleted, None, Disabled),
        ]
    );
    let ats: Vec<i64> = got.iter().map(|e| e.at.0 - T0.0).collect();
    assert_eq!(ats, vec![0, 0, 0, 2, 4, 5, 6, 6, 7]);
    assert_eq!(got[3].message, "the PBX rejected the credentials");
    assert!(got.iter().all(|e| !e.message.is_empty()));
    assert!(got.windows(2).all(|w| w[0].event_id < w[1].event_id));
    assert_eq!(store.latest_event_id().await.unwrap(), got[8].event_id);
}

pub(crate) async fn credential_faults_and_flows_write_state_changes<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", Active))
        .await
        .unwrap();
    store.insert_tenant(pending_tenant("p")).await.unwrap();
    store.insert_tenant(pending_tenant("q")).await.unwrap();
    let start = store.latest_event_id().await.unwrap();
    let (a, p, q) = (tid("acme"), tid("p"), tid("q"));
    let fault = "stored credentials do not open".to_owned();
    store
        .record_credential_fault(&a, fault.clone(), T0.plus_ms(HOUR), T0.plus_ms(1))
        .await
        .unwrap();
    // Already rejected, or pending: the state stays, no event.
    store
        .record_credential_fault(&a, fault.clone(), T0.plus_ms(HOUR), T0.plus_ms(2))
        .await
        .unwrap();
    store
        .record_credential_fault(&p, fault.clone(), T0.plus_ms(HOUR), T0.plus_ms(2))
        .await
        .unwrap();
    // A completed flow; a failed and a discarded one leave the state alone.
    store
        .begin_flow(&p, hash(1), T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    store
        .complete_flow(&p, completion(), T0.plus_ms(3))
        .await
        .unwrap();
    store
        .begin_flow(&q, hash(2), T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    let failed = FlowUpdate::Failed {
        orphan: None,
        error: "the PBX refused the code".into(),
    };
    store.advance_flow(&q, failed, T0.plus_ms(4)).await.unwrap();
    store
        .begin_flow(&q, hash(3), T0.plus_ms(HOUR), T0)
        .await
        .unwrap();
    store
        .discard_flow(&q, "retired".into(), T0.plus_ms(5))
        .await
        .unwrap();

    let got = store.events_after(start, 100).await.unwrap().events;
    assert_eq!(
        shape(&got),
        vec![
            ev("acme", StateChanged, Some(Active), CredentialsRejected),
            ev("p", AuthorizationCompleted, None, Active),
            ev("p", StateChanged, Some(PendingAuthorization), Active),
        ]
    );
    assert_eq!(got[0].message, fault);
    assert_eq!(got[0].at, T0.plus_ms(1));
    assert_eq!(got[1].at, T0.plus_ms(3));
}

pub(crate) async fn the_event_and_the_change_commit_together<H: Harness>(h: &H) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("acme", Active))
        .await
        .unwrap();
    let a = tid("acme");
    h.execute("ALTER TABLE tenant_events RENAME TO tenant_events_away")
        .await;
    // A renewal that changes no state needs no event, so it still works.
    store.record_refresh(&a, ok(T0), T0).await.unwrap();
    let before = tenant_view(&store, &a).await;
    assert!(store
        .insert_tenant(new_tenant("new", Active))
        .await
        .is_err());
    let disable = TenantChanges {
        state: Some(Disabled),
        ..TenantChanges::default()
    };
    assert!(store
        .update_tenant(&a, disable, T0.plus_ms(1))
        .await
        .is_err());
    let failing = fail(RenewalFailing, "PBX unreachable", T0);
    assert!(store
        .record_refresh(&a, failing, T0.plus_ms(1))
        .await
        .is_err());
    assert!(store
        .record_credential_fault(&a, "x".into(), T0, T0.plus_ms(1))
        .await
        .is_err());
    assert!(store.delete_tenant(&a, T0.plus_ms(1)).await.is_err());
    h.execute("ALTER TABLE tenant_events_away RENAME TO tenant_events")
        .await;

    assert!(store.get_tenant(&tid("new")).await.unwrap().is_none());
    assert_eq!(tenant_view(&store, &a).await, before);
    assert_eq!(
        shape(&all(&store).await),
        vec![ev("acme", Created, None, Active)]
    );

    // With the outbox on, its row is part of the same transaction.
    store.set_event_settings(EventSettings { outbox: true });
    h.execute("ALTER TABLE webhook_outbox RENAME TO webhook_outbox_away")
        .await;
    assert!(store
        .insert_tenant(new_tenant("new", Active))
        .await
        .is_err());
    h.execute("ALTER TABLE webhook_outbox_away RENAME TO webhook_outbox")
        .await;
    assert!(store.get_tenant(&tid("new")).await.unwrap().is_none());
    assert_eq!(all(&store).await.len(), 1);
}

pub(crate) async fn the_outbox_is_written_when_enabled_and_kept_in_order_per_tenant<H: Harness>(
    h: &H,
) {
    let store = open_store(h).await;
    store
        .insert_tenant(new_tenant("early", Active))
        .await
        .unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    store.set_event_settings(EventSettings { outbox: true });
    store.insert_tenant(new_tenant("a", Active)).await.unwrap();
    store.insert_tenant(new_tenant("b", Active)).await.unwrap();
    let rename = TenantChanges {
        display_name: Some("A".into()),
        ..TenantChanges::default()
    };
    store.update_tenant(&tid("a"), rename, T0).await.unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    let heads = store.outbox_due(T0, 10).await.unwrap();
    let names: Vec<(&str, TenantEventKind)> = heads
        .iter()
        .map(|o| (o.event.tenant_id.as_str(), o.event.kind))
        .collect();
    assert_eq!(names, vec![("a", Created), ("b", Created)]);
    assert_eq!(
        (heads[0].attempts, heads[0].last_error.as_deref()),
        (0, None)
    );
    let a_created = heads[0].event.event_id;
    let b_created = heads[1].event.event_id;

    // a's head failed: a's later event must not overtake it.
    store
        .outbox_failed(a_created, T0.plus_ms(HOUR), "503 from the receiver".into())
        .await
        .unwrap();
    let due = store.outbox_due(T0, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|o| o.event.event_id).collect::<Vec<_>>(),
        vec![b_created]
    );
    store.outbox_delivered(b_created).await.unwrap();
    store.outbox_delivered(b_created).await.unwrap();
    assert!(store.outbox_due(T0, 10).await.unwrap().is_empty());

    let later = T0.plus_ms(HOUR);
    let due = store.outbox_due(later, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event.event_id, a_created);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(due[0].next_attempt_at, later);
    assert_eq!(due[0].last_error.as_deref(), Some("503 from the receiver"));
    store.outbox_delivered(a_created).await.unwrap();
    let due = store.outbox_due(later, 10).await.unwrap();
    assert_eq!(
        (due[0].event.tenant_id.as_str(), due[0].event.kind),
        ("a", Updated)
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 1);

    store.set_event_settings(EventSettings { outbox: false });
    store.delete_tenant(&tid("b"), later).await.unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
}

pub(crate) async fn retention_prunes_old_events_but_not_undelivered_ones<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let mut old = new_tenant("old", Active);
    old.now = T0;
    store.insert_tenant(old).await.unwrap();
    store.set_event_settings(EventSettings { outbox: true });
    store
        .insert_tenant(new_tenant("queued", Active))
        .await
        .unwrap();
    store.set_event_settings(EventSettings { outbox: false });
    let mut newer = new_tenant("new", Active);
    newer.now = T0.plus_ms(2 * HOUR);
    store.insert_tenant(newer).await.unwrap();
    let ids: Vec<i64> = all(&store).await.iter().map(|e| e.event_id).collect();
    assert_eq!(store.events_after(0, 10).await.unwrap().pruned_through, 0);

    assert_eq!(store.prune_events(T0.plus_ms(HOUR)).await.unwrap(), 1);
    let page = store.events_after(0, 10).await.unwrap();
    assert_eq!(page.pruned_through, ids[0]);
    // The undelivered event stays, whatever its age.
    assert_eq!(
        page.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        vec![ids[1], ids[2]]
    );
    // Pruning everything keeps the last id: ids are never reused.
    store.outbox_delivered(ids[1]).await.unwrap();
    assert_eq!(store.prune_events(T0.plus_ms(3 * HOUR)).await.unwrap(), 2);
    assert_eq!(store.latest_event_id().await.unwrap(), ids[2]);
    let page = store.events_after(0, 10).await.unwrap();
    assert!(page.events.is_empty());
    assert_eq!(page.pruned_through, ids[2]);
    store
        .delete_tenant(&tid("new"), T0.plus_ms(3 * HOUR))
        .await
        .unwrap();
    let after = all(&store).await;
    assert_eq!(after.len(), 1);
    assert!(after[0].event_id > ids[2]);
    assert_eq!(store.prune_events(T0).await.unwrap(), 0);
}

pub(crate) async fn pages_resume_without_gaps_or_repeats_on_any_handle<H: Harness>(h: &H) {
    let one = open_store(h).await;
    for i in 0..7 {
        one.insert_tenant(new_tenant(&format!("t{i}"), Active))
            .await
            .unwrap();
    }
    let two = open_store(h).await;
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = two.events_after(after, 3).await.unwrap().events;
        let Some(last) = page.last() else { break };
        after = last.event_id;
        seen.extend(page);
    }
    assert_eq!(seen, all(&one).await);
    assert_eq!(seen.len(), 7);
    assert_eq!(two.latest_event_id().await.unwrap(), after);
    two.close().await.unwrap();
}

pub(crate) async fn a_commit_wakes_the_handles_subscribers<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let mut rx = store.subscribe_events();
    assert!(!rx.has_changed().unwrap());
    store
        .insert_tenant(new_tenant("acme", Active))
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        *rx.borrow_and_update(),
        store.latest_event_id().await.unwrap()
    );
    // Nothing changed: nobody is woken.
    store
        .record_refresh(&tid("acme"), ok(T0), T0.plus_ms(1))
        .await
        .unwrap();
    assert!(!rx.has_changed().unwrap());
    // A state change through the refresh path wakes too.
    let failing = fail(RenewalFailing, "PBX unreachable", T0);
    store
        .record_refresh(&tid("acme"), failing, T0.plus_ms(2))
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(
        *rx.borrow_and_update(),
        store.latest_event_id().await.unwrap()
    );
}
