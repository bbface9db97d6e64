//! One daemon process inside the simulation: the engine production runs
//! ([`Engine::start`]: store, per-host limiter, broker, scheduler), on the
//! store run inline and a seeded jitter, minus the transports (the daemon's)
//! and the cron jobs (which only log and checkpoint). `kill` is kill -9: the
//! scheduler stops, PBX requests in flight vanish, the database handle is
//! closed, and a new process is then started from the same file.
//!
//! Does not: check anything (see `checker`).

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use futures::future::BoxFuture;

use super::provider_model::ProviderModel;
use crate::background::Background;
use crate::broker::Broker;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::domain::{AppCredentials, PbxBaseUrl};
use crate::engine::{Cron, Engine, EngineError, EngineParts, JitterSource};
use crate::metrics::Metrics;
use crate::pbx::{PbxApi, PbxError, TokenGrant};
use crate::store::Store;

pub struct Process {
    pub broker: Arc<Broker>,
    engine: Engine,
    killed: CancellationToken,
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
    ) -> Result<Process, EngineError> {
        let store = Store::open_inline(db, keyring)?;
        let killed = CancellationToken::new();
        let pbx = Arc::new(ProcessPbx {
            pbx,
            killed: killed.clone(),
        });
        let engine = Engine::start(EngineParts {
            config,
            clock,
            pbx,
            store,
            jitter: JitterSource::Seeded(seed),
            metrics: Arc::new(Metrics::new()),
            cron: Cron::Off,
            // One runtime: the simulation's paused clock drives everything.
            background: Background::current(),
        })
        .await?;
        Ok(Process {
            broker: engine.broker().clone(),
            engine,
            killed,
        })
    }

    /// kill -9. Workers of this process that are still parked (on the
    /// limiter, a fetch lock, the PBX) never reach the PBX or the database
    /// again: the PBX never answers them and the store handle is closed.
    pub async fn kill(self) {
        self.killed.cancel();
        self.engine.abort().await;
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
