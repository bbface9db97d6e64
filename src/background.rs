//! The background runtime: the renewal scheduler and its workers, the
//! renewal duty, the replica cache sync, the health probe and the webhook
//! deliverer run on a tokio runtime of their own, apart from the runtime
//! that serves gRPC.
//!
//! Why: tokio has no task priorities. On one runtime a GetToken call that
//! arrives while the workers poll a batch of renewals (PBX requests,
//! sealing, store writes) or the demand assessment (a pass over every
//! tenant) waits behind all of them, and on a small machine that wait is
//! the tail of GetToken's latency. Apart, each runtime has its own
//! threads and the kernel shares the cores between them; the background
//! threads run at a higher nice value (`[runtime] background_nice`), so a
//! serving thread that wakes takes a core from them at once, while the
//! background keeps a guaranteed share whenever the server is saturated
//! (a nice value only weights the share, it never starves), so renewals
//! cannot stall behind a flood of GetToken calls.
//!
//! `[runtime] background_threads = 0` runs the background on the serving
//! runtime, as the deterministic simulation always does.
//!
//! Does not: decide what runs in the background (the engine spawns its
//! tasks through [`Background::handle`]).

use tokio::runtime::{Handle, Runtime};

/// Where the engine's background tasks run: the runtime that started the
/// engine, or a runtime of their own, owned here and stopped when this is
/// dropped (without waiting: every task the engine waits for has finished
/// by then, and a runtime must not block while dropped in async code).
pub struct Background {
    handle: Handle,
    own: Option<Runtime>,
}

impl Background {
    /// On the runtime this is called on (the one that starts the engine).
    pub fn current() -> Self {
        Self {
            handle: Handle::current(),
            own: None,
        }
    }

    /// A runtime of `threads` workers whose threads (workers and blocking
    /// pool) run at nice `nice`; [`Background::current`] when `threads` is 0.
    pub fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        if threads == 0 {
            return Ok(Self::current());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pbx-tokend-bg")
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            own: Some(runtime),
        })
    }

    /// Whether the background has threads of its own.
    pub fn is_own(&self) -> bool {
        self.own.is_some()
    }

    /// The handle background tasks are spawned on.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.own.take() {
            runtime.shutdown_background();
        }
    }
}

/// Raises the calling thread's nice value: on Linux the nice value belongs
/// to the thread, so only the background runtime's threads are affected.
/// A failure (a seccomp filter without `setpriority`) is logged once and
/// otherwise ignored: the runtime still separates the work, only without
/// the priority.
fn lower_priority(nice: i32) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if nice == 0 {
        return;
    }
    // SAFETY: setpriority reads no memory of ours; `who` 0 is the caller.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        WARNED.call_once(|| {
            tracing::warn!(
                "cannot run the background threads at nice {nice} ([runtime] background_nice): {error}; they run at the serving threads' priority"
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_threads_runs_on_the_current_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let bg = Background::start(0, 5).unwrap();
            assert!(!bg.is_own());
            assert_eq!(bg.handle().id(), Handle::current().id());
        });
    }

    #[test]
    fn own_threads_run_at_the_nice_value_asked_for() {
        let bg = Background::start(1, 7).unwrap();
        let nice = bg
            .handle()
            .block_on(async {
                tokio::spawn(async {
                    // SAFETY: getpriority reads no memory of ours.
                    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
                })
                .await
            })
            .unwrap();
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (own + 7).min(19));
        drop(bg);
    }
}
