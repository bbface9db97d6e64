//! One daemon process inside the simulation: the real store (SQLite, run
//! inline), per-host limiter, broker and renewal scheduler, wired as
//! `Daemon::start` wires them, minus the gRPC server and the cron jobs
//! (which only log and checkpoint). `kill` is kill -9: the scheduler stops,
//! PBX requests in flight vanish, the database handle is closed, and a new
//! process is then started from the same file.
//!
//! Does not: check anything (see `checker`).

use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures::future::BoxFuture;

use super::provider_model::ProviderModel;
use crate::broker::{Broker, BrokerSettings, Jitter};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::pbx::limiter::HostLimiters;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::renewal::scheduler::{spread_overdue_with, Scheduler, SchedulerLimits};
use crate::store::{Store, StoreError};

pub struct Process {
    pub broker: Arc<Broker>,
    store: Store,
    killed: CancellationToken,
    scheduler: JoinHandle<()>,
}

impl Process {
    /// Starts a process on the database at `db`; `seed` seeds its jitter.
    pub async fn start(
        db: &Path,
        keyring: Arc<Keyring>,
        config: &Config,
        clock: SharedClock,
        pbx: Arc<ProviderModel>,
        seed: u64,
    ) -> Result<Process, StoreError> {
        let store = Store::open_inline(db, keyring)?;
        let limiter = Arc::new(HostLimiters::new(
            clock.clone(),
            config.limits.per_host_requests_per_second,
            config.limits.per_host_concurrent,
        ));
        let killed = CancellationToken::new();
        let pbx = Arc::new(ProcessPbx {
            pbx,
            killed: killed.clone(),
        });
        let broker = Arc::new(
            Broker::new(
                clock.clone(),
                store.clone(),
                pbx,
                limiter,
                BrokerSettings::from_config(config),
            )
            .with_jitter(Jitter::seeded(seed)),
        );
        broker.load().await?;
        spread_overdue_with(
            &store,
            clock.now(),
            config.limits.per_host_requests_per_second,
            &Jitter::seeded(seed.rotate_left(17) ^ 0x5eed),
        )
        .await?;
        let scheduler = Arc::new(Scheduler::new(
            broker.clone(),
            SchedulerLimits::from_config(config),
        ));
        let scheduler = tokio::spawn(scheduler.run(killed.clone(), TaskTracker::new()));
        Ok(Process {
            broker,
            store,
            killed,
            scheduler,
        })
    }

    /// kill -9. Workers of this process that are still parked (on the
    /// limiter, a fetch lock, the PBX) never reach the PBX or the database
    /// again: the PBX never answers them and the store handle is closed.
    pub async fn kill(self) {
        self.killed.cancel();
        self.scheduler.abort();
        // Committed transactions are what a real kill -9 leaves; closing
        // (a checkpoint) does not change what the next process reads.
        if let Err(e) = self.store.close().await {
            tracing::warn!("closing the killed process's store: {e}");
        }
    }
}

/// One daemon process's view of the PBX: when the process is killed, its
/// requests vanish with it (the future is dropped, so the PBX sees the
/// connection close) and any later call never returns.
struct ProcessPbx {
    pbx: Arc<ProviderModel>,
    killed: CancellationToken,
}

impl PbxApi for ProcessPbx {
    fn client_credentials<'a>(
        &'a self,
        base: &'a PbxBaseUrl,
        creds: &'a AppCredentials,
    ) -> BoxFuture<'a, Result<TokenGrant, PbxError>> {
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = self.killed.cancelled() => futures::future::pending().await,
                r = self.pbx.client_credentials(base, creds) => r,
            }
        })
    }
}
