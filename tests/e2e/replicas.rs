//! Several replicas on one PostgreSQL database (design.md, "Several
//! replicas on PostgreSQL", guarantees 1, 2, 7): two real daemons sharing
//! a real PostgreSQL server (`src/store/postgres/testdb.rs`), one master
//! key file, one simulator. What one replica writes, the other serves: a
//! tenant at once (read-through), a revoked client, a disabled, deleted or
//! updated tenant; the LISTEN connection killed by the server comes back
//! and catches up. Renewed tokens: `replicas_tokens.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pbx_tokend::proto;
use tokio_stream::StreamExt;

use crate::harness::*;

use crate::postgres::testdb;

/// One database, one master key, several replicas.
pub struct Cluster {
    pub db: testdb::TestDb,
    key_dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn new() -> Cluster {
        let db = testdb::TestDb::create().await;
        let key_dir = tempfile::tempdir().unwrap();
        let key = key_dir.path().join("master.key");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Cluster { db, key_dir }
    }

    /// The master key file every replica uses.
    pub fn key_file(&self) -> std::path::PathBuf {
        self.key_dir.path().join("master.key")
    }

    /// A daemon on the cluster's database named `name`, with its own
    /// state dir.
    pub async fn start_daemon(
        &self,
        name: &str,
    ) -> (
        pbx_tokend::daemon::Daemon,
        pbx_tokend::config::Config,
        Arc<tempfile::TempDir>,
    ) {
        self.start_daemon_with(name, |_| {}).await
    }

    /// `start_daemon`, with `configure` run last (another database URL,
    /// a metrics or callback listener).
    pub async fn start_daemon_with(
        &self,
        name: &str,
        configure: impl FnOnce(&mut pbx_tokend::config::Config),
    ) -> (
        pbx_tokend::daemon::Daemon,
        pbx_tokend::config::Config,
        Arc<tempfile::TempDir>,
    ) {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut c = test_config(&dir);
        c.store.backend = pbx_tokend::config::StoreBackend::Postgres;
        c.store.postgres_url = Some(self.db.url.clone());
        c.master_key_file = Some(self.key_file());
        c.cluster.replica_name = name.into();
        // The shortest allowed: admin calls wait at most this long for a
        // replica that does not confirm.
        c.cluster.lease_ttl_ms = 3_000;
        // Every PBX call must end well inside a lease (at most 2/3 of it).
        c.pbx.request_timeout_ms = 1_000;
        configure(&mut c);
        c.validate().unwrap();
        let listener = tokio::net::TcpListener::bind(&c.grpc.listen).await.unwrap();
        let daemon = pbx_tokend::daemon::Daemon::start(
            c.clone(),
            listener,
            Arc::new(pbx_tokend::clock::SystemClock),
        )
        .await
        .unwrap();
        (daemon, c, dir)
    }

    /// A replica named `name`. The first one writes the bootstrap admin
    /// key; later ones are given it (`admin_key`).
    pub async fn replica(&self, name: &str, admin_key: Option<&str>) -> TestDaemon {
        self.replica_with(name, admin_key, |_| {}).await
    }

    /// `replica`, configured as in `start_daemon_with`.
    pub async fn replica_with(
        &self,
        name: &str,
        admin_key: Option<&str>,
        configure: impl FnOnce(&mut pbx_tokend::config::Config),
    ) -> TestDaemon {
        let (daemon, c, dir) = self.start_daemon_with(name, configure).await;
        let url = format!("http://{}", daemon.local_addr());
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect_lazy();
        let admin_key = match admin_key {
            Some(k) => {
                assert!(
                    !c.state_dir.join("admin.key").exists(),
                    "only the first replica writes admin.key"
                );
                k.to_owned()
            }
            None => read_admin_key(&c.state_dir),
        };
        TestDaemon {
            daemon: Some(daemon),
            dir,
            config: c,
            channel,
            admin_key,
        }
    }

    /// Two replicas, A (wrote admin.key) and B.
    pub async fn pair(&self) -> (TestDaemon, TestDaemon) {
        let mut two = self.replicas(2).await.into_iter();
        (two.next().unwrap(), two.next().unwrap())
    }

    /// `n` replicas named replica-a, replica-b, ...; the first wrote
    /// admin.key.
    pub async fn replicas(&self, n: usize) -> Vec<TestDaemon> {
        self.replicas_with(n, |_, _| {}).await
    }

