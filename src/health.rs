//! `grpc.health.v1` for load balancers and probes: SERVING only while the
//! database can be written and the daemon is not shutting down, for the
//! whole server ("") and per service (`pbxtokend.v1.TokenService`,
//! `pbxtokend.v1.AdminService`).
//!
//! `pbxtokend.v1.Database` is a detail, not a service: SERVING while the
//! database can be written, NOT_SERVING while it cannot, whatever else
//! happens (a shutdown leaves it alone). grpc.health.v1 has no detail
//! field, so a replica cut off from PostgreSQL says so under this name. The
//! other names keep going NOT_SERVING with the database too: a cut-off
//! replica still answers GetToken from memory, but it renews nothing and
//! refuses admin writes, so a load balancer should prefer the replicas that
//! can; calls that still reach it (clients with its address, a balancer
//! failing open when every replica is out) are answered.
//!
//! A probe task writes the heartbeat row every `interval`; the first
//! failure (an error, or no answer within 5 s) flips every status to
//! NOT_SERVING, the next success flips it back. Shutdown flips it for
//! good. Open `Watch` streams see the change and then end when the daemon
//! drains (the stock tonic-health stream never ends, which would hold a
//! graceful shutdown open for ever).
//!
//! Does not: judge the PBX (a PBX outage is per tenant and served
//! gracefully; taking the daemon out of rotation would not help).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::clock::SharedClock;
use crate::store::{Store, StoreError};

/// The services whose status is reported (besides "" for the server).
pub const SERVICES: [&str; 2] = ["pbxtokend.v1.TokenService", "pbxtokend.v1.AdminService"];

/// The health name that reports the database alone (see the module doc).
pub const DATABASE: &str = "pbxtokend.v1.Database";

/// A heartbeat write not done by then counts as failed: a connection cut
/// silently (nothing reset) would otherwise hold the status at SERVING
/// until the store's own bound on a call (10 s), and a database that
/// takes this long to write is no place to send admin calls either.
const PROBE_WAIT: Duration = Duration::from_secs(5);

pub struct Health {
    reporter: HealthReporter,
    db_writable: AtomicBool,
    shutting_down: AtomicBool,
    /// Last successful heartbeat write (ms since epoch), 0 before the first.
    last_write_ok: AtomicI64,
}

impl Health {
    /// The state and the gRPC service that reports it. `shutdown` ends open
    /// Watch streams.
    pub async fn new(shutdown: CancellationToken) -> (Arc<Health>, HealthGrpc) {
        let reporter = HealthReporter::new();
        let health = Arc::new(Health {
            reporter: reporter.clone(),
            db_writable: AtomicBool::new(true),
            shutting_down: AtomicBool::new(false),
            last_write_ok: AtomicI64::new(0),
        });
        health.publish().await;
        let service = EndingWatch {
            inner: HealthService::from_health_reporter(reporter),
            shutdown,
        };
        (health, HealthServer::new(service))
    }

    pub fn db_writable(&self) -> bool {
        self.db_writable.load(Ordering::Relaxed)
    }

    pub fn serving(&self) -> bool {
        self.db_writable() && !self.shutting_down.load(Ordering::Relaxed)
    }

    /// When the database was last proven writable (ms since epoch, 0: never).
    pub fn last_write_ok_ms(&self) -> i64 {
        self.last_write_ok.load(Ordering::Relaxed)
    }

