//! ReportRejectedToken never hands back the token it was told the PBX
//! rejected: a round of reports right after another one waits for the next
//! refresh `[token] report_rejected_interval_ms` allows (one PBX request
//! for the whole round), a deadline that cannot cover the wait gets
//! UNAVAILABLE naming the retry time, and a token already replaced is
//! answered with the current one without a PBX request.

use std::collections::HashSet;
use std::time::Duration;

use pbx_tokend::proto::ReportRejectedTokenRequest;
use tonic::Code;

use crate::harness::*;

/// Reports `token` of "acme" with a `grpc-timeout` of `deadline`.
async fn report(d: &TestDaemon, token: &str, deadline: Duration) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(ReportRejectedTokenRequest {
        tenant_id: "acme".into(),
        access_token: token.into(),
    });
    req.set_timeout(deadline);
    d.tokens()
        .report_rejected_token(req)
        .await
        .map(|r| r.into_inner().access_token)
}

/// 20 concurrent reports of `token`: the one token they all got back.
async fn round(d: &TestDaemon, token: &str) -> String {
    let answers =
        futures::future::join_all((0..20).map(|_| report(d, token, Duration::from_secs(10)))).await;
    let got: HashSet<String> = answers.into_iter().map(|a| a.unwrap()).collect();
    assert!(!got.contains(token), "a report got the reported token back");
    assert_eq!(
        got.len(),
        1,
        "every reporter of a round gets the one new token"
    );
    got.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_rounds_of_reports_never_get_the_reported_token() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.token.report_rejected_interval_ms = 1_000).await;
    let client = d.add_tenant(&sim, "acme").await;
    let t1 = d.get_token("acme").await.unwrap().access_token;
    sim.sim.reset_stats();

    let t2 = round(&d, &t1).await;
    // Right after the first round: inside the interval, so this round
    // waits for the next allowed refresh instead of getting t2 back.
    let t3 = round(&d, &t2).await;
    assert_ne!(t3, t1);
    for t in [&t2, &t3] {
        assert!(sim.sim.issued_token_valid(t));
    }
    assert_eq!(sim.sim.token_requests_for(&client), 2);

    // Tokens already replaced: the current one, without a PBX request.
    for stale in [&t1, &t2] {
        assert_eq!(
            report(&d, stale, Duration::from_secs(10)).await.unwrap(),
            t3
        );
    }
    assert_eq!(d.get_token("acme").await.unwrap().access_token, t3);
    assert_eq!(sim.sim.token_requests_for(&client), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_cannot_cover_the_wait_is_unavailable_with_the_retry_time() {
    let sim = sim_with_lifetime(3600).await;
    let d = TestDaemon::start(|c| c.token.report_rejected_interval_ms = 60_000).await;
    let client = d.add_tenant(&sim, "acme").await;
    let t1 = d.get_token("acme").await.unwrap().access_token;
    sim.sim.reset_stats();
    let t2 = report(&d, &t1, Duration::from_secs(10)).await.unwrap();
    assert_ne!(t2, t1);

    let e = report(&d, &t2, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    for needle in [
        "report_rejected_interval_ms",
        "next attempt at",
        "retry later",
    ] {
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    assert!(!e.message().contains(&t2), "no token in messages");
    // The retry time it names is the end of the interval: after now.
    let at = e
        .message()
        .split("next attempt at ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2024-01-01T00:00:00.000Z".len(),
        "{at}"
    );
    assert_eq!(sim.sim.token_requests_for(&client), 1);
    // Nothing was fetched: GetToken still serves the held token.
    assert_eq!(d.get_token("acme").await.unwrap().access_token, t2);
}
