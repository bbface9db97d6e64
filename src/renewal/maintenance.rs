//! Periodic maintenance on cron expressions (`[maintenance]` config), run by
//! `tokio-cron-scheduler`: the overdue-job sweep (says loudly when renewals
//! fall behind), WAL checkpoints, `PRAGMA optimize`, and database backups
//! (`[backup]`: a `VACUUM INTO` snapshot into `<state_dir>/backups`,
//! keeping the last `keep`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::clock::SharedClock;
use crate::config::{BackupConfig, MaintenanceConfig};
use crate::metrics::Metrics;
use crate::store::Store;

/// A job overdue by more than this is worth a warning: the scheduler should
/// have started it long ago.
const OVERDUE_WARN_MS: i64 = 60_000;

#[derive(Debug, thiserror::Error)]
#[error("cannot start maintenance job {job}: {source}")]
pub struct MaintenanceError {
    job: &'static str,
    source: JobSchedulerError,
}

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Maintenance {
    scheduler: JobScheduler,
}

impl Maintenance {
    pub async fn start(
        config: &MaintenanceConfig,
        store: Store,
        clock: SharedClock,
    ) -> Result<Self, MaintenanceError> {
        let err = |job| move |source| MaintenanceError { job, source };
        let scheduler = JobScheduler::new().await.map_err(err("scheduler"))?;

        let s = store.clone();
        add(
            &scheduler,
            "overdue_sweep",
            &config.overdue_sweep_cron,
            move || {
                let s = s.clone();
                let clock = clock.clone();
                Box::pin(async move { overdue_sweep(&s, &clock).await })
            },
        )
        .await?;

        let s = store.clone();
        add(
            &scheduler,
            "wal_checkpoint",
            &config.wal_checkpoint_cron,
            move || {
                let s = s.clone();
                Box::pin(async move {
                    if let Err(e) = s.wal_checkpoint().await {
                        tracing::warn!("WAL checkpoint failed: {e}");
                    }
                })
            },
        )
        .await?;

        let s = store;
        add(&scheduler, "optimize", &config.optimize_cron, move || {
            let s = s.clone();
            Box::pin(async move {
                if let Err(e) = s.optimize().await {
                    tracing::warn!("PRAGMA optimize failed: {e}");
                }
            })
        })
        .await?;

        scheduler.start().await.map_err(err("scheduler"))?;
        Ok(Self { scheduler })
    }

    /// Adds the backup job (nothing when `[backup] cron` is empty).
    pub async fn schedule_backups(
        &self,
        config: &BackupConfig,
        store: Store,
        dir: std::path::PathBuf,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<(), MaintenanceError> {
        if config.cron.is_empty() {
            return Ok(());
        }
        let keep = config.keep;
        add(&self.scheduler, "backup", &config.cron, move || {
            let (store, dir, clock, metrics) =
                (store.clone(), dir.clone(), clock.clone(), metrics.clone());
            Box::pin(async move { backup(&store, &dir, &clock, &metrics, keep).await })
        })
        .await
    }

    pub async fn shutdown(mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::warn!("maintenance scheduler did not stop cleanly: {e}");
        }
    }
}

async fn add(
    scheduler: &JobScheduler,
    name: &'static str,
    cron: &str,
    run: impl Fn() -> BoxFut + Send + Sync + 'static,
) -> Result<(), MaintenanceError> {
    let run = Arc::new(run);
    let job = Job::new_async(cron, move |_id, _sched| {
        let run = run.clone();
        Box::pin(async move { run().await })
    })
    .map_err(|source| MaintenanceError { job: name, source })?;
    scheduler
        .add(job)
        .await
        .map_err(|source| MaintenanceError { job: name, source })?;
    Ok(())
}

/// One scheduled backup; failures are logged and counted, never fatal.
pub async fn backup(
    store: &Store,
    dir: &std::path::Path,
    clock: &SharedClock,
    metrics: &Metrics,
    keep: u32,
) {
    let now = clock.now();
    let started = tokio::time::Instant::now();
    match store.backup_into(dir, now, keep).await {
        Ok(info) => {
            metrics.backup(true, now.as_secs());
            tracing::info!(
                path = %info.path.display(),
                bytes = info.bytes,
                pruned = info.pruned.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "database backup written"
            );
        }
        Err(e) => {
            metrics.backup(false, now.as_secs());
            tracing::error!(dir = %dir.display(), "database backup failed: {e}");
        }
    }
}

/// Counts jobs far past their due time and says so.
async fn overdue_sweep(store: &Store, clock: &SharedClock) {
    let now = clock.now();
    match store.due_jobs(now.plus_ms(-OVERDUE_WARN_MS), 10_000).await {
        Ok(jobs) if !jobs.is_empty() => {
            let oldest = jobs.iter().map(|j| j.due_at).min().unwrap_or(now);
            tracing::warn!(
                overdue = jobs.len(),
                oldest_overdue_s = oldest.until(now).as_secs(),
                "renewals are falling behind: jobs overdue by more than a minute"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("overdue sweep cannot read the job queue: {e}"),
    }
}
