//! A real PostgreSQL server for the tests of this process (test-only):
//! started once, on the first [`TestDb::create`], on a free loopback port,
//! shared by every test; each `TestDb` is a fresh database of its own
//! (`CREATE DATABASE` with a unique name).
//!
//! Finding it: `PBX_TOKEND_PG_BIN` (a directory), else the newest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on PATH. Missing PostgreSQL
//! fails the test loudly with what to install: never a silent skip.
//!
//! As root (CI), `initdb` and `postgres` run as the `postgres` system user
//! (or `nobody`): PostgreSQL refuses to run as root.
//!
//! Never left behind: `postgres` runs as a direct child that the kernel
//! kills when this process dies (`PR_SET_PDEATHSIG`, set from a thread
//! that lives as long as the process, since the signal follows the
//! spawning thread), and a guard shell holding the read end of a pipe
//! whose write end only this process holds wakes up when the process is
//! gone (exit, panic or `kill -9`), stops the server if it is still there
//! and removes the data directory.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The shared server, once started.
pub(crate) struct Server {
    pub(crate) port: u16,
    data: PathBuf,
    /// How long `initdb` plus start-up took (reported by a test).
    pub(crate) started_in: Duration,
    /// The server process (kept so a test can stop and start it).
    child: Mutex<Option<Child>>,
    /// Held, never written: its closing tells the guard shell we are gone.
    _guard: Mutex<ChildStdin>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// The directory holding `initdb` and `postgres`.
fn find_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PBX_TOKEND_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((v, bin)) = versions.pop() {
        if v < 15 {
            return Err(format!("PostgreSQL {v} found in {}, the tests need 15 or newer: apt-get install -y --no-install-recommends postgresql", bin.display()));
        }
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        if Path::new(dir).join("initdb").exists() {
            return Ok(PathBuf::from(dir));
        }
    }
    Err("PostgreSQL 15 or newer is needed by the PostgreSQL backend's tests and was not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): install it with `apt-get install -y --no-install-recommends postgresql` (Debian) or set PBX_TOKEND_PG_BIN to the directory holding initdb and postgres".into())
}

/// uid and gid of the first of `names` in /etc/passwd.
fn system_user(names: &[&str]) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    names.iter().find_map(|name| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(name))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
    })
}

fn command(bin: &Path, prog: &str, run_as: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(bin.join(prog));
    if let Some((uid, gid)) = run_as {
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
    c
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Starts `postgres` as a child that dies with this process.
fn spawn_postgres(
    bin: &Path,
    data: &Path,
    port: u16,
    run_as: Option<(u32, u32)>,
) -> Result<Child, String> {
    let log = std::fs::File::create(data.join("server.log")).map_err(|e| e.to_string())?;
    let mut c = command(bin, "postgres", run_as);
    c.arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "unix_socket_directories="])
        // Test data only: durability is not what these tests check.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: only async-signal-safe work (one prctl) between fork and exec.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    c.spawn().map_err(|e| format!("cannot start postgres: {e}"))
}

/// Waits until the server accepts connections (`pg_isready`).
fn wait_ready(bin: &Path, port: u16, child: &mut Child, data: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
            return Err(format!(
                "postgres exited ({status}) during start-up:\n{log}"
            ));
        }
        if Instant::now() > deadline {
            return Err("postgres did not accept connections within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start() -> Result<Server, String> {
    let started = Instant::now();
    let bin = find_bin()?;
    let root = rustix::process::getuid().is_root();
    let run_as = if root {
        Some(system_user(&["postgres", "nobody"]).ok_or(
            "running as root, and neither a `postgres` nor a `nobody` user exists to run PostgreSQL as (initdb refuses root)",
        )?)
    } else {
        None
    };
    let dir = tempfile::Builder::new()
        .prefix("pbx-tokend-testpg-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    std::fs::create_dir(&data).map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = run_as {
        for p in [&dir, &data] {
            rustix::fs::chown(
                p.as_path(),
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| format!("chown {}: {e}", p.display()))?;
        }
    }
    // The guard: wakes when our end of its stdin closes (we are gone).
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg("cat >/dev/null; sleep 1; rm -rf \"$0\"")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the clean-up guard: {e}"))?;
    let guard_in = guard.stdin.take().ok_or("guard without stdin")?;
    let out = command(&bin, "initdb", run_as)
        .args(["-D"])
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The spawning thread must outlive every test: PR_SET_PDEATHSIG fires
    // when the thread that forked the child ends.
    let (tx, rx) = std::sync::mpsc::channel();
    let (bin2, data2) = (bin.clone(), data.clone());
    std::thread::Builder::new()
        .name("testpg-parent".into())
        .spawn(move || {
            let mut last = String::new();
            for _ in 0..3 {
                let started = free_port().and_then(|port| {
                    let mut child = spawn_postgres(&bin2, &data2, port, run_as)?;
                    match wait_ready(&bin2, port, &mut child, &data2) {
                        Ok(()) => Ok((port, child)),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            Err(e)
                        }
                    }
                });
                match started {
                    Ok(ok) => {
                        let _ = tx.send(Ok(ok));
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            if !last.is_empty() {
                let _ = tx.send(Err(last));
            }
            // Stays, so the server's parent-death signal is not triggered
            // before the process ends. Also serves later restarts.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    let (port, child) = rx
        .recv()
        .map_err(|_| "the start-up thread vanished".to_string())??;
    // The guard is a process of its own; reaping it is not our business.
    std::mem::forget(guard);
    Ok(Server {
        port,
        data,
        started_in: started.elapsed(),
        child: Mutex::new(Some(child)),
        _guard: Mutex::new(guard_in),
    })
}

/// The shared server, started on first use. Panics (failing the test) with
/// what to install when PostgreSQL is missing.
pub(crate) fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("cannot start the test PostgreSQL server: {e}"),
    }
}

impl Server {
    /// A connection URL for `db` as the superuser.
    pub(crate) fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server at once (fast shutdown), for the outage tests.
    /// Callers must restart it; tests that stop it run alone in their own
    /// server (see `Private`).
    fn stop(&self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut c) = child.take() {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_child(&c),
                    rustix::process::Signal::INT,
                );
                let _ = c.wait();
            }
        }
    }
}

