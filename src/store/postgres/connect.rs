//! From a `postgres_url` to a connection pool: the URL parsed the libpq
//! way (several hosts, `target_session_attrs=read-write`), the password
//! from the password file rather than the URL, TCP keepalives and a TCP
//! user timeout so a database that vanished (a partition, a dead host) is
//! noticed in seconds rather than hours, TLS when the URL asks for it, and
//! a pool whose waits are bounded.
//!
//! TLS: `sslmode=require`, `verify-ca` and `verify-full` all connect over
//! rustls (ring) and verify the server's certificate chain and host name,
//! against the web PKI roots or, with `sslrootcert=FILE`, against the CA
//! certificates in that PEM file. `disable` and `prefer` (libpq's default)
//! connect without TLS: pbx-tokend never runs TLS it does not verify.
//!
//! Does not: log the URL (it could hold a password); [`describe`] names
//! hosts, port and database only.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use crate::secret::Secret;
use crate::store::StoreError;

/// Connections per process: renewal workers, admin calls and the health
/// probe share them; PostgreSQL's default max_connections (100) leaves
/// room for several replicas.
pub(super) const POOL_SIZE: usize = 16;

/// How long a call waits for a connection (or for one to be made) before
/// it answers `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long the server keeps a session idle inside a transaction (see
/// `config`).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);

/// The parts of a URL that decide TLS, taken out before tokio-postgres
/// parses it (it knows neither `verify-*` nor `sslrootcert`).
struct TlsWish {
    verify: bool,
    root_cert: Option<String>,
}

/// Rewrites `sslmode=verify-ca|verify-full` to `require` and removes
/// `sslrootcert=...` (URL query or key=value form), remembering both.
fn take_tls_options(url: &str) -> (String, TlsWish) {
    let mut wish = TlsWish {
        verify: false,
        root_cert: None,
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let (base, rest, sep) = if is_url {
        match url.split_once('?') {
            Some((b, q)) => (b.to_owned(), q.to_owned(), '&'),
            None => return (url.to_owned(), wish),
        }
    } else {
        (String::new(), url.to_owned(), ' ')
    };
    let mut kept = Vec::new();
    for part in rest.split(sep).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("sslmode", "verify-ca" | "verify-full")) => {
                wish.verify = true;
                kept.push("sslmode=require".to_owned());
            }
            Some(("sslrootcert", file)) => wish.root_cert = Some(file.to_owned()),
            _ => kept.push(part.to_owned()),
        }
    }
    let joined = kept.join(&sep.to_string());
    let out = if is_url {
        if joined.is_empty() {
            base
        } else {
            format!("{base}?{joined}")
        }
    } else {
        joined
    };
    (out, wish)
}

/// Parses the URL; errors never quote it.
pub(super) fn config(
    url: &str,
    password: Option<&Secret<String>>,
) -> Result<(Config, bool, Option<String>), StoreError> {
    let (url, wish) = take_tls_options(url);
    let mut cfg: Config = url.parse().map_err(|e: tokio_postgres::Error| {
        StoreError::Postgres(format!(
            "[store] postgres_url is not a PostgreSQL connection URL ({e}); write it as postgresql://USER@HOST:PORT[,HOST2:PORT]/DATABASE?target_session_attrs=read-write"
        ))
    })?;
    if let Some(p) = password {
        cfg.password(p.expose().as_bytes());
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    // Keepalives are on by default, but the first probe comes after two
    // hours: far too late to notice that a replica lost its database.
    if cfg.get_keepalives_idle() >= Duration::from_secs(7200) {
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(Duration::from_secs(20));
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("pbx-tokend");
    }
    // A replica frozen (SIGSTOP, a VM pause) or cut off in the middle of a
    // write transaction keeps its row locks (a tenant row, a host's
    // budget row) until the server drops the session: without this, every
    // other replica's refresh of that tenant or host waits for it, for as
    // long as the pause lasts (or the server's keepalive, two hours by
    // default). The daemon never waits on anything else inside a
    // transaction, so the server may end one that went quiet.
    let options = cfg.get_options().unwrap_or_default();
    if !options.contains("idle_in_transaction_session_timeout") {
        let ms = IDLE_IN_TRANSACTION.as_millis();
        cfg.options(format!("{options} -c idle_in_transaction_session_timeout={ms}").trim());
    }
    let tls = wish.verify || cfg.get_ssl_mode() == SslMode::Require;
    if !tls {
        cfg.ssl_mode(SslMode::Disable);
    }
    Ok((cfg, tls, wish.root_cert))
}

/// Hosts, ports and database of a config, for logs and errors (no user, no
/// password).
pub(super) fn describe(cfg: &Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = cfg
                .get_ports()
                .get(i)
                .or_else(|| cfg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!(
        "{}/{}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or("(default database)")
    )
}

pub(super) fn rustls_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(file) => {
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::Postgres(format!(
                        "cannot read the CA certificates in sslrootcert={file} of [store] postgres_url: {e}"
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Postgres(format!(
                    "sslrootcert={file} of [store] postgres_url holds no usable CA certificate"
                )));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Postgres(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The pool. Connections are made lazily; `Fast` recycling hands back a
/// pooled connection without a round trip (a broken one is dropped by the
/// caller, see `error::breaks_connection`).
pub(super) fn pool(cfg: Config, tls: bool, root_cert: Option<&str>) -> Result<Pool, StoreError> {
    let mgr_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let mgr = if tls {
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(root_cert)?);
        Manager::from_config(cfg, connector, mgr_config)
    } else {
        Manager::from_config(cfg, tokio_postgres::NoTls, mgr_config)
    };
    Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .recycle_timeout(Some(POOL_WAIT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Task(format!("cannot build the connection pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_out_of_the_url() {
        let (url, wish) = take_tls_options(
            "postgresql://pbx@db1:5432,db2:5432/pbx?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=/etc/ca.pem",
        );
        assert_eq!(
            url,
            "postgresql://pbx@db1:5432,db2:5432/pbx?target_session_attrs=read-write&sslmode=require"
        );
        assert!(wish.verify);
        assert_eq!(wish.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (cfg, tls, _) = config(&url, None).unwrap();
        assert!(tls);
        assert_eq!(describe(&cfg), "db1:5432,db2:5432/pbx");
        let (_, tls, _) = config("postgresql://pbx@db1/pbx", None).unwrap();
        assert!(
            !tls,
            "prefer (the default) runs without TLS, never unverified TLS"
        );
    }

    #[test]
    fn a_session_idle_in_a_transaction_is_ended_by_the_server() {
        let (cfg, _, _) = config("postgresql://pbx@db1/pbx", None).unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c idle_in_transaction_session_timeout=5000")
        );
        // The URL's own options are kept; its own value wins.
        let (cfg, _, _) = config(
            "postgresql://pbx@db1/pbx?options=-c%20search_path%3Dx",
            None,
        )
        .unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c search_path=x -c idle_in_transaction_session_timeout=5000")
        );
        let (cfg, _, _) = config(
            "postgresql://pbx@db1/pbx?options=-c%20idle_in_transaction_session_timeout%3D0",
            None,
        )
        .unwrap();
        assert_eq!(
            cfg.get_options(),
            Some("-c idle_in_transaction_session_timeout=0")
        );
    }

    #[test]
    fn a_bad_url_is_named_without_being_quoted() {
        let err = config("postgresql://pbx:hunter2@db1/pbx?nonsense=1", None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("postgres_url"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