    /// `replicas`, with `configure(index, config)` for each.
    pub async fn replicas_with(
        &self,
        n: usize,
        configure: impl Fn(usize, &mut pbx_tokend::config::Config),
    ) -> Vec<TestDaemon> {
        let mut all: Vec<TestDaemon> = Vec::new();
        for i in 0..n {
            let name = format!("replica-{}", char::from(b'a' + i as u8));
            let key = all.first().map(|a| a.admin_key.clone());
            let d = self
                .replica_with(&name, key.as_deref(), |c| configure(i, c))
                .await;
            all.push(d);
        }
        all
    }
}

pub async fn refresh(d: &TestDaemon, tenant: &str) -> proto::AccessToken {
    d.admin()
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_on_one_replica_is_served_by_another_at_once() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    a.add_tenant(&sim, "acme").await;
    // No waiting: B reads the new tenant through on its first miss.
    let on_b = b.get_token("acme").await.unwrap();
    let on_a = a.get_token("acme").await.unwrap();
    assert_eq!(on_b.access_token, on_a.access_token);
    assert_eq!(
        sim.sim.stats().token_requests_total,
        1,
        "B serves A's token, it does not fetch its own"
    );
    // A WatchToken stream on B, opened the moment A created the tenant.
    a.add_tenant(&sim, "beta").await;
    let mut stream = b
        .tokens()
        .watch_token(proto::WatchTokenRequest {
            tenant_id: "beta".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first.access_token,
        a.get_token("beta").await.unwrap().access_token
    );
    let missing = b.get_token("nobody").await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_revoked_on_one_replica_is_refused_by_another() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    a.add_tenant(&sim, "acme").await;
    let (client_id, key) = a
        .create_client("svc", proto::ClientRole::Reader, &["acme"])
        .await;
    eventually(Duration::from_secs(5), "B to accept the new key", || {
        let mut t = b.tokens_with_key(Some(&key));
        async move {
            t.get_token(proto::GetTokenRequest {
                tenant_id: "acme".into(),
                min_valid_seconds: 0,
            })
            .await
            .is_ok()
        }
    })
    .await;
    a.admin()
        .revoke_client(proto::RevokeClientRequest {
            client_id: client_id.clone(),
        })
        .await
        .unwrap();
    let returned = Instant::now();
    eventually(
        Duration::from_secs(5),
        "B to refuse the revoked key",
        || {
            let mut t = b.tokens_with_key(Some(&key));
            async move {
                let r = t
                    .get_token(proto::GetTokenRequest {
                        tenant_id: "acme".into(),
                        min_valid_seconds: 0,
                    })
                    .await;
                matches!(r, Err(s) if s.code() == tonic::Code::Unauthenticated)
            }
        },
    )
    .await;
    eprintln!("revocation A -> B refused after {:?}", returned.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_disabled_deleted_or_updated_on_one_replica_is_served_so_by_another() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    a.add_tenant(&sim, "acme").await;
    a.add_tenant(&sim, "beta").await;
    b.get_token("acme").await.unwrap();
    b.get_token("beta").await.unwrap();
    a.admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .unwrap();
    a.admin()
        .delete_tenant(proto::DeleteTenantRequest {
            tenant_id: "beta".into(),
        })
        .await
        .unwrap();
    // The admin calls returned after B confirmed: no waiting here.
    let disabled = b.get_token("acme").await.unwrap_err();
    assert_eq!(
        disabled.code(),
        tonic::Code::FailedPrecondition,
        "{disabled:?}"
    );
    let deleted = b.get_token("beta").await.unwrap_err();
    assert_eq!(deleted.code(), tonic::Code::NotFound, "{deleted:?}");
    // Enabled again on A: B serves it as soon as the call returns.
    a.admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    let enabled = b.get_token("acme").await.unwrap();
    assert!(sim.sim.issued_token_valid(&enabled.access_token));
    // New credentials on A: their first token is what B serves at once.
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    a.admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            trusted_app: Some(proto::AppCredentials {
                client_id: app.client_id.clone(),
                client_secret: app.client_secret.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let on_a = a.get_token("acme").await.unwrap();
    let on_b = b.get_token("acme").await.unwrap();
    assert_eq!(on_b.access_token, on_a.access_token);
    assert_ne!(on_b.access_token, enabled.access_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_connection_terminated_by_the_server_reconnects_and_catches_up() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let (a, b) = cluster.pair().await;
    a.add_tenant(&sim, "acme").await;
    b.get_token("acme").await.unwrap();
    let pg = cluster.db.client().await;
    let listeners =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pbx-tokend-listen'";
    let count = |n: i64| {
        let pg = &pg;
        async move {
            let c: i64 = pg.query_one(listeners, &[]).await.unwrap().get(0);
            c == n
        }
    };
    eventually(Duration::from_secs(5), "both listeners connected", || {
        count(2)
    })
    .await;
    let killed: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'pbx-tokend-listen') k",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2);
    // Renewed while B's listener is down (or reconnecting).
    let renewed = refresh(&a, "acme").await;
    eventually(Duration::from_secs(10), "B to catch up", || {
        let b = &b;
        let want = renewed.access_token.clone();
        async move { b.get_token("acme").await.unwrap().access_token == want }
    })
    .await;
    eventually(Duration::from_secs(10), "both listeners back", || count(2)).await;
    // And hints flow again.
    let again = refresh(&a, "acme").await;
    eventually(Duration::from_secs(5), "B to get the next token", || {
        let b = &b;
        let want = again.access_token.clone();
        async move { b.get_token("acme").await.unwrap().access_token == want }
    })
    .await;
}

async fn status(d: &TestDaemon) -> proto::ServerStatus {
    d.admin()
        .get_server_status(proto::GetServerStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_status_lists_the_replicas_and_the_backend() {
    let cluster = Cluster::new().await;
    let (a, _b) = cluster.pair().await;
    // Renewal duty is taken by the scheduler; a lease row stands for it.
    cluster
        .db
        .client()
        .await
        .batch_execute(
            "INSERT INTO host_leases (pbx_host, holder, epoch, expires_at) VALUES \
             ('pbx-b.example.com', 'replica-b', 1, \
              (extract(epoch FROM now()) * 1000)::bigint + 600000), \
             ('pbx-old.example.com', 'replica-b', 1, 0)",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "both replicas listed", || {
        let a = &a;
        async move { status(a).await.replicas.len() == 2 }
    })
    .await;
    let s = status(&a).await;
    assert_eq!(s.backend, "postgres");
    assert!(s.database_reachable);
    let names: Vec<&str> = s.replicas.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["replica-a", "replica-b"]);
    assert!(s.replicas.iter().all(|r| r.live));
    assert!(s.replicas[0].renewing_hosts.is_empty());
    assert_eq!(
        s.replicas[1].renewing_hosts,
        ["pbx-b.example.com"],
        "unexpired leases only"
    );
    let beat = ts_ms(&s.replicas[1].last_heartbeat);
    assert!((now_ms() - beat).abs() < 60_000, "{beat}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_daemon_is_one_replica_renewing_every_host() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.cluster.replica_name = "solo".into()).await;
    d.add_tenant(&sim, "acme").await;
    let s = status(&d).await;
    assert_eq!(s.backend, "sqlite");
    assert!(s.database_reachable);
    assert_eq!(s.replicas.len(), 1);
    let me = &s.replicas[0];
    assert_eq!(me.name, "solo");
    assert!(me.live);
    let host = sim.base_url.trim_start_matches("http://");
    assert_eq!(me.renewing_hosts, [host]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_a_live_replica_never_confirms_returns_after_lease_ttl() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let a = cluster.replica("replica-a", None).await;
    a.add_tenant(&sim, "acme").await;
    // A replica that heartbeats (its row stays fresh) but applies nothing.
    cluster
        .db
        .client()
        .await
        .batch_execute(
            "INSERT INTO replicas (name, last_heartbeat, applied_change_id, started_at) VALUES \
             ('ghost', (extract(epoch FROM now()) * 1000)::bigint + 600000, 0, 0)",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let t = a
        .admin()
        .update_tenant(proto::UpdateTenantRequest {
            tenant_id: "acme".into(),
            enabled: Some(false),
            ..Default::default()
        })
        .await
        .expect("committed: the call succeeds, the warning names the replica")
        .into_inner();
    assert_eq!(t.state, proto::TenantState::Disabled as i32);
    // Waited for the ghost until [cluster] lease_ttl_ms (3 s here), not
    // forever.
    eprintln!(
        "UpdateTenant with an unconfirming replica returned after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_bootstrap_exactly_one_admin_key() {
    let cluster = Cluster::new().await;
    let ((d1, c1, _t1), (d2, c2, _t2)) =
        tokio::join!(cluster.start_daemon("one"), cluster.start_daemon("two"));
    let keys: Vec<bool> = [&c1, &c2]
        .iter()
        .map(|c| c.state_dir.join("admin.key").exists())
        .collect();
    assert_eq!(keys.iter().filter(|k| **k).count(), 1, "{keys:?}");
    let admins: i64 = cluster
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM api_clients WHERE role = 'admin' AND revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
    d1.shutdown().await.unwrap();
    d2.shutdown().await.unwrap();
}
