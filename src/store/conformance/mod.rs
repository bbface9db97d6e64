//! The backend-neutral conformance suite: the storage interface's rules as
//! tests that every backend must pass. A backend's test module implements
//! [`Harness`] (a fresh empty database, a restart, raw SQL for the tamper
//! cases) and invokes [`conformance_tests!`] once; each case below becomes
//! one `#[tokio::test]` there, so a failure names backend and case.
//!
//! Cases talk to the backend only through [`Store`] (the interface) except
//! where a rule is about what happens to the bytes at rest (sealing bound
//! to tenant and field, schema-version refusal): those use the harness's
//! portable SQL, the same statements on every backend.
//!
//! Files: one per area (`tenants.rs`, ...); `fixtures.rs` holds the sample
//! tenants, tokens and times the cases share.

pub(crate) mod fixtures;
pub(crate) mod leases;

use std::sync::Arc;

use async_trait::async_trait;

use super::{Store, StoreError};
use crate::crypto::Keyring;

/// What a backend's tests provide to the suite.
#[async_trait]
#[allow(dead_code)] // until every case that needs raw SQL is written
pub(crate) trait Harness: Send + Sync + Sized + 'static {
    /// A new, empty database of its own (nothing shared with other cases).
    async fn create() -> Self;

    /// Opens the database (migrating it) with `keys`. Opening twice without
    /// closing gives two handles on the same data, as two replicas (or a
    /// restart) would see it.
    async fn open(&self, keys: Arc<Keyring>) -> Result<Store, StoreError>;

    /// Runs statements written in the SQL both backends speak (tamper
    /// cases), outside any store handle.
    async fn execute(&self, sql: &str);

    /// One integer from a query in that SQL.
    async fn query_i64(&self, sql: &str) -> i64;

    /// Marks the schema as `version` (the refusal case).
    async fn set_schema_version(&self, version: i64);
}

/// Expands to one `#[tokio::test]` per conformance case, run against the
/// harness type given. Add a case: write it in its area's file and name it
/// here.
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::store::conformance::conformance_tests!(@area $harness; leases [
            a_free_lease_is_granted_with_epoch_one,
        ]);
    };
    (@area $harness:ty; $area:ident [$($case:ident),* $(,)?]) => {
        mod $area {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let h = <$harness as $crate::store::conformance::Harness>::create().await;
                    $crate::store::conformance::$area::$case(&h).await;
                }
            )*
        }
    };
}
pub(crate) use conformance_tests;

/// A fresh store on `h` with a fixed test keyring.
pub(crate) async fn open_store<H: Harness>(h: &H) -> Store {
    h.open(fixtures::keys()).await.expect("open the store")
}
