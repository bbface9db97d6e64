//! The stored state edited while the daemon is stopped (issue 25, items 5
//! and 7): a tenant's pbx_base_url or client_id changed in the database
//! file, sealed tokens or credentials swapped between rows, a backup from
//! another master key; and a database sealed before schema 6, upgraded at
//! start. Each time the daemon starts, the tampered tenant
//! sends nothing to any PBX and says why (state and last_error), and the
//! other tenants are served as before.

use std::process::Command;
use std::time::Duration;

use pbx_sim::RunningSim;
use pbx_tokend::proto::{self, AppCredentials, UpdateTenantRequest};
use tonic::Code;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

fn sql(d: &TestDaemon, batch: &str) {
    let db = rusqlite::Connection::open(d.config.database_path()).unwrap();
    db.execute_batch(batch).unwrap();
}

fn swap(table: &str, column: &str, a: &str, b: &str) -> String {
    format!(
        "CREATE TEMP TABLE s AS SELECT tenant_id, {column} AS v FROM {table} \
             WHERE tenant_id IN ('{a}', '{b}'); \
         UPDATE {table} SET {column} = (SELECT v FROM s WHERE tenant_id = '{b}') \
             WHERE tenant_id = '{a}'; \
         UPDATE {table} SET {column} = (SELECT v FROM s WHERE tenant_id = '{a}') \
             WHERE tenant_id = '{b}';"
    )
}

fn update(tenant: &str) -> UpdateTenantRequest {
    UpdateTenantRequest {
        tenant_id: tenant.into(),
        ..Default::default()
    }
}

