//! Periodic maintenance on cron expressions (`[maintenance]` config), run by
//! `tokio-cron-scheduler`: the overdue-job sweep (says loudly when renewals
//! fall behind), WAL checkpoints, `PRAGMA optimize`, and database backups
//! (`[backup]`: a `VACUUM INTO` snapshot into `<state_dir>/backups`,
//! keeping the last `keep`), and pruning tenant events older than
//! `[events] retention_days` (on `[events] prune_cron`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::clock::SharedClock;
use crate::clock::UnixMs;
use crate::config::{BackupConfig, EventsConfig, MaintenanceConfig};
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

    /// Adds the event pruning job (nothing when events are kept forever).
    pub async fn schedule_event_pruning(
        &self,
        config: &EventsConfig,
        store: Store,
        clock: SharedClock,
    ) -> Result<(), MaintenanceError> {
        if config.retention_days == 0 {
            return Ok(());
        }
        let days = config.retention_days;
        add(
            &self.scheduler,
            "prune_events",
            &config.prune_cron,
            move || {
                let (store, clock) = (store.clone(), clock.clone());
                Box::pin(async move { prune_events(&store, &clock, days).await })
            },
        )
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

/// Events at or after this time are kept (`None`: keep forever).
pub fn retention_cutoff(now: UnixMs, retention_days: u32) -> Option<UnixMs> {
    const DAY_MS: i64 = 86_400_000;
    (retention_days > 0).then(|| now.plus_ms(-(i64::from(retention_days) * DAY_MS)))
}

/// One pruning run; a failure is logged and retried at the next run.
pub async fn prune_events(store: &Store, clock: &SharedClock, retention_days: u32) {
    let Some(cutoff) = retention_cutoff(clock.now(), retention_days) else {
        return;
    };
    match store.prune_events(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, retention_days, "old tenant events pruned"),
        Err(e) => tracing::warn!("pruning tenant events failed (retried at the next run): {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_retention_days_before_now_and_zero_keeps_all() {
        let now = UnixMs(100 * 86_400_000);
        assert_eq!(retention_cutoff(now, 0), None);
        assert_eq!(retention_cutoff(now, 30), Some(UnixMs(70 * 86_400_000)));
    }
}
