//! The backend-neutral conformance suite: the storage interface's rules as
//! tests that every backend must pass. A backend's test module implements
//! [`Harness`] (a fresh empty database, a restart, raw SQL for the tamper
//! cases) and invokes [`conformance_tests!`] once; each case below becomes
//! one `#[tokio::test]` there, so a failure names backend, area and case.
//!
//! Cases talk to the backend only through [`Store`] (the interface) except
//! where a rule is about the bytes at rest (sealing bound to tenant and
//! field, schema-version refusal, transaction boundaries): those use the
//! harness's SQL, written so SQLite and PostgreSQL both accept it (plain
//! SELECT / UPDATE / DELETE / `ALTER TABLE .. RENAME TO`, scalar
//! subqueries, `count(*)`, `length()`; no backend functions, no blob
//! literals), on the table and column names of `migrations/*.sql`.
//!
//! Files, one per area: `tenants.rs` (TenantRepo), `credentials.rs`
//! (CredentialRepo), `sealing.rs` (sealed values bound to tenant, field and
//! clear columns; the master key), `tokens.rs` (TokenRepo and group
//! commit), `batches.rs` (crowds of fenced, deleted and good refresh
//! outcomes committed together), `jobs.rs` (JobQueue), `leases.rs` (LeaseTable), `flows.rs`
//! (FlowRepo), `flow_commits.rs` (each onboarding step's transaction),
//! `clients.rs` (ClientRepo), `audit.rs` (AuditLog), `events.rs` (EventLog
//! and the events every change writes), `stats.rs`
//! (StoreStats), `lifecycle.rs` (heartbeat, master key check, close,
//! schema refusal, housekeeping), `replicas.rs` (two handles on one database),
//! `claims.rs` (atomic claims: a state's code exchange, the first admin);
//! `fixtures.rs` holds the sample tenants, tokens and times they share.

pub(crate) mod audit;
pub(crate) mod batches;
pub(crate) mod claims;
pub(crate) mod clients;
pub(crate) mod credentials;
pub(crate) mod events;
pub(crate) mod fences;
pub(crate) mod fixtures;
pub(crate) mod flow_commits;
pub(crate) mod flows;
pub(crate) mod jobs;
pub(crate) mod leases;
pub(crate) mod lifecycle;
pub(crate) mod replicas;
pub(crate) mod sealing;
pub(crate) mod stats;
pub(crate) mod tenants;
pub(crate) mod tokens;

use std::sync::Arc;

use async_trait::async_trait;

use super::{Store, StoreError};
use crate::crypto::Keyring;

/// What a backend's tests provide to the suite. Every method but `open`
/// panics on failure: it is test plumbing, not the code under test.
#[async_trait]
pub(crate) trait Harness: Send + Sync + Sized + 'static {
    /// A new, empty database of its own (nothing shared with other cases).
    async fn create() -> Self;

    /// Opens the database (migrating it) with `keys`. Opening twice without
    /// closing gives two handles on the same data, as two replicas (or a
    /// restart) would see it.
    async fn open(&self, keys: Arc<Keyring>) -> Result<Store, StoreError>;

    /// Runs statements written in the SQL both backends speak (tamper
    /// cases), outside any store handle, each committed when it returns.
    async fn execute(&self, sql: &str);

    /// One integer from a query in that SQL.
    async fn query_i64(&self, sql: &str) -> i64;

    /// One binary (BLOB / bytea) value from a query in that SQL; `None` if
    /// it is NULL. For looking at sealed columns byte by byte.
    async fn query_bytes(&self, sql: &str) -> Option<Vec<u8>>;

    /// The schema version the backend wrote when it last opened the
    /// database (the latest it knows).
    async fn schema_version(&self) -> i64;

    /// Marks the schema as `version` (the refusal case).
    async fn set_schema_version(&self, version: i64);
}

