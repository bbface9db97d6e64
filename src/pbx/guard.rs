//! The outbound guard (SSRF): a DNS resolver for the PBX HTTP client that
//! drops every internal or reserved address (loopback, private, link-local,
//! metadata, documentation, ...: `domain::internal_range`) from every
//! answer (unless `[pbx] allow_private_addresses`), so the check applies to
//! the address actually connected to, not only to the name a tenant was
//! registered with. A name that resolves only to refused addresses fails
//! to connect, and the error names the rule. Redirects are never followed (see `client/mod.rs`), so no
//! answer can steer a request elsewhere either.
//!
//! The rules themselves (which addresses, which names, IPv4 spellings) live
//! in `domain::is_private` and `PbxBaseUrl::parse`; this file applies them
//! at connect time and holds the hostile-input tests for both.
//!
//! Does not: check host allow lists (tenants do, at CreateTenant and
//! UpdateTenant) or IP-literal URLs (no DNS is involved; `client/mod.rs`
//! re-checks those before each call).

use std::net::SocketAddr;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::{internal_range, is_private};

/// Resolves with the system resolver, then filters the answer.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

/// Every address of a name was refused. The client classifies this as a
/// configuration problem (not a transient one): retrying will not help
/// until the name or `[pbx] allow_private_addresses` changes.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to internal or reserved addresses ({example}); refused ([pbx] allow_private_addresses = false)")]
pub struct RefusedAddress {
    host: String,
    /// The first refused address and the rule that refused it.
    example: String,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    /// The addresses that may be connected to, in resolver order.
    pub fn filter(&self, addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
        addrs
            .into_iter()
            .filter(|a| self.allow_private || !is_private(a.ip()))
            .collect()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = *self;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // getaddrinfo on the blocking pool, as reqwest's own resolver does.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = guard.filter(resolved.iter().copied());
            if allowed.is_empty() {
                let example = resolved
                    .iter()
                    .find_map(|a| {
                        internal_range(a.ip()).map(|rule| format!("{} is in {rule}", a.ip()))
                    })
                    .unwrap_or_else(|| "no address at all".to_owned());
                tracing::warn!(host = %host, refused = %example, "refused to connect: the PBX host resolves only to internal addresses");
                return Err(Box::new(RefusedAddress { host, example }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::str::FromStr;

    use super::*;
    use crate::domain::{HostPattern, PbxBaseUrl, UrlPolicy};

    const STRICT: UrlPolicy = UrlPolicy {
        allow_insecure_http: false,
        allow_private_addresses: false,
    };

    /// Base URLs that must be refused at CreateTenant/UpdateTenant.
    const HOSTILE_URLS: &[&str] = &[
        "https://127.0.0.1",
        "https://127.0.0.1:8443/",
        "https://127.1",
        "https://127.255.255.254",
        "https://2130706433",
        "https://017700000001",
        "https://0x7f000001",
        "https://0x7f.0.0.1",
        "https://0177.0.0.1",
        "https://0177.0.0.01",
        "https://0",
        "https://0.0.0.0",
        "https://10.0.0.1",
        "https://012.1.2.3",
        "https://167772161",
        "https://172.16.0.1",
        "https://172.31.255.255",
        "https://192.168.1.1",
        "https://0xc0.0xa8.1.1",
        "https://3232235777",
        "https://169.254.169.254",
        "https://0xa9fea9fe",
        "https://2852039166",
        "https://100.100.100.200",
        "https://100.64.0.1",
        "https://255.255.255.255",
        "https://224.0.0.1",
        "https://240.0.0.1",
        "https://[::1]",
        "https://[::]",
        "https://[0:0:0:0:0:0:0:1]",
        "https://[::ffff:127.0.0.1]",
        "https://[::ffff:7f00:1]",
        "https://[::ffff:10.0.0.1]",
        "https://[::ffff:169.254.169.254]",
        "https://[::127.0.0.1]",
        "https://[64:ff9b::10.0.0.1]",
        "https://[2002:7f00:1::1]",
        "https://[2002:a9fe:a9fe::]",
        "https://[fc00::1]",
        "https://192.0.2.1",
        "https://198.51.100.7",
        "https://203.0.113.255",
        "https://192.88.99.1",
        "https://198.19.255.255",
        "https://[::ffff:192.0.2.1]",
        "https://[::ffff:0:c000:201]",
        "https://[::ffff:0:8.8.8.8]",
        "https://[::8.8.8.8]",
        "https://[64:ff9b:1::8.8.8.8]",
        "https://[64:ff9b::203.0.113.1]",
        "https://[2001::1]",
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
        "https://[2001:2::1]",
        "https://[2001:db8::1]",
        "https://[2002:c000:201::1]",
        "https://[3fff::1]",
        "https://[100::1]",
        "https://[fd00:ec2::254]",
        "https://[fe80::1]",
        "https://[fec0::1]",
        "https://[ff02::1]",
        "https://localhost",
        "https://LOCALHOST",
        "https://localhost.",
        "https://api.localhost",
        "https://metadata.google.internal",
        "https://metadata",
        "https://instance-data",
        "https://printer.local",
        "https://user:pw@pbx.example.com",
        "http://pbx.example.com",
        "file:///etc/passwd",
        "gopher://pbx.example.com",
        "ftp://pbx.example.com",
    ];

    #[test]
    fn hostile_base_urls_are_refused() {
        assert!(HOSTILE_URLS.len() >= 30);
        for url in HOSTILE_URLS {
            assert!(
                PbxBaseUrl::parse(url, STRICT).is_err(),
                "{url} was accepted"
            );
        }
        for ok in [
            "https://pbx.example.com",
            "https://8.8.8.8",
            "https://[2001:4860:4860::8888]",
            "https://pbx.example.com:8443",
            "https://172.32.0.1",
            "https://100.128.0.1",
        ] {
            assert!(PbxBaseUrl::parse(ok, STRICT).is_ok(), "{ok} was refused");
        }
        // The same hostile addresses are fine when private addresses are allowed.
        let open = UrlPolicy {
            allow_insecure_http: false,
            allow_private_addresses: true,
        };
        assert!(PbxBaseUrl::parse("https://2130706433", open).is_ok());
    }

    #[test]
    fn ipv4_spellings_are_normalised_before_the_check() {
        let open = UrlPolicy {
            allow_insecure_http: false,
            allow_private_addresses: true,
        };
        for spelled in [
            "https://2130706433",
            "https://0x7f.1",
            "https://0177.0.0.1",
            "https://127.1",
        ] {
            let u = PbxBaseUrl::parse(spelled, open).unwrap();
            assert_eq!(u.host(), "127.0.0.1", "{spelled}");
            assert!(u.is_internal(), "{spelled}");
        }
    }

    /// Addresses a resolver might answer with (DNS rebinding, wildcard DNS
    /// such as 127.0.0.1.nip.io): every one is dropped.
    const HOSTILE_ADDRESSES: &[&str] = &[
        "127.0.0.1",
        "127.0.0.53",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.0.10",
        "169.254.169.254",
        "100.100.100.200",
        "100.64.1.1",
        "0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "224.0.0.251",
        "240.1.1.1",
        "192.0.0.8",
        "198.18.0.1",
        "192.0.2.1",
        "198.51.100.1",
        "203.0.113.1",
        "::ffff:0:192.0.2.1",
        "::ffff:0:8.8.8.8",
        "64:ff9b:1::1",
        "2001::1",
        "2001:db8::1",
        "2002:cb00:7101::1",
        "::1",
        "::",
        "::ffff:127.0.0.1",
        "::ffff:192.168.1.1",
        "::ffff:169.254.169.254",
        "::10.0.0.1",
        "64:ff9b::c0a8:101",
        "2002:c0a8:101::1",
        "fc00::1",
        "fd12:3456::1",
        "fd00:ec2::254",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::fb",
    ];

    #[test]
    fn resolver_drops_every_internal_address() {
        assert!(HOSTILE_ADDRESSES.len() >= 30);
        let guard = GuardedResolver::new(false);
        for a in HOSTILE_ADDRESSES {
            let ip = IpAddr::from_str(a).unwrap();
            assert!(
                guard.filter([SocketAddr::new(ip, 443)]).is_empty(),
                "{a} passed the resolver"
            );
        }
        // Mixed answers keep only the public addresses.
        let public = SocketAddr::from_str("93.184.216.34:443").unwrap();
        let public6 = SocketAddr::from_str("[2606:2800:220:1::1]:443").unwrap();
        let private = SocketAddr::from_str("10.0.0.1:443").unwrap();
        assert_eq!(
            guard.filter([private, public, public6]),
            vec![public, public6]
        );
        assert_eq!(GuardedResolver::new(true).filter([private]), vec![private]);
    }

    #[tokio::test]
    async fn resolving_localhost_is_refused() {
        // /etc/hosts only: no network traffic.
        let name = Name::from_str("localhost").unwrap();
        let err = match GuardedResolver::new(false).resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("allow_private_addresses"), "{err}");
        assert!(err.contains("(loopback)"), "names the rule: {err}");
        let name = Name::from_str("localhost").unwrap();
        let addrs: Vec<_> = GuardedResolver::new(true)
            .resolve(name)
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn host_allow_list_patterns() {
        let p = HostPattern::parse("*.PBX.example.com.").unwrap();
        assert!(p.matches("acme.pbx.example.com"));
        assert!(p.matches("ACME.pbx.example.com."));
        assert!(!p.matches("pbx.example.com"));
        assert!(!p.matches("acme.pbx.example.com.evil.net"));
        assert!(!p.matches("evilpbx.example.com"));
        assert!(HostPattern::parse("").is_err());
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("pbx/x").is_err());
        let u = PbxBaseUrl::parse("https://acme.pbx.example.com:8443", STRICT).unwrap();
        assert_eq!(u.host_name(), "acme.pbx.example.com");
        let open = UrlPolicy {
            allow_insecure_http: true,
            allow_private_addresses: true,
        };
        let v6 = PbxBaseUrl::parse("http://[::1]:8080", open).unwrap();
        assert_eq!(v6.host_name(), "[::1]");
    }
}
