//! Two real daemon processes (the binary) on one PostgreSQL database (the
//! test server of `src/store/postgres/testdb.rs`) and the simulator:
//! renewal duty by lease (exactly one replica renews the host; kill -9 of
//! the holder hands duty over within the lease), and fencing (a replica
//! paused with SIGSTOP past its lease, then resumed, writes nothing stale).
//! A third test runs one in-process daemon against a private server that
//! is stopped and started again (partition: tokens served, nothing
//! renewed, `database_reachable` false; then renewals resume), and one
//! whose primary fails over to a promoted standby (a multi-host URL).
//! Every process started here is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pbx_sim::RunningSim;
use pbx_tokend::proto;
use tonic::transport::Channel;

use crate::harness::*;
use crate::postgres::testdb;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");
const TTL_MS: u64 = 3_000;

/// One daemon process; killed (SIGKILL) when dropped.
struct Replica {
    child: Child,
    channel: Channel,
    state: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts replica `name` on `db_url`. `key_from`: the state dir whose
/// master.key this one shares (every replica must use the same key).
async fn replica(name: &str, db_url: &str, key_from: Option<&Replica>) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    if let Some(first) = key_from {
        std::fs::copy(first.state.join("master.key"), state.join("master.key")).unwrap();
    }
    let port = free_port();
    let config = dir.path().join("pbx-tokend.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n\
             [pbx]\nallow_insecure_http = true\nallow_private_addresses = true\nrequest_timeout_ms = 2000\n\
             [refresh]\nbackoff_initial_ms = 200\nbackoff_max_ms = 1000\n\
             [store]\nbackend = \"postgres\"\npostgres_url = \"{db_url}\"\n\
             [cluster]\nreplica_name = \"{name}\"\nlease_ttl_ms = {TTL_MS}\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n",
            state.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let channel = connect_when_listening(port, &mut child).await;
    Replica {
        child,
        channel,
        state,
        log,
        _dir: dir,
    }
}

fn admin(channel: &Channel, key: &str) -> AdminClient {
    proto::admin_service_client::AdminServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(key)),
    )
}

fn tokens(channel: &Channel, key: &str) -> TokenClient {
    proto::token_service_client::TokenServiceClient::with_interceptor(
        channel.clone(),
        Bearer::new(Some(key)),
    )
}

