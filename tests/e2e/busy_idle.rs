//! Busy and idle tenants when a host's budget is short (issue 29): a host
//! limited to 2 token requests/s (the simulator answers 429 above that)
//! with 60 tenants on 20-second tokens renewed at half their life needs
//! 6 renewals/s. Busy tenants (asked for every second) keep getting a
//! valid token from memory; idle ones are not renewed ahead of expiry and
//! get a valid token on their first GetToken; the provider never sees more
//! than 2 requests in any second.

use std::time::Duration;

use futures::future::join_all;
use pbx_sim::ConfigUpdate;
use pbx_tokend::proto::GetServerStatusRequest;

use crate::harness::{now_ms, sim_with_lifetime, ts_ms, TestDaemon};

const TENANTS: usize = 60;
const BUSY: usize = 8;

fn tenant(i: usize) -> String {
    format!("t{i:02}")
}

/// The value of the sample whose line starts with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_budget_keeps_busy_tenants_warm_and_serves_idle_ones_on_first_use() {
    let sim = sim_with_lifetime(20).await;
    // Registered at a normal rate (60 first tokens), then the budget
    // shrinks to 2/s at both ends and the daemon restarts with it.
    let mut d = TestDaemon::start(|c| {
        c.metrics.listen = Some("127.0.0.1:0".into());
        c.limits.per_host_requests_per_second = 50;
        c.refresh.at_fraction = 0.5;
        c.refresh.idle_after_seconds = 4;
        c.token.default_min_valid_seconds = 2;
    })
    .await;
    let mut clients = Vec::new();
    let names: Vec<String> = (0..TENANTS).map(tenant).collect();
    for chunk in names.chunks(10) {
        let added = join_all(chunk.iter().map(|t| d.add_tenant(&sim, t))).await;
        clients.extend(added);
    }
    d.config.limits.per_host_requests_per_second = 2;
    sim.sim.update_config(&ConfigUpdate {
        oauth_rate_limit_per_sec: Some(Some(2)),
        ..Default::default()
    });
    let d = d.restart().await;
    sim.sim.reset_stats();
    let metrics = d.daemon.as_ref().unwrap().metrics_addr().unwrap();

    // Every tenant counts as busy for idle_after_seconds after the start;
    // then only the first BUSY, asked every second, are. Their renewals
    // (due ~10 s after registration) and the next ones come while the
    // others idle; the idle tokens expire ~20 s after registration.
    let started = tokio::time::Instant::now();
    let mut first_use_done = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < Duration::from_secs(33) {
        tick.tick().await;
        for i in 0..BUSY {
            let t = d.get_token(&tenant(i)).await.unwrap();
            let left = ts_ms(&t.expires_at) - now_ms();
            assert!(
                left > 1_000,
                "busy {} got a token with {left} ms left",
                tenant(i)
            );
        }
        if !first_use_done && started.elapsed() >= Duration::from_secs(21) {
            first_use_done = true;
            // First use of idle tenants whose tokens expired: each fetches
            // on demand, ahead of the busy tenants' proactive renewals.
            let idle: Vec<String> = (BUSY..BUSY + 6).map(tenant).collect();
            let answers = join_all(idle.iter().map(|t| d.get_token(t))).await;
            for (t, a) in idle.iter().zip(answers) {
                let a = a.unwrap_or_else(|e| panic!("idle {t}: {e}"));
                assert!(ts_ms(&a.expires_at) - now_ms() > 10_000, "idle {t}: {a:?}");
            }
        }
    }
    assert!(first_use_done);

    let status = d
        .admin()
        .get_server_status(GetServerStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let host = &status.hosts[0];
    assert!(host.demand_ratio > 1.0, "{host:?}");
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Busy tenants were always answered from memory; the idle first uses
    // were the misses.
    let misses = |a: &str| {
        sample(
            &text,
            &format!("pbx_tokend_get_token_cache_misses_total{{activity=\"{a}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(misses("busy"), 0.0, "{text}");
    assert!(misses("idle") >= 6.0, "{text}");
    let series = format!("pbx_tokend_host_demand_ratio{{host=\"{}\"}}", host.host);
    assert!(sample(&text, &series).unwrap_or(0.0) > 1.0, "{text}");
    let series = format!("pbx_tokend_tenants_busy{{host=\"{}\"}}", host.host);
    assert_eq!(sample(&text, &series), Some(BUSY as f64), "{text}");

    // Idle tenants never asked for were not renewed ahead of expiry.
    for (i, client) in clients.iter().enumerate().skip(BUSY + 6) {
        assert_eq!(
            sim.sim.token_requests_for(client),
            0,
            "idle {} was renewed",
            tenant(i)
        );
    }
    // The busy ones were, ahead of expiry (twice each in 33 s of 10 s
    // renewals at most a little late).
    for (i, client) in clients.iter().enumerate().take(BUSY) {
        assert!(
            sim.sim.token_requests_for(client) >= 2,
            "busy {}",
            tenant(i)
        );
    }
    let stats = sim.sim.stats();
    assert!(stats.max_token_requests_in_any_1s_window <= 2, "{stats:?}");
    assert_eq!(stats.responses_429, 0, "{stats:?}");
}
