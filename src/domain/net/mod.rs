//! Network vocabulary for PBX addresses: which IP addresses and host names
//! are internal (the SSRF rules, applied by `PbxBaseUrl::parse` and at
//! connect time by `pbx::guard`), and host allow-list patterns.
//!
//! The address rules are tables checked against the IANA IPv4 and IPv6
//! special-purpose address registries (plus multicast and the reserved
//! 240.0.0.0/4): every range that is not a normal, globally reachable
//! unicast host is refused, because a PBX is never there and an attacker
//! who can name one can reach something inside. Each rule has a name, so a
//! refusal says which rule refused it.
//!
//! Does not: resolve names or connect (see `pbx::guard`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
        return internal_range(ip)
            .map(|rule| format!("{ip} is in {rule}, an internal or reserved range"));
    }
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    let internal = INTERNAL_NAMES.contains(&host.as_str())
        || host.ends_with(".localhost")
        || host.ends_with(".internal")
        || host.ends_with(".local");
    internal.then(|| format!("{host} names an internal host"))
}

/// Refused IPv4 ranges: (network, prefix length, what it is). The first
/// match names the rule, so more specific entries come first.
const V4_RULES: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\""),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private, RFC 1918"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space / CGNAT, RFC 6598, with the 100.100.100.200 metadata service",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local, with the 169.254.169.254 metadata service",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private, RFC 1918"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation, TEST-NET-1"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private, RFC 1918"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation, TEST-NET-2",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation, TEST-NET-3",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
];

/// How an IPv6 range is treated.
#[derive(Clone, Copy)]
enum V6Rule {
    /// Always refused.
    Refuse(&'static str),
    /// Carries an IPv4 address in its last 32 bits (or, for 6to4, in bits
    /// 16..48): refused when that address is.
    Embeds(&'static str),
}

/// IPv6 ranges, most specific first. `Embeds` forms with a public IPv4
/// address are allowed: a NAT64 network reaches a public PBX through
/// 64:ff9b::a.b.c.d, and a mapped public address is that public address.
const V6_RULES: &[(Ipv6Addr, u8, V6Rule)] = &[
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        128,
        V6Rule::Refuse("unspecified"),
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1),
        128,
        V6Rule::Refuse("loopback"),
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        V6Rule::Embeds("IPv4-mapped"),
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0),
        96,
        V6Rule::Refuse("IPv4-translated, RFC 2765"),
    ),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        V6Rule::Refuse("deprecated IPv4-compatible"),
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        V6Rule::Embeds("NAT64"),
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse("local-use NAT64, RFC 8215"),
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        V6Rule::Refuse("discard-only"),
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse("Teredo"),
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        V6Rule::Refuse("benchmarking"),
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        V6Rule::Refuse("IETF protocol assignments"),
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        V6Rule::Refuse("documentation"),
    ),
    (
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::Embeds("6to4"),
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        V6Rule::Refuse("documentation, RFC 9637"),
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        V6Rule::Refuse("segment routing (SRv6) SIDs"),
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        V6Rule::Refuse("unique-local, with the fd00:ec2::254 metadata service"),
    ),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse("link-local"),
    ),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        V6Rule::Refuse("deprecated site-local"),
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        V6Rule::Refuse("multicast"),
    ),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The refused range `ip` is in, named (e.g. `192.0.2.0/24 (documentation,
/// TEST-NET-1)`), or `None` for an address a PBX may have. Addresses that
/// embed an IPv4 address (mapped, NAT64, 6to4) are judged by it and the
/// answer names both.
pub fn internal_range(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => V4_RULES
            .iter()
            .find(|(net, len, _)| in_v4(v4, *net, *len))
            .map(|(net, len, what)| format!("{net}/{len} ({what})")),
        IpAddr::V6(v6) => {
            let (net, len, rule) = V6_RULES
                .iter()
                .find(|(net, len, _)| in_v6(v6, *net, *len))?;
            match rule {
                V6Rule::Refuse(what) => Some(format!("{net}/{len} ({what})")),
                V6Rule::Embeds(what) => {
                    let s = v6.segments();
                    // 6to4 is 2002:AABB:CCDD::/48; the others end in a.b.c.d.
                    let (hi, lo) = if s[0] == 0x2002 {
                        (s[1], s[2])
                    } else {
                        (s[6], s[7])
                    };
                    let [a, b] = hi.to_be_bytes();
                    let [c, d] = lo.to_be_bytes();
                    let v4 = Ipv4Addr::new(a, b, c, d);
                    internal_range(IpAddr::V4(v4))
                        .map(|inner| format!("{net}/{len} ({what}) embedding {v4}, in {inner}"))
                }
            }
        }
    }
}

/// Addresses a PBX must not be reached at unless `allow_private_addresses`:
/// every range in the tables above. Allocates only for a refused address.
pub fn is_private(ip: IpAddr) -> bool {
    internal_range(ip).is_some()
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

#[cfg(test)]
mod tests;
