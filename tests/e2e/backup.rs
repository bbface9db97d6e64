//! Backups taken by the cron job while renewals run, and `pbx-tokend
//! restore` (the real binary): refused while the daemon runs, then a
//! restored database that passes `PRAGMA integrity_check` and serves every
//! tenant.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use pbx_tokend::store::backup::list_backups;

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pbx-tokend");

fn tokend(state_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state_dir)
        .args(args)
        .env_remove("STATE_DIRECTORY")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_taken_while_renewing_restores_and_serves_every_tenant() {
    let sim = sim_with_lifetime(2).await;
    let mut d = TestDaemon::start(|c| {
        c.backup.cron = "*/1 * * * * *".into();
        c.backup.keep = 2;
    })
    .await;
    let tenants: Vec<String> = (0..12).map(|i| format!("bk{i:02}")).collect();
    for t in &tenants {
        d.add_tenant(&sim, t).await;
    }
    let backups = d.config.backup_dir();
    sim.sim.reset_stats();
    // Renewals of 2 s tokens run all along; the cron writes one backup a
    // second and keeps two.
    let b = backups.clone();
    eventually(Duration::from_secs(8), "three cron backups", || {
        let n = list_backups(&b).unwrap().len();
        let renewed = sim.sim.stats().token_requests_total;
        async move { n >= 2 && renewed >= 12 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let files = list_backups(&backups).unwrap();
    assert_eq!(files.len(), 2, "keep = 2: {files:?}");
    for f in &files {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let newest = files.last().unwrap().clone();
    // Keep it out of the pruning while the daemon runs on.
    let chosen = d.dir.path().join("chosen.db");
    std::fs::copy(&newest, &chosen).unwrap();

    let state = d.config.state_dir.clone();
    let out = tokend(&state, &["restore", chosen.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "restore must refuse while the daemon runs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pbx-tokend.lock"));

    d.stop().await;
    let out = tokend(&state, &["restore", chosen.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("12 tenants"), "{said}");

    let db = d.config.database_path();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(conn);

    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    for t in &tenants {
        let token = d.get_token(t).await.unwrap();
        assert!(sim.sim.issued_token_valid(&token.access_token), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_backup_while_running_and_restore_refuses_garbage() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.backup.cron = String::new()).await;
    d.add_tenant(&sim, "one").await;
    let state = d.config.state_dir.clone();
    // The binary's `backup` is safe next to a running daemon.
    let out = tokend(&state, &["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(path.contains("/backups/pbx-tokend-"), "{path}");
    let check = pbx_tokend::store::backup::check_backup(std::path::Path::new(&path)).unwrap();
    assert_eq!(check.tenants, 1);

    let garbage = d.dir.path().join("garbage.db");
    std::fs::write(&garbage, b"definitely not sqlite").unwrap();
    let other = tempfile::tempdir().unwrap();
    let out = tokend(other.path(), &["restore", garbage.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an SQLite database"));
}