async fn token_requests(sim: &RunningSim) -> u64 {
    sim.sim.stats().token_requests_total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_url_or_client_id_sends_nothing_and_says_why() {
    let sim = sim_with_lifetime(1).await;
    let evil = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let url_app = d.add_tenant(&sim, "url").await;
    let id_app = d.add_tenant(&sim, "cid").await;
    let ok_app = d.add_tenant(&sim, "ok").await;
    // Another app the sim knows: the edited client id would even work.
    let other = sim.sim.add_trusted_app(None, None).unwrap();
    d.stop().await;
    sql(
        &d,
        &format!(
            "UPDATE tenants SET pbx_base_url = '{}' WHERE tenant_id = 'url'; \
             UPDATE credentials SET client_id = '{}' WHERE tenant_id = 'cid';",
            evil.base_url, other.client_id
        ),
    );
    let (url_before, id_before) = (
        sim.sim.token_requests_for(&url_app),
        sim.sim.token_requests_for(&id_app),
    );
    let ok_before = sim.sim.token_requests_for(&ok_app);

    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    for (tenant, field) in [("url", "pbx_base_url"), ("cid", "client_id")] {
        let t = d.tenant(tenant).await;
        assert_eq!(
            t.state,
            proto::TenantState::CredentialsRejected as i32,
            "{tenant}"
        );
        let err = t.last_error;
        assert!(
            err.contains(&format!("the {field} of tenant {tenant}")),
            "{err}"
        );
        assert!(err.contains("changed outside pbx-tokend"), "{err}");
    }
    // The 1-second tokens run out; the tampered tenants then answer
    // FAILED_PRECONDITION with the reason, the untouched one is renewed.
    let dd = &d;
    eventually(Duration::from_secs(10), "tampered tokens to run out", || async move {
        matches!(dd.get_token("url").await, Err(s) if s.code() == Code::FailedPrecondition)
            && matches!(dd.get_token("cid").await, Err(s) if s.code() == Code::FailedPrecondition)
    })
    .await;
    let status = d.get_token("url").await.unwrap_err();
    assert!(
        status.message().contains("pbx_base_url of tenant url"),
        "{}",
        status.message()
    );
    let s = &sim.sim;
    eventually(
        Duration::from_secs(10),
        "the untouched tenant renewed twice",
        || {
            let n = s.token_requests_for(&ok_app);
            async move { n >= ok_before + 2 }
        },
    )
    .await;
    assert!(sim
        .sim
        .issued_token_valid(&d.get_token("ok").await.unwrap().access_token));
    // Nothing went anywhere for the tampered tenants: not to the edited
    // URL, not under the edited client id, not even to the real PBX.
    assert_eq!(token_requests(&evil).await, 0);
    assert_eq!(sim.sim.token_requests_for(&other.client_id), 0);
    assert_eq!(sim.sim.token_requests_for(&url_app), url_before);
    assert_eq!(sim.sim.token_requests_for(&id_app), id_before);
    // A forced refresh says the same and sends nothing either.
    let err = d
        .admin()
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "url".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(token_requests(&evil).await, 0);

    // The way out: the operator sets the URL (the secret is kept and bound
    // to it again).
    let mut req = update("url");
    req.pbx_base_url = Some(sim.base_url.clone());
    d.admin().update_tenant(req).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "tenant url active again",
        || async move { dd.get_token("url").await.is_ok() },
    )
    .await;
    assert_eq!(
        d.tenant("url").await.state,
        proto::TenantState::Active as i32
    );
    // New credentials alone would go to a stored URL nothing vouches for:
    // refused until pbx_base_url comes with them.
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    let mut req = update("cid");
    req.trusted_app = Some(AppCredentials {
        client_id: app.client_id.clone(),
        client_secret: app.client_secret.clone(),
    });
    let err = d.admin().update_tenant(req.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("give pbx_base_url"),
        "{}",
        err.message()
    );
    assert_eq!(sim.sim.token_requests_for(&app.client_id), 0);
    req.pbx_base_url = Some(sim.base_url.clone());
    let t = d.admin().update_tenant(req).await.unwrap().into_inner();
    assert_eq!(t.state, proto::TenantState::Active as i32);
    assert!(d.get_token("cid").await.is_ok());
    assert_eq!(token_requests(&evil).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_tokens_are_dropped_and_fetched_again() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let mut apps = Vec::new();
    let mut before = Vec::new();
    for t in ["a", "b", "c"] {
        apps.push(d.add_tenant(&sim, t).await);
        before.push(d.get_token(t).await.unwrap().access_token);
    }
    d.stop().await;
    sql(&d, &swap("tokens", "token_sealed", "a", "b"));
    let counts: Vec<u64> = apps.iter().map(|a| sim.sim.token_requests_for(a)).collect();

    // Starts (it refused to, for all tenants, before), and fetches the two
    // dropped tokens without waiting for a caller.
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    let s = &sim.sim;
    let (a, b) = (apps[0].clone(), apps[1].clone());
    eventually(Duration::from_secs(10), "a and b fetched again", || {
        let done = s.token_requests_for(&a) > counts[0] && s.token_requests_for(&b) > counts[1];
        async move { done }
    })
    .await;
    for (i, t) in ["a", "b"].iter().enumerate() {
        let token = d.get_token(t).await.unwrap().access_token;
        assert_ne!(token, before[i], "{t}");
        assert!(sim.sim.issued_token_valid(&token), "{t}");
        assert_eq!(d.tenant(t).await.state, proto::TenantState::Active as i32);
    }
    // The untouched tenant keeps its token; nothing was fetched for it.
    assert_eq!(d.get_token("c").await.unwrap().access_token, before[2]);
    assert_eq!(sim.sim.token_requests_for(&apps[2]), counts[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_credentials_stop_only_those_tenants() {
    let sim = sim_with_lifetime(1).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let mut apps = Vec::new();
    for t in ["a", "b", "c"] {
        apps.push(d.add_tenant(&sim, t).await);
    }
    d.stop().await;
    sql(&d, &swap("credentials", "secret_sealed", "a", "b"));
    let counts: Vec<u64> = apps.iter().map(|a| sim.sim.token_requests_for(a)).collect();

    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    for t in ["a", "b"] {
        let got = d.tenant(t).await;
        assert_eq!(
            got.state,
            proto::TenantState::CredentialsRejected as i32,
            "{t}"
        );
        assert!(
            got.last_error.contains("cannot be opened"),
            "{}",
            got.last_error
        );
        assert!(
            got.last_error.contains("UpdateTenant"),
            "{}",
            got.last_error
        );
    }
    let dd = &d;
    eventually(
        Duration::from_secs(10),
        "a's token to run out",
        || async move {
            matches!(dd.get_token("a").await, Err(s) if s.code() == Code::FailedPrecondition)
        },
    )
    .await;
    let status = d.get_token("a").await.unwrap_err();
    assert!(
        status
            .message()
            .contains("trusted_app credentials of tenant a cannot be opened"),
        "{}",
        status.message()
    );
    // c renews its 1-second tokens all along (several rounds of the
    // scheduler, with a and b retried at the 1 s rejected-retry test
    // setting), and nothing is sent for a or b.
    let s = &sim.sim;
    let c = apps[2].clone();
    eventually(Duration::from_secs(10), "c renewed three times", || {
        let done = s.token_requests_for(&c) >= counts[2] + 3;
        async move { done }
    })
    .await;
    assert_eq!(sim.sim.token_requests_for(&apps[0]), counts[0]);
    assert_eq!(sim.sim.token_requests_for(&apps[1]), counts[1]);
    // Not spinning: the job waits for the rare retry, and each retry is one
    // failure more, not hundreds.
    let a = d.tenant("a").await;
    assert!(a.consecutive_failures < 20, "{}", a.consecutive_failures);
    assert!(ts_ms(&a.next_refresh_at) > now_ms() - 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_backup_under_another_key_changes_nothing() {
    let sim = sim_with_lifetime(3600).await;
    let theirs = TestDaemon::start(|c| c.backup.cron = String::new()).await;
    theirs.add_tenant(&sim, "theirs").await;
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&theirs.config.state_dir)
        .arg("backup")
        .env_remove("STATE_DIRECTORY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    let mut ours = TestDaemon::start(|c| c.backup.cron = String::new()).await;
    ours.add_tenant(&sim, "ours").await;
    let token = ours.get_token("ours").await.unwrap().access_token;
    ours.stop().await;
    let db = ours.config.database_path();
    let before = std::fs::read(&db).unwrap();
    let out = Command::new(BIN)
        .arg("--state-dir")
        .arg(&ours.config.state_dir)
        .args(["restore", &backup])
        .env_remove("STATE_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not open this backup"), "{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    let left: Vec<String> = std::fs::read_dir(&ours.config.state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("before-restore") || n.contains("restoring"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ours = TestDaemon::start_in(ours.dir.clone(), ours.config.clone()).await;
    assert_eq!(ours.get_token("ours").await.unwrap().access_token, token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_sealed_before_schema_6_is_upgraded_and_then_bound() {
    use pbx_tokend::crypto::{aad, Keyring};
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    let app = sim.sim.add_trusted_app(None, None).unwrap();
    d.admin()
        .create_tenant(proto::CreateTenantRequest {
            tenant_id: "old".into(),
            pbx_base_url: sim.base_url.clone(),
            trusted_app: Some(AppCredentials {
                client_id: app.client_id.clone(),
                client_secret: app.client_secret.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    d.stop().await;
    // What schema 5 wrote: the secret sealed alone, check value v1.
    let hex_key = std::fs::read_to_string(d.config.state_dir.join("master.key")).unwrap();
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key.trim(), &mut key).unwrap();
    let keys = Keyring::from_key(&key);
    let secret = keys.seal(&aad("old", "trusted_secret"), app.client_secret.as_bytes());
    let check = keys.seal(
        &aad("", "master_key_check"),
        b"pbx-tokend master key check v1",
    );
    let db = rusqlite::Connection::open(d.config.database_path()).unwrap();
    db.execute(
        "UPDATE credentials SET secret_sealed = ?1 WHERE tenant_id = 'old'",
        [secret],
    )
    .unwrap();
    db.execute("UPDATE master_key_check SET sealed = ?1", [check])
        .unwrap();
    // What migrations after 6 added is not there yet either.
    db.execute_batch(
        "DROP TABLE host_leases; DROP TABLE webhook_outbox; DROP TABLE tenant_events; \
         DROP TABLE event_retention; \
         ALTER TABLE onboarding_flows DROP COLUMN exchange_claimed_until",
    )
    .unwrap();
    db.pragma_update(None, "user_version", 5).unwrap();
    drop(db);

    let mut d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    let before = sim.sim.token_requests_for(&app.client_id);
    let token = d
        .admin()
        .refresh_tenant(proto::RefreshTenantRequest {
            tenant_id: "old".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(sim.sim.issued_token_valid(&token.access_token));
    assert_eq!(sim.sim.token_requests_for(&app.client_id), before + 1);
    d.stop().await;
    // Bound now: an edited URL is caught like in a new database.
    let evil = sim_with_lifetime(3600).await;
    sql(
        &d,
        &format!(
            "UPDATE tenants SET pbx_base_url = '{}' WHERE tenant_id = 'old'",
            evil.base_url
        ),
    );
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    let t = d.tenant("old").await;
    assert_eq!(t.state, proto::TenantState::CredentialsRejected as i32);
    assert!(
        t.last_error.contains("pbx_base_url of tenant old"),
        "{}",
        t.last_error
    );
    assert_eq!(token_requests(&evil).await, 0);
}
