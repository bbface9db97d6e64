//! `pbx-tokend`: the daemon. Parses flags, loads and validates the config,
//! sets up logging, binds the listener, and handles signals and systemd
//! notifications around `pbx_tokend::daemon::Daemon`. Sub-commands for the
//! operator: `check-config`, `backup` (safe while the daemon runs) and
//! `restore FILE` (only while it is stopped).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use pbx_tokend::clock::SystemClock;
use pbx_tokend::config::{Config, StoreBackend};
use pbx_tokend::daemon::Daemon;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps a fresh PBX OAuth access token for every tenant and serves it over gRPC"
)]
struct Cli {
    /// TOML config file. Without it the daemon runs on built-in defaults
    /// (state in ./pbx-tokend-data or $STATE_DIRECTORY, gRPC on 127.0.0.1:50051).
    #[arg(long, short = 'c', env = "PBX_TOKEND_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override [grpc] listen (address:port).
    #[arg(long)]
    listen: Option<String>,
    /// Override state_dir.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration (file + environment) and exit.
    CheckConfig,
    /// Re-seal every stored secret and token under a new master key, with
    /// the daemon stopped. See README "Rotating the master key".
    RotateMasterKey {
        /// File holding the new key (32 raw bytes or 64 hex characters,
        /// mode 0600). Never given on the command line itself.
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
    },
    /// Write a consistent snapshot of the database now (VACUUM INTO; safe
    /// while the daemon runs) into <state_dir>/backups, keeping the last
    /// [backup] keep, or to --output FILE. Prints the file written.
    Backup {
        /// Write the snapshot to FILE (which must not exist) instead.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Copy this node's SQLite state (tenants, sealed secrets, tokens, jobs,
    /// authorization flows, API clients, audit log) into an EMPTY
    /// PostgreSQL database and verify it, with the daemon stopped (refused
    /// while one holds the state dir). The SQLite file is left untouched;
    /// the replicas must use the same master key. See README "Running
    /// several replicas".
    MigrateStore {
        /// The target database, e.g.
        /// postgresql://pbx@db1:5432/pbxtokend (no password in it).
        #[arg(long, value_name = "URL")]
        to_postgres: String,
        /// File holding the database password (mode 0600); default
        /// [store] postgres_password_file.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Replace the database with a backup, after checking it (PRAGMA
    /// integrity_check, schema version). The daemon must be stopped: refused
    /// (exit code 3) while a daemon holds <state_dir>/pbx-tokend.lock. The
    /// replaced database is kept beside it as pbx-tokend.db.before-restore-*.
    /// The backup opens only with the master key it was sealed under.
    Restore {
        /// The backup file (e.g. <state_dir>/backups/pbx-tokend-<time>.db).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `restore` while the daemon runs.
const EXIT_DAEMON_RUNNING: u8 = 3;

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    // Flags win over file and environment.
    if let Some(listen) = &cli.listen {
        config.grpc.listen = listen.clone();
    }
    if let Some(dir) = &cli.state_dir {
        config.state_dir = dir.clone();
    }
    config.validate()?;
    Ok(config)
}

fn main() -> std::process::ExitCode {
    // Everything this process creates (database, keys, admin.key, lock) is
    // for its own user only; the admin socket is opened up to 0660 on purpose.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pbx-tokend: invalid configuration: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(what) = sqlite_only(&cli.command) {
        if config.store.backend == StoreBackend::Postgres {
            eprintln!(
                "pbx-tokend: `{what}` works on the SQLite state only, and store.backend is \"postgres\". {}",
                match what {
                    "rotate-master-key" => "Rotating the master key of a PostgreSQL store is not supported yet: keep the current key",
                    _ => "Back the database up (and restore it) with PostgreSQL's own tools: pg_dump / pg_restore, or base backups with WAL archiving",
                }
            );
            return std::process::ExitCode::from(2);
        }
    }
    match &cli.command {
        Some(Command::CheckConfig) => {
            println!("configuration is valid");
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Backup { output }) => return backup(&config, output.as_deref()),
        Some(Command::Restore { file }) => return restore(&config, file),
        Some(Command::RotateMasterKey { new_key_file }) => return rotate(&config, new_key_file),
        Some(Command::MigrateStore {
            to_postgres,
            password_file,
        }) => return migrate_store(&config, to_postgres, password_file.as_deref()),
        None => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx-tokend: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("pbx-tokend stopped with an error: {e:#}");
            eprintln!("pbx-tokend: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A current-thread runtime for the one-shot subcommands (rotate,
/// migrate-store); the failure is already reported when it is `Err`.
fn one_shot_runtime() -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("pbx-tokend: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}

fn rotate(config: &Config, new_key_file: &std::path::Path) -> std::process::ExitCode {
    let runtime = match one_shot_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(pbx_tokend::rotation::rotate_master_key(
        config,
        new_key_file,
        Arc::new(SystemClock),
    ));
    match result {
        Ok(r) => {
            println!(
                "re-sealed {} values: master key {:08x} -> {:08x}",
                r.resealed, r.old_key_id, r.new_key_id
            );
            match (&r.retired_copy, r.installed) {
                (Some(old), true) => println!(
                    "installed the new key as {}; the old key is kept as {} (delete it once the daemon started with the new key)",
                    r.key_path.display(),
                    old.display()
                ),
                _ => println!(
                    "NOW replace {} with {} (mode 0600) before starting the daemon; keep the old key file until the daemon serves with the new one",
                    r.key_path.display(),
                    new_key_file.display()
                ),
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbx-tokend: master key rotation failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn migrate_store(
    config: &Config,
    url: &str,
    password_file: Option<&std::path::Path>,
) -> std::process::ExitCode {
    let runtime = match one_shot_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(pbx_tokend::migrate_store::migrate_store(
        config,
        url,
        password_file,
    ));
    match result {
        Ok(report) => {
            println!(
                "copied {} into PostgreSQL at {} and verified it (row counts equal, every sealed value opens):",
                config.database_path().display(),
                report.target
            );
            for (table, rows) in &report.tables {
                println!("  {table:<18} {rows:>10} rows");
            }
            println!("the SQLite state is unchanged; set [store] backend = \"postgres\" and postgres_url in the config, with the same master key, to start replicas on it");
            std::process::ExitCode::SUCCESS
        }
        Err(
            e @ pbx_tokend::migrate_store::MigrateStoreError::StateDir(
                pbx_tokend::statedir::StateDirError::Busy { .. },
            ),
        ) => {
            eprintln!("pbx-tokend: migrate-store refused: {e}");
            std::process::ExitCode::from(EXIT_DAEMON_RUNNING)
        }
        Err(e) => {
            eprintln!("pbx-tokend: migrate-store failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let log = pbx_tokend::logging::init(&config.log);
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("cannot install signal handlers")?;
    let listener = tokio::net::TcpListener::bind(&config.grpc.listen)
        .await
        .with_context(|| format!("cannot listen on {} (grpc.listen)", config.grpc.listen))?;
    let daemon = Arc::new(
        Daemon::start(config, listener, Arc::new(SystemClock))
            .await
            .context("start-up failed")?,
    );
    give_back_startup_memory();
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = spawn_watchdog(daemon.clone());

    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => match load_config(&cli) {
                Ok(new) => {
                    log.set_level(&new.log.level);
                    daemon.reload(&new);
                }
                Err(e) => {
                    tracing::error!("reload refused, keeping the running configuration: {e:#}")
                }
            },
            _ => break,
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
        // The task holds a handle to the daemon; wait until it is dropped.
        let _ = w.await;
    }
    let daemon = Arc::try_unwrap(daemon)
        .map_err(|_| anyhow::anyhow!("internal error: daemon still shared at shutdown"))?;
    daemon.shutdown().await.context("unclean shutdown")?;
    Ok(())
}

/// The sub-commands that work on `<state_dir>/pbx-tokend.db` alone.
fn sqlite_only(command: &Option<Command>) -> Option<&'static str> {
    match command {
        Some(Command::Backup { .. }) => Some("backup"),
        Some(Command::Restore { .. }) => Some("restore"),
        Some(Command::RotateMasterKey { .. }) => Some("rotate-master-key"),
        _ => None,
    }
}

fn backup(config: &Config, output: Option<&std::path::Path>) -> std::process::ExitCode {
    use pbx_tokend::clock::Clock;
    use pbx_tokend::store::backup;
    let db = config.database_path();
    if !db.is_file() {
        eprintln!("pbx-tokend: no database at {} (state_dir)", db.display());
        return std::process::ExitCode::FAILURE;
    }
    let result = match output {
        Some(path) => backup::snapshot_file(&db, path).map(|bytes| (path.to_owned(), bytes)),
        None => backup::backup_into_dir(
            &db,
            &config.backup_dir(),
            SystemClock.now(),
            config.backup.keep,
        )
        .map(|info| {
            for old in &info.pruned {
                eprintln!("removed old backup {}", old.display());
            }
            (info.path, info.bytes)
        }),
    };
    match result {
        Ok((path, bytes)) => {
            println!("{}", path.display());
            eprintln!(
                "backup written ({bytes} bytes); it opens only with this daemon's master key"
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbx-tokend: backup failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn restore(config: &Config, file: &std::path::Path) -> std::process::ExitCode {
    use pbx_tokend::clock::Clock;
    use pbx_tokend::statedir::{self, StateDirError};
    // Held until the restore is done: a daemon starting meanwhile refuses.
    let _lock = match statedir::lock(&config.state_dir) {
        Ok(l) => l,
        Err(e @ StateDirError::Busy { .. }) => {
            eprintln!("pbx-tokend: refusing to restore while the daemon runs: {e}");
            return std::process::ExitCode::from(EXIT_DAEMON_RUNNING);
        }
        Err(e) => {
            eprintln!("pbx-tokend: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let db = config.database_path();
    // The backup must open with the configured master key: a backup sealed
    // under another one would replace a working database with a dead one.
    if let Err(e) = pbx_tokend::store::backup::check_backup(file) {
        eprintln!("pbx-tokend: restore failed, nothing was changed: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let (key_path, _) = pbx_tokend::daemon::master_key_location(config);
    let keys = match pbx_tokend::crypto::Keyring::read_key_file(&key_path) {
        Ok(key) => pbx_tokend::crypto::Keyring::from_key(&key),
        Err(e) => {
            eprintln!("pbx-tokend: restore failed, nothing was changed: the master key the backup must open with cannot be read: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match pbx_tokend::store::backup::restore(file, &db, SystemClock.now(), &keys) {
        Ok(report) => {
            println!(
                "restored {} into {} ({} tenants, schema version {})",
                file.display(),
                db.display(),
                report.check.tenants,
                report.check.schema_version
            );
            if let Some(previous) = report.previous {
                println!("the replaced database is kept at {}", previous.display());
            }
            println!("start the daemon again (systemctl start pbx-tokend); tokens older than the backup are fetched anew as needed");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pbx-tokend: restore failed, nothing was changed unless said above: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }
}

/// Pings the systemd watchdog at half its interval, only while the daemon
/// proves the scheduler turns and the database answers.
fn spawn_watchdog(daemon: Arc<Daemon>) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if daemon.is_alive().await {
                notify(&[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("liveness check failed; not feeding the systemd watchdog");
            }
        }
    }))
}

/// Start-up reads every tenant through SQLite (or PostgreSQL) and builds
/// the cache; glibc keeps the buffers freed on the way in the arenas of
/// the threads that used them. Handing them back once makes the resident
/// size the cache's, not the start-up's peak (about 30 MB at 100,000
/// tenants).
fn give_back_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
