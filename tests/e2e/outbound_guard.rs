//! The outbound guard (SSRF) against reserved ranges: CreateTenant and
//! UpdateTenant refuse literal addresses with INVALID_ARGUMENT naming the
//! rule; and a host *name* that resolves into such a range is refused at
//! connect time.
//!
//! The connect-time test needs a name that resolves to 192.0.2.1 and the
//! like without DNS, and must not send a packet anywhere if the guard were
//! broken. So it re-runs this test binary (one child test) under
//! `unshare --net --mount`: a fresh network namespace with only loopback
//! (brought up so the daemon can serve gRPC on 127.0.0.1), and a private
//! mount namespace in which a test `hosts` file is bind-mounted over
//! `/etc/hosts` (glibc's `files` source answers before DNS). Inside, a
//! faulty guard could only get "network unreachable", never reach a host,
//! and the child asserts the guard's own refusal, so that fails the test.
//! The real daemon runs in-process in the child, as everywhere else here.
//! Needs root (CI runs as root); if the namespaces cannot be made the test
//! fails with unshare's message instead of skipping.

use std::process::Command;
use std::time::Duration;

use pbx_tokend::proto::{self, AppCredentials, CreateTenantRequest, UpdateTenantRequest};
use tonic::Code;

use crate::harness::*;

fn create(id: &str, base: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        tenant_id: id.into(),
        display_name: "x".into(),
        pbx_base_url: base.into(),
        trusted_app: Some(AppCredentials {
            client_id: "a80f1e618ddd".into(),
            client_secret: "a2423941f5be408c998d5f7207570990".into(),
        }),
        ..Default::default()
    }
}

