//! grpc.health.v1: SERVING while the database can be written, NOT_SERVING
//! from the first moment of a shutdown; Watch streams see it and end.

use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

use crate::harness::*;

const SERVICES: [&str; 3] = ["", "pbxtokend.v1.TokenService", "pbxtokend.v1.AdminService"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_to_not_serving_during_shutdown() {
    let mut d = TestDaemon::start(|c| c.health.probe_interval_ms = 200).await;
    let mut health = d.health();
    for service in SERVICES {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut watches = Vec::new();
    for service in SERVICES {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        watches.push(stream);
    }
    let daemon = d.daemon.take().unwrap();
    // Open Watch streams must not hold the drain open.
    let shutdown = tokio::spawn(daemon.shutdown());
    for (service, mut stream) in SERVICES.iter().zip(watches) {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                Ok(Ok(Some(m))) => seen.push(m.status),
                // End of stream, or the connection closed after the last message.
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => panic!("the {service:?} watch stream did not end at shutdown"),
            }
        }
        assert_eq!(
            seen.last(),
            Some(&(ServingStatus::NotServing as i32)),
            "{service:?}: {seen:?}"
        );
        assert!(!seen.contains(&(ServingStatus::Serving as i32)), "{seen:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finished")
        .unwrap()
        .unwrap();
}
