//! The Prometheus endpoint, scraped over HTTP: every metric the operator
//! documentation lists is there, with values that match what happened.

use std::time::Duration;

use crate::harness::*;

/// Every metric name docs/alerts.yml and the README rely on.
const METRICS: [&str; 22] = [
    "pbx_tokend_get_token_requests_total",
    "pbx_tokend_token_age_served_seconds_bucket",
    "pbx_tokend_renewals_total",
    "pbx_tokend_renewal_duration_seconds_bucket",
    "pbx_tokend_pbx_http_requests_total",
    "pbx_tokend_tenants",
    "pbx_tokend_tokens_in_renewal_window",
    "pbx_tokend_tokens_expired",
    "pbx_tokend_tenants_without_token",
    "pbx_tokend_renewal_jobs_due",
    "pbx_tokend_renewal_jobs_overdue",
    "pbx_tokend_renewal_oldest_overdue_seconds",
    "pbx_tokend_renewals_in_flight",
    "pbx_tokend_rate_limit_waits_total",
    "pbx_tokend_database_writable",
    "pbx_tokend_database_reachable",
    "pbx_tokend_host_demand_ratio",
    "pbx_tokend_backups_total",
    "pbx_tokend_build_info",
    "pbx_tokend_webhook_outbox_depth",
    "pbx_tokend_webhook_deliveries_total",
    "pbx_tokend_webhook_oldest_undelivered_seconds",
];

async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (ctype, resp.text().await.unwrap())
}

/// The value of the sample whose line starts with `series` (name + labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_exposes_every_listed_metric() {
    let sim = sim_with_lifetime(2).await;
    let d = TestDaemon::start(|c| {
        c.metrics.listen = Some("127.0.0.1:0".into());
        c.limits.per_host_concurrent = 1;
    })
    .await;
    let addr = d.daemon.as_ref().unwrap().metrics_addr().unwrap();
    for t in ["m1", "m2", "m3"] {
        d.add_tenant(&sim, t).await;
    }
    for _ in 0..5 {
        d.get_token("m1").await.unwrap();
    }
    assert_eq!(
        d.get_token("nobody").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    d.daemon.as_ref().unwrap().backup_now().await.unwrap();
    // Wait for a scheduled renewal (2 s tokens renew after ~1.6 s).
    let host = sim.base_url.trim_start_matches("http://").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let text = loop {
        let (_, t) = scrape(addr).await;
        let ok = value(&t, "pbx_tokend_renewals_total{result=\"success\"}").unwrap_or(0.0);
        // 3 first fetches at creation + at least 3 scheduled renewals.
        if ok >= 6.0 {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewals counted:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ctype, _) = scrape(addr).await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    for name in METRICS {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert_eq!(
        value(&text, "pbx_tokend_get_token_requests_total{result=\"ok\"}"),
        Some(5.0)
    );
    assert_eq!(
        value(
            &text,
            "pbx_tokend_get_token_requests_total{result=\"not_found\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "pbx_tokend_token_age_served_seconds_count"),
        Some(5.0)
    );
    assert_eq!(
        value(&text, "pbx_tokend_tenants{state=\"active\"}"),
        Some(3.0)
    );
    assert_eq!(
        value(&text, "pbx_tokend_tenants{state=\"disabled\"}"),
        Some(0.0)
    );
    assert_eq!(value(&text, "pbx_tokend_tokens_expired"), Some(0.0));
    assert_eq!(value(&text, "pbx_tokend_renewal_jobs_overdue"), Some(0.0));
    assert_eq!(value(&text, "pbx_tokend_database_writable"), Some(1.0));
    assert_eq!(
        value(&text, "pbx_tokend_backups_total{result=\"ok\"}"),
        Some(1.0)
    );
    let http_ok = value(
        &text,
        &format!("pbx_tokend_pbx_http_requests_total{{host=\"{host}\",status=\"200\"}}"),
    )
    .unwrap();
    assert!(http_ok >= 6.0, "{http_ok}");
    assert!(
        value(
            &text,
            &format!("pbx_tokend_rate_limit_waits_total{{host=\"{host}\"}}")
        )
        .is_some(),
        "{text}"
    );
    assert!(text.contains("pbx_tokend_build_info{"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_is_off_by_default() {
    let d = TestDaemon::start(|_| {}).await;
    assert!(d.daemon.as_ref().unwrap().metrics_addr().is_none());
}