/// (literal base URL, words the refusal must contain: the rule's name).
const LITERALS: &[(&str, &str)] = &[
    (
        "https://192.0.2.1",
        "192.0.2.0/24 (documentation, TEST-NET-1)",
    ),
    (
        "https://198.51.100.20",
        "198.51.100.0/24 (documentation, TEST-NET-2)",
    ),
    (
        "https://203.0.113.9:8443",
        "203.0.113.0/24 (documentation, TEST-NET-3)",
    ),
    (
        "https://[::ffff:192.0.2.1]",
        "IPv4-mapped) embedding 192.0.2.1",
    ),
    (
        "https://[::ffff:0:8.8.8.8]",
        "::ffff:0:0:0/96 (IPv4-translated, RFC 2765)",
    ),
    (
        "https://[64:ff9b:1::808:808]",
        "64:ff9b:1::/48 (local-use NAT64",
    ),
    (
        "https://100.64.0.1",
        "100.64.0.0/10 (shared address space / CGNAT",
    ),
    ("https://198.18.0.1", "198.18.0.0/15 (benchmarking)"),
    ("https://240.0.0.1", "240.0.0.0/4 (reserved)"),
    ("https://0.1.2.3", "0.0.0.0/8"),
    ("https://224.0.0.1", "224.0.0.0/4 (multicast)"),
    ("https://[2001:db8::1]", "2001:db8::/32 (documentation)"),
    ("https://[fd00::1]", "fc00::/7 (unique-local"),
    ("https://[fe80::1]", "fe80::/10 (link-local)"),
    (
        "https://[2002:a00:1::1]",
        "2002::/16 (6to4) embedding 10.0.0.1",
    ),
    ("https://[2001:0:4136:e378::1]", "2001::/32 (Teredo)"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_literals_are_refused_at_create_and_update_naming_the_rule() {
    let sim = sim_with_lifetime(3600).await;
    let mut d = TestDaemon::start(|_| {}).await;
    d.add_tenant(&sim, "acme").await;
    // The same state dir under the production URL policy.
    d.stop().await;
    d.config.pbx.allow_insecure_http = false;
    d.config.pbx.allow_private_addresses = false;
    let d = TestDaemon::start_in(d.dir.clone(), d.config.clone()).await;
    for (url, rule) in LITERALS {
        let e = d
            .admin()
            .create_tenant(create("t1", url))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        for want in ["pbx_base_url", rule, "allow_private_addresses"] {
            assert!(
                e.message().contains(want),
                "{url}: {want:?} not in {}",
                e.message()
            );
        }
        let e = d
            .admin()
            .update_tenant(UpdateTenantRequest {
                tenant_id: "acme".into(),
                pbx_base_url: Some(url.to_string()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().contains(rule), "{url}: {}", e.message());
    }
    // Nothing was stored or changed, and no request reached the PBX.
    let listed = d
        .admin()
        .list_tenants(proto::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tenants.len(), 1);
    assert_eq!(d.tenant("acme").await.pbx_base_url, sim.base_url);
    assert_eq!(sim.sim.stats().token_requests_total, 1);
}

/// Set for the child run; the child refuses to touch anything without it.
const CHILD_ENV: &str = "PBX_TOKEND_E2E_NETNS_CHILD";

/// Names the child's `/etc/hosts` maps into refused ranges: (name, the rule
/// the refusal must name). `mixed.test` also has a loopback address: every
/// address is refused, so is the name.
const HOSTS: &str = "\
127.0.0.1 localhost
::1 localhost
192.0.2.1 doc1.test
198.51.100.7 doc2.test
203.0.113.7 doc3.test
::ffff:0:c000:201 translated.test
64:ff9b:1::c000:201 nat64local.test
";

const NAMES: &[(&str, &str)] = &[
    (
        "doc1.test",
        "192.0.2.1 is in 192.0.2.0/24 (documentation, TEST-NET-1)",
    ),
    ("doc2.test", "198.51.100.0/24 (documentation, TEST-NET-2)"),
    ("doc3.test", "203.0.113.0/24 (documentation, TEST-NET-3)"),
    (
        "translated.test",
        "::ffff:0:0:0/96 (IPv4-translated, RFC 2765)",
    ),
    ("nat64local.test", "64:ff9b:1::/48 (local-use NAT64"),
];

#[test]
fn a_name_resolving_into_a_reserved_range_is_refused_at_connect_time() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, HOSTS).unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--", "sh", "-ec"])
        .arg(
            "ip link set lo up; mount --bind \"$1\" /etc/hosts; \
             exec \"$2\" outbound_guard::netns_child --exact --ignored --nocapture --test-threads=1",
        )
        .arg("sh")
        .arg(&hosts)
        .arg(&exe)
        .env(CHILD_ENV, "1")
        .output()
        .expect("run unshare (util-linux) to make the network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the connect-time guard test in a network namespace failed or could not run \
         (needs root for unshare --net --mount; this is not skipped):\n{stdout}\n{stderr}"
    );
}

/// Runs only inside the namespace made above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_name_resolving_into_a_reserved_range_is_refused_at_connect_time"]
async fn netns_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        eprintln!("not inside the test's network namespace; nothing to do");
        return;
    }
    // Only loopback: nothing the daemon does here can leave the machine.
    // (/proc/self/net follows the process's namespace; /sys/class/net the mounter's.)
    let links: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_owned()))
        .collect();
    assert_eq!(links, ["lo"], "not an isolated network namespace");
    // The bind-mounted hosts file answers (else the test would prove nothing).
    let resolved: Vec<_> = tokio::net::lookup_host("doc1.test:443")
        .await
        .unwrap()
        .collect();
    assert_eq!(resolved, ["192.0.2.1:443".parse().unwrap()]);

    let d = TestDaemon::start(|c| {
        c.pbx.allow_insecure_http = false;
        c.pbx.allow_private_addresses = false;
        c.pbx.connect_timeout_ms = 2_000;
    })
    .await;
    for (name, rule) in NAMES {
        let url = format!("https://{name}");
        // Names pass CreateTenant's literal checks; the resolver refuses.
        let e = d
            .admin()
            .create_tenant(create("t1", &url))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{url}: {e:?}");
        for want in [
            *rule,
            "resolves only to internal or reserved addresses",
            "allow_private_addresses",
        ] {
            assert!(
                e.message().contains(want),
                "{url}: {want:?} not in {}",
                e.message()
            );
        }
        let e = d
            .admin()
            .get_tenant(proto::GetTenantRequest {
                tenant_id: "t1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "nothing stored for {url}");
    }
    // With private addresses allowed the same name gets as far as a connect,
    // which the namespace makes fail: the refusal above was the guard's.
    let open = TestDaemon::start(|c| {
        c.pbx.allow_insecure_http = false;
        c.pbx.connect_timeout_ms = 2_000;
    })
    .await;
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        open.admin()
            .create_tenant(create("t1", "https://doc1.test")),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        e.message().contains("cannot connect to doc1.test")
            && !e.message().contains("resolves only to"),
        "{}",
        e.message()
    );
}