    /// NOT_SERVING from now on (first step of the drain).
    pub async fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.publish().await;
    }

    /// One heartbeat write; flips the status when writability changed.
    /// Returns whether the write succeeded within [`PROBE_WAIT`].
    pub async fn probe(&self, store: &Store, clock: &SharedClock) -> bool {
        let now = clock.now();
        let write = tokio::time::timeout(PROBE_WAIT, store.heartbeat(now));
        let ok = match write.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "no answer within {PROBE_WAIT:?}"
            )))
        }) {
            Ok(()) => {
                self.last_write_ok.store(now.0, Ordering::Relaxed);
                true
            }
            Err(e) => {
                if self.db_writable() {
                    tracing::error!(
                        "the database cannot be written ({e}); health is NOT_SERVING until it can (valid tokens are still served from memory; GetServerStatus.database_reachable says whether a networked database can be reached at all)"
                    );
                }
                false
            }
        };
        let was = self.db_writable.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                tracing::info!("the database can be written again; health is SERVING");
            }
            self.publish().await;
        }
        ok
    }

    /// Probes every `interval` until `stop`.
    pub async fn run_probe(
        self: Arc<Self>,
        store: Store,
        clock: SharedClock,
        interval: Duration,
        stop: CancellationToken,
    ) {
        loop {
            self.probe(&store, &clock).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn publish(&self) {
        let status = if self.serving() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for service in SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
        let database = if self.db_writable() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status(DATABASE, database).await;
    }
}

/// The grpc.health.v1 service as served (cheap to clone: one per listener).
pub type HealthGrpc = HealthServer<EndingWatch>;

/// tonic-health's service, with Watch streams that end at shutdown.
pub struct EndingWatch {
    inner: HealthService,
    shutdown: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for EndingWatch {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        // The status is NOT_SERVING before the drain starts; the last
        // message says so even if the stream is cut before it relayed it.
        let last = futures::stream::once(async {
            Ok(HealthCheckResponse {
                status: ServingStatus::NotServing as i32,
            })
        });
        let stream = inner
            .take_until(self.shutdown.clone().cancelled_owned())
            .chain(last);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, UnixMs};
    use crate::crypto::Keyring;

    async fn status(health: &Health, name: &str) -> i32 {
        let svc = HealthService::from_health_reporter(health.reporter.clone());
        let req = Request::new(HealthCheckRequest {
            service: name.into(),
        });
        svc.check(req).await.unwrap().into_inner().status
    }

    const SERVING: i32 = ServingStatus::Serving as i32;
    const NOT_SERVING: i32 = ServingStatus::NotServing as i32;

    #[tokio::test]
    async fn probe_flips_with_writability_and_shutdown_is_final() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), Arc::new(Keyring::ephemeral())).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(UnixMs(1_000)));
        let (health, _svc) = Health::new(CancellationToken::new()).await;
        assert!(health.probe(&store, &clock).await);
        assert!(health.serving());
        assert_eq!(health.last_write_ok_ms(), 1_000);
        for name in ["", SERVICES[0], SERVICES[1], DATABASE] {
            assert_eq!(status(&health, name).await, SERVING, "{name}");
        }
        store.close().await.unwrap();
        assert!(!health.probe(&store, &clock).await);
        assert!(!health.serving() && !health.db_writable());
        for name in ["", SERVICES[0], SERVICES[1], DATABASE] {
            assert_eq!(status(&health, name).await, NOT_SERVING, "{name}");
        }
        health.begin_shutdown().await;
        assert!(!health.serving());
        assert_eq!(status(&health, "").await, NOT_SERVING);
    }

    #[tokio::test]
    async fn the_database_detail_follows_the_database_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), Arc::new(Keyring::ephemeral())).unwrap();
        let clock: SharedClock = Arc::new(ManualClock::new(UnixMs(1_000)));
        let (health, _svc) = Health::new(CancellationToken::new()).await;
        assert!(health.probe(&store, &clock).await);
        // A shutdown takes the services out, not the database detail.
        health.begin_shutdown().await;
        assert_eq!(status(&health, SERVICES[0]).await, NOT_SERVING);
        assert_eq!(status(&health, DATABASE).await, SERVING);
        store.close().await.unwrap();
        assert!(!health.probe(&store, &clock).await);
        assert_eq!(status(&health, DATABASE).await, NOT_SERVING);
    }
}
