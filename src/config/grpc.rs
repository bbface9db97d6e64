//! The `[grpc]` section's rules (TLS files, loopback-only without TLS,
//! admin socket path, server and connection limits), split from `config/validate.rs` to keep it
//! readable. Only checks; the values are used by `daemon` and `api::serve`.

use super::{Config, ConfigError};

impl Config {
    /// The `[grpc]` rules: TLS files come in pairs, and without TLS only a
    /// loopback address may be listened on unless explicitly allowed.
    pub(super) fn validate_grpc(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let g = &self.grpc;
        match (&g.tls_cert_file, &g.tls_key_file) {
            (Some(_), None) => {
                return Err(bad(
                    "grpc.tls_key_file",
                    "is required with grpc.tls_cert_file".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "grpc.tls_cert_file",
                    "is required with grpc.tls_key_file".into(),
                ))
            }
            _ => {}
        }
        if g.tls_client_ca_file.is_some() && g.tls_cert_file.is_none() {
            return Err(bad(
                "grpc.tls_client_ca_file",
                "client certificates (mTLS) need TLS: set grpc.tls_cert_file and grpc.tls_key_file"
                    .into(),
            ));
        }
        if let Ok(addr) = g.listen.parse::<std::net::SocketAddr>() {
            if !self.tls_enabled() && !addr.ip().is_loopback() && !g.insecure_listen_public {
                return Err(bad(
                    "grpc.listen",
                    format!("{addr} is not a loopback address and TLS is off: API keys and tokens would cross the network in clear. Set grpc.tls_cert_file and grpc.tls_key_file, or grpc.insecure_listen_public = true if something else encrypts the traffic"),
                ));
            }
        }
        if matches!(&g.admin_socket, Some(p) if p.as_os_str().is_empty() || p.is_relative()) {
            return Err(bad(
                "grpc.admin_socket",
                "must be an absolute path such as /run/pbx-tokend/admin.sock".into(),
            ));
        }
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err(bad(key, format!("is {v}; allowed range is {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range(
            "grpc.max_message_bytes",
            g.max_message_bytes,
            4096,
            64 * 1024 * 1024,
        )?;
        range(
            "grpc.max_concurrent_streams",
            g.max_concurrent_streams.into(),
            1,
            100_000,
        )?;
        range(
            "grpc.max_watch_streams_per_connection",
            g.max_watch_streams_per_connection.into(),
            1,
            100_000,
        )?;
        range(
            "grpc.max_unauthenticated_streams_per_connection",
            g.max_unauthenticated_streams_per_connection.into(),
            1,
            100_000,
        )?;
        range(
            "grpc.max_unauthenticated_streams",
            g.max_unauthenticated_streams.into(),
            1,
            1_000_000,
        )?;
        // Streams that may stay open must leave HTTP/2 streams free for
        // unary calls on the same connection, or those wait behind them.
        let long_lived = u64::from(g.max_watch_streams_per_connection)
            + u64::from(g.max_unauthenticated_streams_per_connection);
        if long_lived >= u64::from(g.max_concurrent_streams) {
            return Err(bad(
                "grpc.max_watch_streams_per_connection",
                format!(
                    "{} plus grpc.max_unauthenticated_streams_per_connection ({}) must stay below grpc.max_concurrent_streams ({}), so unary calls on a connection always find a free stream; lower them or raise grpc.max_concurrent_streams",
                    g.max_watch_streams_per_connection,
                    g.max_unauthenticated_streams_per_connection,
                    g.max_concurrent_streams
                ),
            ));
        }
        range(
            "grpc.concurrency_per_connection",
            g.concurrency_per_connection.into(),
            1,
            100_000,
        )?;
        range(
            "grpc.request_timeout_ms",
            g.request_timeout_ms,
            100,
            3_600_000,
        )?;
        range("grpc.max_connections", g.max_connections, 1, 1_000_000)?;
        range(
            "grpc.handshake_timeout_ms",
            g.handshake_timeout_ms,
            100,
            60_000,
        )?;
        range(
            "grpc.keepalive_interval_ms",
            g.keepalive_interval_ms,
            1_000,
            3_600_000,
        )?;
        range(
            "grpc.keepalive_timeout_ms",
            g.keepalive_timeout_ms,
            1_000,
            600_000,
        )?;
        // 0 is "off"; otherwise long enough that a client between two calls
        // is not cut every few milliseconds.
        if g.idle_timeout_ms != 0 {
            range("grpc.idle_timeout_ms", g.idle_timeout_ms, 100, 86_400_000).map_err(|_| {
                bad(
                    "grpc.idle_timeout_ms",
                    format!(
                        "is {}; allowed: 0 (idle connections are never closed) or 100..=86400000 milliseconds",
                        g.idle_timeout_ms
                    ),
                )
            })?;
        }
        Ok(())
    }
}

/// A config that sets `[grpc] max_concurrent_streams` but not the
/// per-connection stream caps gets caps that fit under it (3/4 for
/// WatchToken streams, 1/16 but at most 16 for keyless streams), so a file
/// written before those caps existed keeps working; the defaults are the
/// same fractions of the default 256. Keys that are set are left alone (and
/// validated as they are).
pub(super) fn derive_stream_caps(table: &mut toml::Table) {
    let Some(toml::Value::Table(grpc)) = table.get_mut("grpc") else {
        return;
    };
    let Some(max) = grpc
        .get("max_concurrent_streams")
        .and_then(toml::Value::as_integer)
    else {
        return;
    };
    let derived = [
        ("max_watch_streams_per_connection", (max * 3 / 4).max(1)),
        (
            "max_unauthenticated_streams_per_connection",
            (max / 16).clamp(1, 16),
        ),
    ];
    for (key, value) in derived {
        grpc.entry(key).or_insert(toml::Value::Integer(value));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::super::*;

    #[test]
    fn stream_caps_follow_a_lowered_max_concurrent_streams_unless_set() {
        let c = Config::from_toml_str("[grpc]\nmax_concurrent_streams = 100\n").unwrap();
        assert_eq!(c.grpc.max_watch_streams_per_connection, 75);
        assert_eq!(c.grpc.max_unauthenticated_streams_per_connection, 6);
        let c = Config::from_toml_str("").unwrap();
        assert_eq!(c.grpc.max_watch_streams_per_connection, 192);
        assert_eq!(c.grpc.max_unauthenticated_streams_per_connection, 16);
        // Set keys are kept, and still checked against the limit.
        let err = Config::from_toml_str(
            "[grpc]\nmax_concurrent_streams = 100\nmax_watch_streams_per_connection = 99\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("grpc.max_watch_streams_per_connection"),
            "{err}"
        );
    }

    #[test]
    fn security_keys_are_checked() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("PBX_TOKEND_GRPC_TLS_CERT_FILE", "/c.pem")],
                "grpc.tls_key_file",
            ),
            (
                &[("PBX_TOKEND_GRPC_TLS_KEY_FILE", "/k.pem")],
                "grpc.tls_cert_file",
            ),
            (
                &[("PBX_TOKEND_GRPC_TLS_CLIENT_CA_FILE", "/ca.pem")],
                "grpc.tls_client_ca_file",
            ),
            (
                &[("PBX_TOKEND_GRPC_LISTEN", "0.0.0.0:50051")],
                "grpc.listen",
            ),
            (
                &[("PBX_TOKEND_GRPC_ADMIN_SOCKET", "admin.sock")],
                "grpc.admin_socket",
            ),
            (
                &[("PBX_TOKEND_GRPC_MAX_MESSAGE_BYTES", "10")],
                "grpc.max_message_bytes",
            ),
            (
                &[("PBX_TOKEND_GRPC_REQUEST_TIMEOUT_MS", "0")],
                "grpc.request_timeout_ms",
            ),
            (
                &[("PBX_TOKEND_GRPC_MAX_UNAUTHENTICATED_STREAMS", "0")],
                "grpc.max_unauthenticated_streams",
            ),
            (
                &[(
                    "PBX_TOKEND_GRPC_MAX_UNAUTHENTICATED_STREAMS_PER_CONNECTION",
                    "0",
                )],
                "grpc.max_unauthenticated_streams_per_connection",
            ),
            (
                &[("PBX_TOKEND_GRPC_MAX_WATCH_STREAMS_PER_CONNECTION", "0")],
                "grpc.max_watch_streams_per_connection",
            ),
            (
                &[
                    ("PBX_TOKEND_GRPC_MAX_CONCURRENT_STREAMS", "200"),
                    ("PBX_TOKEND_GRPC_MAX_WATCH_STREAMS_PER_CONNECTION", "192"),
                ],
                "grpc.max_concurrent_streams (200)",
            ),
            (
                &[("PBX_TOKEND_GRPC_MAX_CONNECTIONS", "0")],
                "grpc.max_connections",
            ),
            (
                &[("PBX_TOKEND_GRPC_HANDSHAKE_TIMEOUT_MS", "10")],
                "grpc.handshake_timeout_ms",
            ),
            (
                &[("PBX_TOKEND_GRPC_KEEPALIVE_INTERVAL_MS", "5")],
                "grpc.keepalive_interval_ms",
            ),
            (
                &[("PBX_TOKEND_GRPC_KEEPALIVE_TIMEOUT_MS", "0")],
                "grpc.keepalive_timeout_ms",
            ),
            (
                &[("PBX_TOKEND_GRPC_IDLE_TIMEOUT_MS", "50")],
                "grpc.idle_timeout_ms",
            ),
            (
                &[(
                    "PBX_TOKEND_PBX_ALLOWED_HOSTS",
                    "[\"ok.example.com\", \"bad host\"]",
                )],
                "pbx.allowed_hosts[1]",
            ),
        ];
        for (vars, needle) in cases {
            let err = Config::load_with_env(None, env(vars))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        let ok = Config::load_with_env(
            None,
            env(&[
                ("PBX_TOKEND_GRPC_LISTEN", "0.0.0.0:50051"),
                ("PBX_TOKEND_GRPC_TLS_CERT_FILE", "/c.pem"),
                ("PBX_TOKEND_GRPC_TLS_KEY_FILE", "/k.pem"),
                ("PBX_TOKEND_PBX_ALLOWED_HOSTS", "[\"*.pbx.example.com\"]"),
            ]),
        )
        .unwrap();
        assert!(ok.tls_enabled());
        let off = Config::load_with_env(None, env(&[("PBX_TOKEND_GRPC_IDLE_TIMEOUT_MS", "0")]));
        assert_eq!(off.map(|c| c.grpc.idle_timeout_ms).ok(), Some(0));
        assert_eq!(ok.pbx.allowed_hosts, vec!["*.pbx.example.com"]);
        let public = Config::load_with_env(
            None,
            env(&[
                ("PBX_TOKEND_GRPC_LISTEN", "0.0.0.0:50051"),
                ("PBX_TOKEND_GRPC_INSECURE_LISTEN_PUBLIC", "true"),
            ]),
        );
        assert!(public.is_ok());
    }
}