/// Expands to one `#[tokio::test]` per conformance case, run against the
/// harness type given. Add a case: write it in its area's file and name it
/// here.
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::store::conformance::conformance_tests!(@area $harness; tenants [
            insert_then_get_joins_everything,
            a_duplicate_insert_is_refused_and_changes_nothing,
            list_pages_by_id_and_filters_by_state,
            update_applies_every_change,
            update_of_a_missing_tenant_is_refused,
            delete_removes_everything_of_the_tenant,
            pbx_user_round_trips_without_touching_updated_at,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; credentials [
            credentials_round_trip_and_verify,
            a_credential_fault_is_recorded_without_spinning,
            update_tenant_rebinds_the_secrets_to_a_new_url,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; sealing [
            ciphertext_moved_to_another_tenant_or_field_does_not_open,
            a_flow_value_moved_to_another_tenant_or_field_does_not_open,
            edited_url_client_id_or_redirect_uri_is_refused_and_named,
            an_edited_base_url_makes_the_flow_refuse_to_be_read,
            an_edited_app_client_id_makes_the_flow_refuse_to_be_read,
            a_wrong_master_key_is_refused_and_changes_nothing,
            another_master_key_opens_nothing,
            no_secret_is_in_clear_in_a_sealed_column,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; tokens [
            record_refresh_counts_failures_and_resets_on_success,
            record_refresh_does_not_undo_an_operator_decision,
            record_refresh_of_a_deleted_tenant_is_refused,
            load_cache_returns_every_tenant_with_its_token,
            concurrent_refreshes_all_land_and_the_last_write_wins,
            a_bad_record_does_not_undo_the_others_in_its_batch,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; batches [
            a_crowd_of_fenced_deleted_and_good_outcomes_answers_each,
            a_tenant_deleted_mid_crowd_answers_not_found_or_goes_with_it,
            an_outcome_the_database_refuses_does_not_sink_its_crowd,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; jobs [
            due_jobs_are_ordered_and_only_for_renewing_tenants,
            ties_are_broken_by_host_then_tenant,
            ready_jobs_skip_hosts_and_say_when_to_look_again,
            each_host_is_read_on_its_own,
            reschedule_creates_moves_and_refuses_unknown,
            reschedule_many_skips_deleted_tenants,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; leases [
            a_free_lease_is_granted_with_epoch_one,
            a_renewal_keeps_the_epoch_and_extends,
            another_holder_is_refused_until_expiry_then_gets_the_next_epoch,
            a_release_lets_another_take_it_at_once,
            a_release_by_a_stale_epoch_or_holder_does_nothing,
            epochs_are_never_reused,
            leases_are_listed_by_host,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; fences [
            a_lease_fenced_write_lands_only_under_the_current_epoch,
            a_lease_fence_without_a_lease_or_on_another_host_is_refused,
            an_on_demand_write_after_a_newer_token_is_refused,
            an_update_lands_only_over_the_token_it_read,
            a_flow_completes_once_with_its_own_first_token,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; flows [
            begin_finds_the_flow_by_state_hash_only,
            steps_commit_and_completion_moves_everything_to_the_tenant,
            orphans_survive_a_new_begin_and_failure_wipes_secrets,
            a_dropped_token_and_an_error_keep_the_flow_resumable,
            interrupted_flows_are_listed_oldest_first,
            a_url_change_through_update_tenant_rebinds_the_flow,
            discarding_a_missing_flow_changes_nothing,
            a_state_is_single_use,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; claims [
            a_state_is_claimed_once_until_released_or_lapsed,
            a_new_begin_clears_the_claim,
            two_handles_claiming_one_state_at_once_one_wins,
            the_first_admin_is_inserted_once,
            cached_tenant_reads_one_tenant_with_its_token,
            a_flow_in_progress_is_resumed_by_one_claimant,
            a_claim_is_extended_only_by_its_holder,
            clearing_claims_frees_every_flow,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; flow_commits [
            each_step_is_committed_on_its_own,
            a_failed_step_leaves_the_previous_state_whole,
            a_failed_begin_or_discard_changes_nothing,
            a_failed_completion_changes_nothing,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; clients [
            insert_list_revoke,
            the_key_itself_is_not_stored,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; audit [
            append_and_page_newest_first,
            pages_have_no_gaps_or_repeats_under_filters,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; events [
            every_change_writes_its_events_and_no_change_none,
            credential_faults_and_flows_write_state_changes,
            the_event_and_the_change_commit_together,
            the_outbox_is_written_when_enabled_and_kept_in_order_per_tenant,
            retention_prunes_old_events_but_not_undelivered_ones,
            pages_resume_without_gaps_or_repeats_on_any_handle,
            a_commit_wakes_the_handles_subscribers,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; stats [
            count_by_state_counts_every_state,
            host_loads_sum_renewing_tenants_per_host,
            token_health_counts_expired_and_late_tokens,
            queue_stats_see_overdue_jobs,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; lifecycle [
            heartbeat_writes_the_time,
            check_master_key_initializes_then_verifies,
            a_closed_store_refuses_work,
            a_newer_schema_is_refused_and_the_data_untouched,
            housekeeping_keeps_the_data,
        ]);
        $crate::store::conformance::conformance_tests!(@area $harness; replicas [
            a_tenant_created_on_one_handle_is_read_on_the_other,
            a_client_revoked_on_one_handle_is_gone_on_the_other,
            a_token_recorded_on_one_handle_is_loaded_on_the_other,
            a_lease_held_on_one_handle_is_refused_on_the_other,
            a_flow_advanced_on_one_handle_resumes_on_the_other,
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

/// A store on `h` with the fixed test keyring.
pub(crate) async fn open_store<H: Harness>(h: &H) -> Store {
    h.open(fixtures::keys()).await.expect("open the store")
}
