//! Idle connections (issue 25, item 3): a connection with no request in
//! progress and no stream open for `grpc.idle_timeout_ms` is closed; an
//! open WatchToken or health Watch stream keeps its connection however
//! quiet it is; a tonic
//! channel whose connection was closed reconnects for its next call.

use std::time::Duration;

use pbx_tokend::proto::{self, ListClientsRequest, RefreshTenantRequest, WatchTokenRequest};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::hardening_transport::closed_by_peer;
use crate::harness::*;

/// Long enough for a hang to be a failure, never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);
/// What a connection has after sending its preface and an empty SETTINGS.
const HTTP2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

async fn idle_daemon() -> TestDaemon {
    TestDaemon::start(|c| c.grpc.idle_timeout_ms = 500).await
}

fn metric(d: &TestDaemon, series: &str) -> Option<u64> {
    let text = d.daemon.as_ref().unwrap().metrics().encode().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn connection(d: &TestDaemon) -> Channel {
    Endpoint::from_shared(d.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An HTTP/2 connection that sends nothing after its greeting.
fn silent(d: &TestDaemon) -> std::net::TcpStream {
    use std::io::Write;
    let addr = d.daemon.as_ref().unwrap().local_addr();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.write_all(HTTP2_HELLO).unwrap();
    tcp
}

async fn until_closed(tcp: &mut std::net::TcpStream) {
    eventually(PATIENCE, "the idle connection to be closed", || {
        let closed = closed_by_peer(tcp);
        async move { closed }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_a_channel_reconnects_for_its_next_call() {
    let d = idle_daemon().await;
    let channel = connection(&d).await;
    let mut admin = proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(&d.admin_key)),
    );
    admin.list_clients(ListClientsRequest {}).await.unwrap();
    let mut raw = silent(&d);
    until_closed(&mut raw).await;
    // Both the raw socket and the channel's connection: nothing else is open.
    eventually(PATIENCE, "both idle connections to be closed", || {
        let open = metric(&d, "pbx_tokend_grpc_connections_open");
        let idle = metric(&d, "pbx_tokend_grpc_connections_closed_idle_total");
        async move { open == Some(0) && idle == Some(2) }
    })
    .await;
    // Same client, no error: the channel connects again.
    admin.list_clients(ListClientsRequest {}).await.unwrap();
    assert_eq!(metric(&d, "pbx_tokend_grpc_connections_open"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_watch_token_and_health_watch_streams_keep_their_connections() {
    let sim = sim_with_lifetime(3600).await;
    let d = idle_daemon().await;
    d.add_tenant(&sim, "acme").await;
    let channel = connection(&d).await;
    let mut tokens = proto::token_service_client::TokenServiceClient::with_interceptor(
        channel,
        Bearer::new(Some(&d.admin_key)),
    );
    let mut stream = tokens
        .watch_token(WatchTokenRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A health Watch (no key) alone on another connection.
    let mut health = HealthClient::new(connection(&d).await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(PATIENCE, health.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A silent connection opened after the stream is closed: the stream's
    // connection has been quiet for longer than the timeout by then.
    let mut raw = silent(&d);
    until_closed(&mut raw).await;
    let next = d
        .admin()
        .refresh_tenant(RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.access_token, next.access_token);
    let got = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.access_token, next.access_token);
    // The health stream's connection is open too: a closed one would end
    // the stream with an error at once instead of waiting for news.
    let quiet = tokio::time::timeout(Duration::from_millis(200), health.message()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    // Once the stream ends its connection is idle and closed in turn.
    drop((stream, health));
    eventually(PATIENCE, "the streams' connections to be closed", || {
        let open = metric(&d, "pbx_tokend_grpc_connections_open");
        async move { open == Some(0) }
    })
    .await;
}