/// A fresh database on the shared server.
pub(crate) struct TestDb {
    pub(crate) url: String,
}

impl TestDb {
    pub(crate) async fn create() -> TestDb {
        let server = tokio::task::spawn_blocking(server)
            .await
            .expect("start the test server");
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = connect(&server.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        TestDb {
            url: server.url(&name),
        }
    }

    /// A plain client on this database (for raw SQL).
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

/// A client whose connection task runs on the current runtime.
pub(crate) async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A server of its own, for a test that stops and restarts it (the shared
/// one must stay up for the others). Same clean-up rules; stopped on drop.
pub(crate) struct Private {
    server: Server,
}

impl Private {
    pub(crate) fn start() -> Private {
        match start() {
            Ok(server) => Private { server },
            Err(e) => panic!("cannot start a test PostgreSQL server: {e}"),
        }
    }

    pub(crate) fn url(&self) -> String {
        self.server.url("postgres")
    }

    pub(crate) fn stop(&self) {
        self.server.stop();
    }

    /// Starts the stopped server again on its port and data (the outage
    /// tests' "the database returns").
    pub(crate) fn restart(&self) {
        let child = run_as_user().and_then(|(bin, run_as)| {
            spawn_parked(bin, self.server.data.clone(), self.server.port, run_as)
        });
        match child {
            Ok(child) => {
                if let Ok(mut c) = self.server.child.lock() {
                    *c = Some(child);
                }
            }
            Err(e) => panic!("cannot restart the test PostgreSQL server: {e}"),
        }
    }

    /// A streaming-replication standby of this server (`pg_basebackup -R`)
    /// on a port of its own, its data inside this server's temp dir (so the
    /// same guard removes it). Promote it with `SELECT pg_promote()`.
    /// Used by the end-to-end tests (`tests/e2e/replicas_duty.rs`).
    #[allow(dead_code)]
    pub(crate) fn standby(&self) -> Private {
        let standby = (|| -> Result<Server, String> {
            let (bin, run_as) = run_as_user()?;
            // Its own directory inside the primary's temp dir: removed with
            // it by the guard, and on drop on its own.
            let root = self
                .server
                .data
                .parent()
                .ok_or("data dir without parent")?
                .join("standby");
            std::fs::create_dir(&root).map_err(|e| e.to_string())?;
            if let Some((uid, gid)) = run_as {
                rustix::fs::chown(
                    root.as_path(),
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| format!("chown {}: {e}", root.display()))?;
            }
            let data = root.join("data");
            let out = command(&bin, "pg_basebackup", run_as)
                .args(["-h", "127.0.0.1", "-p", &self.server.port.to_string()])
                .args(["-U", "postgres", "-R", "-X", "stream", "--no-sync", "-D"])
                .arg(&data)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run pg_basebackup: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "pg_basebackup failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let port = free_port()?;
            let child = spawn_parked(bin, data.clone(), port, run_as)?;
            // The child dies with this process; the primary's guard
            // removes the directory.
            let guard = Command::new("sh")
                .arg("-c")
                .arg("cat >/dev/null")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start the standby's guard: {e}"))?;
            let guard_in = guard.stdin.ok_or("guard without stdin")?;
            Ok(Server {
                port,
                data,
                started_in: Duration::ZERO,
                child: Mutex::new(Some(child)),
                _guard: Mutex::new(guard_in),
            })
        })();
        match standby {
            Ok(server) => Private { server },
            Err(e) => panic!("cannot start a test PostgreSQL standby: {e}"),
        }
    }

    #[allow(dead_code)]
    pub(crate) fn port(&self) -> u16 {
        self.server.port
    }
}

/// The PostgreSQL binaries, and the user to run them as (root cannot).
fn run_as_user() -> Result<(PathBuf, Option<(u32, u32)>), String> {
    let bin = find_bin()?;
    let run_as = if rustix::process::getuid().is_root() {
        system_user(&["postgres", "nobody"])
    } else {
        None
    };
    Ok((bin, run_as))
}

/// Starts `postgres` on `data` and `port` from a thread that parks for the
/// rest of the process, so the child's parent-death signal only fires when
/// the process ends; waits until it accepts connections.
fn spawn_parked(
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
) -> Result<Child, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("testpg-parked".into())
        .spawn(move || {
            let child =
                spawn_postgres(&bin, &data, port, run_as).and_then(|mut c| {
                    match wait_ready(&bin, port, &mut c, &data) {
                        Ok(()) => Ok(c),
                        Err(e) => {
                            let _ = c.kill();
                            let _ = c.wait();
                            Err(e)
                        }
                    }
                });
            let _ = tx.send(child);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv()
        .map_err(|_| "the postgres start-up thread vanished".to_string())?
}

impl Drop for Private {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(self.server.data.parent().unwrap_or(&self.server.data));
    }
}
