//! Tests of loading and validation as a whole (defaults, file then
//! environment, errors naming the key, fuzzing regressions); the sections'
//! own rules are tested beside them (`grpc.rs`).

use super::*;

/// Environment pairs as `Config::load` takes them (shared with the
/// submodules' tests).
pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_match_design() {
    let c = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(c.grpc.listen, "127.0.0.1:50051");
    assert_eq!(c.token.default_min_valid_seconds, 10);
    assert_eq!(c.token.default_lifetime_seconds, 3300);
    assert_eq!(c.limits.per_host_requests_per_second, 20);
    assert_eq!(c.limits.per_host_concurrent, 6);
    assert_eq!(c.refresh.at_fraction, 0.8);
    assert_eq!(c.refresh.max_concurrent, 64);
    assert_eq!(c.refresh.max_concurrent_per_host, 16);
    assert!(!c.pbx.allow_insecure_http);
    assert_eq!(c.onboarding.state_ttl_seconds, 600);
    assert_eq!(c.callback.listen_addr(), None);
}

#[test]
fn onboarding_and_callback_from_env() {
    let c = Config::load_with_env(
        None,
        env(&[
            ("PBX_TOKEND_CALLBACK_LISTEN", "127.0.0.1:8081"),
            ("PBX_TOKEND_ONBOARDING_STATE_TTL_SECONDS", "5"),
            ("PBX_TOKEND_CONFIG", "/etc/pbx-tokend.toml"),
            ("PBX_TOKEND_TEST_CRASH_AFTER_STEP", "3"),
        ]),
    )
    .unwrap();
    assert_eq!(c.callback.listen_addr(), Some("127.0.0.1:8081"));
    assert_eq!(c.onboarding.state_ttl_seconds, 5);
    for (var, value, key) in [
        ("PBX_TOKEND_CALLBACK_LISTEN", "nowhere", "callback.listen"),
        (
            "PBX_TOKEND_ONBOARDING_APP_NAME_TEMPLATE",
            "app {suffix}",
            "onboarding.app_name_template",
        ),
    ] {
        let err = Config::load_with_env(None, env(&[(var, value)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "state_dir = \"/tmp/x\"\n[grpc]\nlisten = \"127.0.0.1:1\"\n[limits]\nper_host_concurrent = 3\n",
    )
    .unwrap();
    let c = Config::load_with_env(
        Some(&path),
        env(&[
            ("PBX_TOKEND_LIMITS_PER_HOST_CONCURRENT", "4"),
            ("PBX_TOKEND_PBX_ALLOW_INSECURE_HTTP", "true"),
            ("PBX_TOKEND_LOG_FORMAT", "json"),
            ("PBX_TOKEND_STATE_DIR", "/tmp/y"),
            ("UNRELATED", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.limits.per_host_concurrent, 4);
    assert!(c.pbx.allow_insecure_http);
    assert_eq!(c.log.format, "json");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/y"));
    assert_eq!(c.grpc.listen, "127.0.0.1:1");
}

#[test]
fn master_key_credential_requirement_from_env_and_its_conflict() {
    let var = "PBX_TOKEND_REQUIRE_MASTER_KEY_CREDENTIAL";
    let c = Config::load_with_env(None, env(&[(var, "true")])).unwrap();
    assert!(c.require_master_key_credential);
    assert!(!Config::default().require_master_key_credential);
    // The unit's requirement and an explicit key file contradict each
    // other: refused, naming both keys and the way out.
    let err = Config::load_with_env(
        None,
        env(&[(var, "true"), ("PBX_TOKEND_MASTER_KEY_FILE", "/etc/k")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("require_master_key_credential"), "{err}");
    assert!(err.contains("master_key_file"), "{err}");
    assert!(err.contains("=false"), "{err}");
}

#[test]
fn errors_name_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("PBX_TOKEND_REFRESH_AT_FRACTION", "1.5")],
            "refresh.at_fraction",
        ),
        (&[("PBX_TOKEND_GRPC_LISTEN", "nowhere")], "grpc.listen"),
        (&[("PBX_TOKEND_LOG_FORMAT", "xml")], "log.format"),
        (
            &[("PBX_TOKEND_LIMITS_PER_HOST_REQUESTS_PER_SECOND", "0")],
            "limits.per_host_requests_per_second",
        ),
        (&[("PBX_TOKEND_BOGUS_KEY", "1")], "PBX_TOKEND_BOGUS_KEY"),
        (
            &[("PBX_TOKEND_METRICS_LISTEN", "nowhere")],
            "metrics.listen",
        ),
        (&[("PBX_TOKEND_BACKUP_CRON", "daily")], "backup.cron"),
        (
            &[("PBX_TOKEND_HEALTH_PROBE_INTERVAL_MS", "1")],
            "health.probe_interval_ms",
        ),
        (&[("PBX_TOKEND_PBX_NO_SUCH_KEY", "1")], "no_such_key"),
        (
            &[("PBX_TOKEND_LIMITS_PER_HOST_CONCURRENT", "many")],
            "per_host_concurrent",
        ),
    ];
    for (vars, needle) in cases {
        let err = Config::load_with_env(None, env(vars))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
}

#[test]
fn from_toml_str_parses_and_validates() {
    let c = Config::from_toml_str("[limits]\nper_host_concurrent = 3\n").unwrap();
    assert_eq!(c.limits.per_host_concurrent, 3);
    let err = Config::from_toml_str("[refresh]\nat_fraction = 2.0\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("refresh.at_fraction"), "{err}");
    assert!(Config::from_toml_str("[grpc\n").is_err());
}

/// Regression (fuzzing, `config_toml`): this `[log] level` made the
/// filter's regex compiler allocate more than 2 GiB.
#[test]
fn a_crafted_log_level_parses_in_bounded_memory() {
    let text = include_str!("../../fuzz/regressions/config_toml-oom-872f3eb9.toml");
    let started = std::time::Instant::now();
    let _ = Config::from_toml_str(text);
    // Not a timing assertion: without the fix this never returns.
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// Found by fuzzing (second run): a `[log] level` full of odd
/// directives and escapes.
#[test]
fn a_crafted_log_level_is_answered_without_a_panic() {
    let text = include_str!("../../fuzz/regressions/config_toml-crash-34c95ae8.toml");
    if let Ok(c) = Config::from_toml_str(text) {
        assert!(c.validate().is_ok());
    }
}

#[test]
fn unknown_file_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[grpc]\nlistn = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::load_with_env(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("listn"), "{err}");
}

#[test]
fn idle_after_seconds_defaults_reads_env_and_is_checked() {
    let c = Config::load_with_env(None, env(&[])).unwrap();
    assert_eq!(c.refresh.idle_after_seconds, 3600);
    let c = Config::load_with_env(
        None,
        env(&[("PBX_TOKEND_REFRESH_IDLE_AFTER_SECONDS", "60")]),
    )
    .unwrap();
    assert_eq!(c.refresh.idle_after_seconds, 60);
    let e = Config::load_with_env(None, env(&[("PBX_TOKEND_REFRESH_IDLE_AFTER_SECONDS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refresh.idle_after_seconds"), "{e}");
}
