//! TEST HOOK ONLY: stops an onboarding flow at a chosen step so the
//! end-to-end tests can SIGKILL the real daemon exactly there and check the
//! flow resumes after a restart.
//!
//! With `PBX_TOKEND_TEST_CRASH_AFTER_STEP=N` (1..=6) in the daemon's
//! environment, the flow prints [`CRASH_MARKER`]`N` on stderr right after
//! step N (after its commit; for step 2, right after the PBX answered the
//! create call, before step 3 stores that answer) and then never goes on:
//! it parks, holding the tenant's flow lock, until the process is killed.
//! Unset (or any other value) the hook is inert: one `Option` compare per
//! step. Never set it in production.

/// The environment variable that arms the hook.
pub const CRASH_HOOK_VAR: &str = "PBX_TOKEND_TEST_CRASH_AFTER_STEP";

/// Printed on stderr, followed by the step number, when the hook fires.
pub const CRASH_MARKER: &str = "pbx-tokend test hook: onboarding parked after step ";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashHook(Option<u8>);

impl CrashHook {
    /// Inert.
    pub fn none() -> Self {
        Self(None)
    }

    /// Armed from [`CRASH_HOOK_VAR`] when it holds 1..=6; inert otherwise.
    pub fn from_env() -> Self {
        let step = std::env::var(CRASH_HOOK_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u8>().ok())
            .filter(|n| (1..=6).contains(n));
        if let Some(n) = step {
            tracing::warn!(
                "{CRASH_HOOK_VAR}={n} is set: onboarding flows will stop after step {n} (a test hook; never set it in production)"
            );
        }
        Self(step)
    }

    /// Called after each step; parks forever when armed for `step`.
    pub(super) async fn after_step(&self, step: u8) {
        if self.0 == Some(step) {
            eprintln!("{CRASH_MARKER}{step}");
            std::future::pending::<()>().await;
        }
    }
}
