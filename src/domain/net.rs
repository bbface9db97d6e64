//! Network vocabulary for PBX addresses: which IP addresses and host names
//! are internal (the SSRF rules, applied by `PbxBaseUrl::parse` and at
//! connect time by `pbx::guard`), and host allow-list patterns.
//!
//! Does not: resolve names or connect (see `pbx::guard`).

use std::net::IpAddr;

fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Host names that always point inside: the machine itself and the cloud
/// metadata services (which hand out credentials).
const INTERNAL_NAMES: [&str; 5] = [
    "localhost",
    "metadata",
    "metadata.google.internal",
    "instance-data",
    "metadata.azure.internal",
];

/// Why the URL's host is refused without `allow_private_addresses`, if it
/// is. IP literals are checked as the addresses they are: the URL parser
/// already normalised decimal (`2130706433`), octal (`0177.1`), hex
/// (`0x7f.1`) and short (`127.1`) IPv4 spellings to dotted form.
pub(super) fn forbidden_host(url: &url::Url) -> Option<String> {
    if let Some(ip) = literal_ip(url) {
        return is_private(ip).then(|| {
            format!(
                "{ip} is a loopback, private, link-local, metadata or otherwise internal address"
            )
        });
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let internal = INTERNAL_NAMES.contains(&host.as_str())
        || host.ends_with(".localhost")
        || host.ends_with(".internal")
        || host.ends_with(".local");
    internal.then(|| format!("{host} names an internal host"))
}

/// Addresses a PBX must not be reached at unless `allow_private_addresses`:
/// loopback, private, link-local (and so the 169.254.169.254 metadata
/// service), unspecified, CGNAT (and the 100.100.100.200 metadata service),
/// benchmark, IETF-reserved, multicast and broadcast IPv4; and in IPv6
/// loopback, unspecified, unique-local (fc00::/7, including the fd00:ec2::254
/// metadata service), link- and site-local, multicast, and every form that
/// embeds an IPv4 address (mapped, compatible, NAT64, 6to4) when the
/// embedded address is refused.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            // ::a.b.c.d (deprecated IPv4-compatible) and 64:ff9b::a.b.c.d (NAT64).
            let compatible = s[..6] == [0, 0, 0, 0, 0, 0];
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if (compatible || nat64) && is_private(embedded(s[6], s[7])) {
                return true;
            }
            // 2002:AABB:CCDD::/48 (6to4) carries a.b.c.d in segments 1 and 2.
            if s[0] == 0x2002 && is_private(embedded(s[1], s[2])) {
                return true;
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
        }
    }
}

/// `*` matches any run of bytes (also none), `?` exactly one; the rest
/// matches itself. Iterative with one backtrack point: no recursion, no
/// allocation, linear in practice.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        match pattern.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == text[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[pi..].iter().all(|&c| c == b'*')
}

/// A `[pbx] allowed_hosts` entry: a glob over host names, e.g.
/// `*.pbx.example.com`; compared without case, ports and a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// The error is a message for the config key that held the pattern.
    pub fn parse(s: &str) -> Result<Self, String> {
        let p = s.trim_end_matches('.').to_ascii_lowercase();
        if p.is_empty() || p.len() > 253 {
            return Err(format!("{s:?} is not a host name pattern"));
        }
        if let Some(c) = p.chars().find(|c| {
            !(c.is_ascii_alphanumeric()
                || matches!(c, '.' | '-' | '*' | '?' | '_' | ':' | '[' | ']'))
        }) {
            return Err(format!(
                "{s:?} contains {c:?}; use host name characters and the wildcards * and ?"
            ));
        }
        Ok(Self(p))
    }

    /// `host` as `PbxBaseUrl::host_name` gives it (no port).
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        glob_match(self.0.as_bytes(), host.as_bytes())
    }
}
