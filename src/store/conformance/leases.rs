//! Host leases: who holds a host's renewal duty, with an epoch that grows
//! at every change of holder.

use super::fixtures::{SECOND, T0};
use super::{open_store, Harness};
use crate::store::LeaseClaim;

pub(crate) async fn a_free_lease_is_granted_with_epoch_one<H: Harness>(h: &H) {
    let store = open_store(h).await;
    let claim = store
        .claim_lease("pbx.example.com", "r1", 15 * SECOND, T0)
        .await
        .unwrap();
    let LeaseClaim::Granted(lease) = claim else {
        panic!("refused: {claim:?}");
    };
    assert_eq!(lease.epoch, 1);
    assert_eq!(lease.holder, "r1");
}
