//! `pbx-sim`: the PBX provider simulator as a standalone HTTP server, for
//! trying pbx-tokend by hand, load tests and the crash campaign.
//!
//! ```text
//! cargo run --bin pbx-sim -- --listen 127.0.0.1:8080 --trusted-apps 1000
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pbx_sim::{base_url, SeedFile, SimConfig, Simulator};
use tracing_subscriber::EnvFilter;

/// Simulated PBX provider: OAuth 2.0 (`/oauth/authorize`, `/oauth/token`),
/// `POST /api/ver1.0/application/`, `GET /api/ver1.0/user/`, and a control
/// API under `/_sim/` (apps, faults, stats).
#[derive(Debug, Parser)]
#[command(name = "pbx-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,

    /// `expires_in` of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    token_lifetime: u64,

    /// Leave `expires_in` out of token answers.
    #[arg(long)]
    omit_expires_in: bool,

    /// Lifetime of authorization codes, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    code_lifetime: u64,

    /// Create N trusted apps up front: client ids app-000001.. with secrets
    /// secret-000001.. (deterministic, for load tests).
    #[arg(long, default_value_t = 0, value_name = "N")]
    trusted_apps: u32,

    /// Create the apps listed in this JSON file:
    /// {"trusted":[{"client_id":..,"client_secret":..}],
    ///  "public":[{"client_id":..,"client_secret":..,"redirect_uri":..}]}
    #[arg(long, value_name = "FILE")]
    seed_file: Option<PathBuf>,

    /// Redirect URI of the built-in public app (client id `public-app`,
    /// secret `public-secret`) used for the authorization dialog.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8765/callback",
        value_name = "URI"
    )]
    redirect_uri: String,

    /// Enforce the provider's limit on /oauth/token: answer 429 beyond this
    /// many requests in any sliding second (the real provider: about 20).
    #[arg(long, value_name = "N")]
    oauth_rate_limit: Option<u32>,

    /// Enforce the provider's limit on /oauth/token: answer 429 beyond this
    /// many requests in flight (the real provider: about 6).
    #[arg(long, value_name = "N")]
    oauth_max_concurrent: Option<u32>,
}

/// Start-up errors (address in use, a bad seed file) are reported as one
/// plain line, never as a panic or a backtrace (even with RUST_BACKTRACE).
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pbx-sim: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pbx-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sim = Simulator::new(SimConfig {
        token_lifetime_secs: args.token_lifetime,
        omit_expires_in: args.omit_expires_in,
        code_lifetime_secs: args.code_lifetime,
        oauth_rate_limit_per_sec: args.oauth_rate_limit,
        oauth_max_concurrent: args.oauth_max_concurrent,
    });
    for i in 1..=args.trusted_apps {
        sim.add_trusted_app(
            Some(&format!("app-{i:06}")),
            Some(&format!("secret-{i:06}")),
        )?;
    }
    sim.add_public_app(
        Some("public-app"),
        Some("public-secret"),
        &args.redirect_uri,
    )?;
    if let Some(path) = &args.seed_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading seed file {}", path.display()))?;
        let seed: SeedFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing seed file {}", path.display()))?;
        sim.load_seed(&seed)
            .with_context(|| format!("loading seed file {}", path.display()))?;
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another pbx-sim running there? pick another --listen)",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let base = base_url(addr);
    tracing::info!(%addr, apps = sim.app_count(), "pbx-sim listening");
    println!("pbx-sim listening on {base}");
    println!(
        "public app: client_id public-app, client_secret public-secret, redirect_uri {}",
        args.redirect_uri
    );
    if args.trusted_apps > 0 {
        println!(
            "trusted apps: app-000001..app-{:06} with secrets secret-000001..",
            args.trusted_apps
        );
        println!(
            "register one (daemon config: [pbx] allow_insecure_http = true, allow_private_addresses = true):\n  \
             echo secret-000001 | pbx-tokenctl tenant add t1 --base-url {base} \
             --trusted-client-id app-000001 --trusted-client-secret-stdin"
        );
    } else {
        println!(
            "create a trusted app: curl -s -X POST {base}/_sim/apps/trusted -d '{{}}'  \
             (or start with --trusted-apps N)"
        );
    }
    println!("stats: curl -s {base}/_sim/stats   faults: curl -X PUT {base}/_sim/faults -d '{{\"outage\":true}}'");

    sim.serve(listener, shutdown_signal()).await?;
    tracing::info!("pbx-sim stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutting down");
}
