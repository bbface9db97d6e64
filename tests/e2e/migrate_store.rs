//! `pbx-tokend migrate-store` (design.md, guarantee 9), the real binary:
//! a SQLite state with trusted tenants and their tokens, a pending tenant
//! with an authorization flow, an API client and audit events is copied
//! into an empty PostgreSQL database; the SQLite file is byte for byte
//! unchanged; a replica on PostgreSQL then serves the migrated tokens
//! (no new PBX request) to the migrated client's key. A second run into
//! the now non-empty database is refused, and so is a run beside a daemon.

use std::process::Command;

use pbx_tokend::proto;

use crate::harness::*;
use crate::onboarding::{add_pending, begin, REDIRECT};
use crate::replicas::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

fn run(config: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["migrate-store", "--config"])
        .arg(config)
        .args(["--to-postgres", url])
        .env_remove("PBX_TOKEND_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_copies_a_sqlite_state_that_a_replica_then_serves() {
    let cluster = Cluster::new().await;
    let sim = sim_with_lifetime(3600).await;
    let key_file = cluster.key_file();
    let mut d = TestDaemon::start(|c| c.master_key_file = Some(key_file.clone())).await;
    d.add_tenant(&sim, "acme").await;
    d.add_tenant(&sim, "beta").await;
    let acme = d.get_token("acme").await.unwrap();
    let beta = d.get_token("beta").await.unwrap();
    add_pending(&d, &sim, "gamma", REDIRECT).await;
    begin(&d, "gamma").await;
    let (_, reader_key) = d
        .create_client("svc", proto::ClientRole::Reader, &["acme"])
        .await;
    let config = d.dir.path().join("migrate.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nmaster_key_file = \"{}\"\n",
            d.config.state_dir.display(),
            key_file.display()
        ),
    )
    .unwrap();

    // Refused while the daemon holds the state dir.
    let busy = run(&config, &cluster.db.url);
    assert_eq!(busy.status.code(), Some(3), "{busy:?}");

    d.stop().await;
    let db_file = d.config.database_path();
    let before = std::fs::read(&db_file).unwrap();
    let out = run(&config, &cluster.db.url);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in [
        "tenants",
        "credentials",
        "tokens",
        "onboarding_flows",
        "api_clients",
    ] {
        assert!(stdout.contains(line), "{line} missing from\n{stdout}");
    }
    assert!(
        stdout.contains("tenants                     3 rows"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&db_file).unwrap(),
        before,
        "the SQLite file is untouched"
    );

    let requests = sim.sim.stats().token_requests_total;
    let r = cluster.replica("replica-a", Some(&d.admin_key)).await;
    assert_eq!(
        r.get_token("acme").await.unwrap().access_token,
        acme.access_token
    );
    assert_eq!(
        r.get_token("beta").await.unwrap().access_token,
        beta.access_token
    );
    assert_eq!(
        sim.sim.stats().token_requests_total,
        requests,
        "served, not fetched"
    );
    let mut as_reader = r.tokens_with_key(Some(&reader_key));
    as_reader
        .get_token(proto::GetTokenRequest {
            tenant_id: "acme".into(),
            min_valid_seconds: 0,
        })
        .await
        .expect("the migrated client's key works on the replica");
    assert_eq!(
        r.tenant("gamma").await.state,
        proto::TenantState::PendingAuthorization as i32
    );
    let audit = r
        .admin()
        .list_audit_events(proto::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        audit.events.iter().any(|e| e.action == "client.create"),
        "{audit:?}"
    );

    // The database is no longer empty: refused, nothing changed.
    let again = run(&config, &cluster.db.url);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(stderr.contains("not empty"), "{stderr}");
}