/// Two replicas ("a" first, so it writes the bootstrap admin key) and a
/// tenant created through "a" before "b" starts (so "b" loads it: keeping
/// every replica's cache current is the cache-sync work, not this test's);
/// returns them and the admin key.
async fn two_replicas(db: &testdb::TestDb, sim: &RunningSim) -> (Replica, Replica, String) {
    let a = replica("a", &db.url, None).await;
    let key = wait_for_admin_key(&a.state, &a.channel).await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    admin(&a.channel, &key)
        .create_tenant(proto::CreateTenantRequest {
            tenant_id: "acme".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id,
                client_secret: app.client_secret,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let b = replica("b", &db.url, Some(&a)).await;
    (a, b, key)
}

/// The live holder of the simulator host's lease, if any.
async fn holder(db: &testdb::TestDb) -> Option<(String, i64)> {
    let row = db
        .client()
        .await
        .query_opt(
            "SELECT holder, epoch FROM host_leases \
             WHERE expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()?;
    Some((row.get(0), row.get(1)))
}

/// Waits up to `timeout` for a live holder other than `not`.
async fn wait_holder(db: &testdb::TestDb, timeout: Duration, not: Option<&str>) -> (String, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = holder(db).await.filter(|h| Some(h.0.as_str()) != not) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "no lease holder (other than {not:?}) within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored_issued_at(db: &testdb::TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT issued_at FROM tokens WHERE tenant_id = 'acme'", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_renews_a_host_and_another_takes_over_after_kill9() {
    let db = testdb::TestDb::create().await;
    let sim = sim_with_lifetime(6).await;
    let (a, b, key) = two_replicas(&db, &sim).await;
    let (first, epoch) = wait_holder(&db, Duration::from_secs(10), None).await;
    // Both up for 9 s: renewals about every 4.8 s (80 % of 6 s) from the
    // holder alone; two replicas renewing would make about twice as many.
    let before = sim.sim.stats().token_requests_total;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let renewed = sim.sim.stats().token_requests_total - before;
    assert!((1..=3).contains(&renewed), "{renewed} renewals in 9 s");
    assert_eq!(holder(&db).await.map(|h| h.0), Some(first.clone()));

    let (mut dead, survivor) = if first == "a" { (a, b) } else { (b, a) };
    let killed_at = Instant::now();
    assert!(signal(&dead.child, "-KILL"));
    let _ = dead.child.wait();
    let (_, new_epoch) =
        wait_holder(&db, Duration::from_millis(TTL_MS + 5_000), Some(&first)).await;
    assert!(new_epoch > epoch);
    assert!(killed_at.elapsed() <= Duration::from_millis(TTL_MS + 5_000));
    // And renews: a new token within one renewal interval, served by it.
    let at_takeover = sim.sim.stats().token_requests_total;
    eventually(Duration::from_secs(10), "the survivor renews", || async {
        sim.sim.stats().token_requests_total > at_takeover
    })
    .await;
    let token = tokens(&survivor.channel, &key)
        .get_token(proto::GetTokenRequest {
            tenant_id: "acme".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sim.sim.issued_token_valid(&token.access_token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_writes_nothing_stale() {
    let db = testdb::TestDb::create().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b, key) = two_replicas(&db, &sim).await;
    let created = stored_issued_at(&db).await;
    // "a" asks for a new token; the PBX answers slowly, and "a" is
    // paused while the request is out.
    sim.sim.set_faults(pbx_sim::Faults {
        latency_ms: 1_500,
        ..Default::default()
    });
    let mut a_admin = admin(&a.channel, &key);
    let late = tokio::spawn(async move {
        a_admin
            .refresh_tenant(proto::RefreshTenantRequest {
                tenant_id: "acme".into(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(signal(&a.child, "-STOP"));
    sim.sim.clear_faults();
    tokio::time::sleep(Duration::from_millis(TTL_MS + 1_000)).await;
    // Meanwhile "b" renews.
    let fresh = admin(&b.channel, &key)
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let fresh_issued = stored_issued_at(&db).await;
    assert!(fresh_issued > created);
    // "a" resumes: its answer (or its timeout) arrives, and its write is
    // refused by the database.
    assert!(signal(&a.child, "-CONT"));
    let answer = tokio::time::timeout(Duration::from_secs(15), late)
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.is_err(),
        "the paused replica's refresh must not succeed"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_issued_at(&db).await,
        fresh_issued,
        "a stale write landed"
    );
    let served = tokens(&b.channel, &key)
        .get_token(proto::GetTokenRequest {
            tenant_id: "acme".into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.access_token, fresh.access_token);
    let log = std::fs::read_to_string(&a.log).unwrap();
    assert!(
        log.contains("fenced"),
        "no fenced write logged by the paused replica"
    );
    assert!(!log.contains(&fresh.access_token));
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_database_serves_renews_nothing_and_catches_up() {
    let server = tokio::task::spawn_blocking(testdb::Private::start)
        .await
        .unwrap();
    let sim = sim_with_lifetime(8).await;
    let d = TestDaemon::start(|c| {
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(server.url());
        c.cluster.lease_ttl_ms = TTL_MS;
        c.pbx.request_timeout_ms = 2_000;
        c.health.probe_interval_ms = 500;
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    let held = d.get_token("acme").await.unwrap();
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();
    let cut_at = sim.sim.stats().token_requests_total;
    eventually(
        Duration::from_secs(10),
        "database_reachable=false",
        || async {
            d.admin()
                .get_server_status(proto::GetServerStatusRequest::default())
                .await
                .is_ok_and(|s| !s.into_inner().database_reachable)
        },
    )
    .await;
    // The held token is still served from memory.
    assert_eq!(
        d.get_token("acme").await.unwrap().access_token,
        held.access_token
    );
    // Past its renewal point (80 % of 8 s) nothing was renewed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.sim.stats().token_requests_total,
        cut_at,
        "renewed while cut off"
    );
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "renewals resume", || async {
        sim.sim.stats().token_requests_total > cut_at
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "database_reachable=true",
        || async {
            d.admin()
                .get_server_status(proto::GetServerStatusRequest::default())
                .await
                .is_ok_and(|s| s.into_inner().database_reachable)
        },
    )
    .await;
    let fresh = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&fresh.access_token));
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_resume_within_30_s_of_a_standby_promotion() {
    let primary = tokio::task::spawn_blocking(testdb::Private::start)
        .await
        .unwrap();
    let url = primary.url();
    let standby = tokio::task::spawn_blocking({
        let primary_port = primary.port();
        let primary = std::sync::Arc::new(primary);
        move || {
            let standby = primary.standby();
            (primary, standby, primary_port)
        }
    })
    .await
    .unwrap();
    let (primary, standby, primary_port) = standby;
    let multi = format!(
        "postgresql://postgres@127.0.0.1:{primary_port},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port()
    );
    assert!(url.contains(&primary_port.to_string()));
    let sim = sim_with_lifetime(6).await;
    let d = TestDaemon::start(|c| {
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(multi);
        c.cluster.lease_ttl_ms = TTL_MS;
        c.pbx.request_timeout_ms = 2_000;
        c.health.probe_interval_ms = 500;
    })
    .await;
    d.add_tenant(&sim, "acme").await;
    assert!(d.get_token("acme").await.is_ok());
    // The primary goes away; the standby is promoted.
    let primary = tokio::task::spawn_blocking(move || {
        primary.stop();
        primary
    })
    .await
    .unwrap();
    let promote = testdb::connect(&standby.url()).await;
    promote.execute("SELECT pg_promote()", &[]).await.unwrap();
    let promoted_at = Instant::now();
    let at_promotion = sim.sim.stats().token_requests_total;
    // Served throughout (from memory: a renewal may have landed before the
    // primary stopped, so not necessarily the first token).
    let during = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&during.access_token));
    eventually(
        Duration::from_secs(30),
        "renewals resume after the promotion",
        || async { sim.sim.stats().token_requests_total > at_promotion },
    )
    .await;
    assert!(promoted_at.elapsed() <= Duration::from_secs(30));
    let fresh = d.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&fresh.access_token));
    drop((primary, standby));
}
