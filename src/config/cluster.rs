//! The `[cluster]` section: how this replica names itself among the others
//! sharing a PostgreSQL store, and how long a dead replica's renewal duty
//! (a host lease) can go unclaimed. Defaults and validation (called from
//! `Config::validate`); a single SQLite node ignores them.

use serde::Deserialize;

use super::{Config, ConfigError};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This replica's name; empty: host name and gRPC port.
    pub replica_name: String,
    /// How long a lease lasts unless renewed (renewed at a third of it).
    pub lease_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            replica_name: String::new(),
            lease_ttl_ms: 15_000,
        }
    }
}

/// The longest replica name (it is stored in lease rows and shown).
const MAX_NAME: usize = 128;

impl ClusterConfig {
    /// The configured name, or `<host name>:<gRPC port>` when empty.
    pub fn replica_name(&self, grpc_listen: &str) -> String {
        if !self.replica_name.is_empty() {
            return self.replica_name.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let port = grpc_listen
            .parse::<std::net::SocketAddr>()
            .map(|a| a.port().to_string())
            .unwrap_or_else(|_| grpc_listen.rsplit(':').next().unwrap_or("").to_owned());
        format!("{host}:{port}")
    }
}

impl Config {
    /// The `[cluster]` rules.
    pub(super) fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let c = &self.cluster;
        if c.replica_name.len() > MAX_NAME
            || c.replica_name
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace())
        {
            return Err(bad(
                "cluster.replica_name",
                format!("must be at most {MAX_NAME} characters without spaces or control characters (it names this replica in leases and status), or empty for <host name>:<gRPC port>"),
            ));
        }
        let (lo, hi) = (3_000, 600_000);
        if c.lease_ttl_ms < lo || c.lease_ttl_ms > hi {
            return Err(bad(
                "cluster.lease_ttl_ms",
                format!("is {}; allowed range is {lo}..={hi} (how long a dead replica's renewal duty can go unclaimed; renewed at a third of it)", c.lease_ttl_ms),
            ));
        }
        // A holder stops starting PBX calls when less than a third of its
        // lease (or one request timeout, if longer) is left; a request
        // timeout over two thirds of the lease would leave no time to
        // start calls at all, and a call could outlive the lease.
        if self.store.backend == super::store::StoreBackend::Postgres
            && self.pbx.request_timeout_ms.saturating_mul(3) > c.lease_ttl_ms.saturating_mul(2)
        {
            return Err(bad(
                "pbx.request_timeout_ms",
                format!(
                    "is {} ms, more than two thirds of cluster.lease_ttl_ms ({} ms): with several replicas on PostgreSQL every PBX call must end well inside the renewal-duty lease it was started under; lower pbx.request_timeout_ms to at most {} or raise cluster.lease_ttl_ms to at least {}",
                    self.pbx.request_timeout_ms,
                    c.lease_ttl_ms,
                    c.lease_ttl_ms * 2 / 3,
                    self.pbx.request_timeout_ms.saturating_mul(3).div_ceil(2)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    #[test]
    fn defaults_env_and_rules() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.cluster.lease_ttl_ms, 15_000);
        let name = c.cluster.replica_name("127.0.0.1:50051");
        assert!(name.ends_with(":50051"), "{name}");
        let c = Config::load_with_env(
            None,
            env(&[
                ("PBX_TOKEND_CLUSTER_REPLICA_NAME", "tokend-a"),
                ("PBX_TOKEND_CLUSTER_LEASE_TTL_MS", "9000"),
            ]),
        )
        .unwrap();
        assert_eq!(c.cluster.replica_name("127.0.0.1:1"), "tokend-a");
        assert_eq!(c.cluster.lease_ttl_ms, 9_000);
        let err = Config::load_with_env(None, env(&[("PBX_TOKEND_CLUSTER_LEASE_TTL_MS", "10")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.lease_ttl_ms") && err.contains("3000..=600000"),
            "{err}"
        );
        let err = Config::from_toml_str("[cluster]\nreplica_name = \"a b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cluster.replica_name"), "{err}");
    }

    #[test]
    fn the_pbx_request_timeout_must_fit_in_the_lease_on_postgres() {
        let pg = [
            ("PBX_TOKEND_STORE_BACKEND", "postgres"),
            ("PBX_TOKEND_STORE_POSTGRES_URL", "postgresql://pbx@db1/pbx"),
        ];
        // The defaults (10 s in 15 s) fit.
        Config::load_with_env(None, env(&pg)).unwrap();
        let mut short = pg.to_vec();
        short.push(("PBX_TOKEND_CLUSTER_LEASE_TTL_MS", "3000"));
        let err = Config::load_with_env(None, env(&short))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pbx.request_timeout_ms")
                && err.contains("cluster.lease_ttl_ms")
                && err.contains("at most 2000")
                && err.contains("at least 15000"),
            "{err}"
        );
        short.push(("PBX_TOKEND_PBX_REQUEST_TIMEOUT_MS", "2000"));
        Config::load_with_env(None, env(&short)).unwrap();
        // One SQLite node has no leases: no rule.
        Config::load_with_env(None, env(&[("PBX_TOKEND_CLUSTER_LEASE_TTL_MS", "3000")])).unwrap();
    }
}
