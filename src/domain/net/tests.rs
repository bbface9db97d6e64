//! Every refused range, at both ends and just outside, plus property tests
//! that every spelling of an address gets the same verdict.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use proptest::prelude::*;

use super::*;

fn ip(s: &str) -> IpAddr {
    IpAddr::from_str(s).unwrap()
}

/// (first, last, a word of the rule's name) for every refused range.
const REFUSED: &[(&str, &str, &str)] = &[
    ("0.0.0.0", "0.255.255.255", "this network"),
    ("10.0.0.0", "10.255.255.255", "RFC 1918"),
    ("100.64.0.0", "100.127.255.255", "CGNAT"),
    ("127.0.0.0", "127.255.255.255", "loopback"),
    ("169.254.0.0", "169.254.255.255", "link-local"),
    ("172.16.0.0", "172.31.255.255", "RFC 1918"),
    ("192.0.0.0", "192.0.0.255", "IETF protocol assignments"),
    ("192.0.2.0", "192.0.2.255", "TEST-NET-1"),
    ("192.88.99.0", "192.88.99.255", "6to4 relay"),
    ("192.168.0.0", "192.168.255.255", "RFC 1918"),
    ("198.18.0.0", "198.19.255.255", "benchmarking"),
    ("198.51.100.0", "198.51.100.255", "TEST-NET-2"),
    ("203.0.113.0", "203.0.113.255", "TEST-NET-3"),
    ("224.0.0.0", "239.255.255.255", "multicast"),
    ("240.0.0.0", "255.255.255.254", "reserved"),
    ("255.255.255.255", "255.255.255.255", "broadcast"),
    ("::", "::", "unspecified"),
    ("::1", "::1", "loopback"),
    ("::0.0.0.2", "::255.255.255.255", "IPv4-compatible"),
    ("::ffff:0:0.0.0.0", "::ffff:0:255.255.255.255", "RFC 2765"),
    (
        "64:ff9b:1::",
        "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        "local-use NAT64",
    ),
    ("100::", "100::ffff:ffff:ffff:ffff", "discard-only"),
    ("2001::", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
    (
        "2001:2::",
        "2001:2:0:ffff:ffff:ffff:ffff:ffff",
        "benchmarking",
    ),
    (
        "2001:1::",
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
        "IETF protocol assignments",
    ),
    (
        "2001:db8::",
        "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        "documentation",
    ),
    (
        "3fff::",
        "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
        "RFC 9637",
    ),
    ("5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "SRv6"),
    (
        "fc00::",
        "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "unique-local",
    ),
    (
        "fe80::",
        "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "link-local",
    ),
    (
        "fec0::",
        "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "site-local",
    ),
    (
        "ff00::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "multicast",
    ),
];

/// Public neighbours of the refused ranges: a PBX may be there.
const ALLOWED: &[&str] = &[
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "192.88.98.255",
    "192.88.100.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "198.51.101.0",
    "203.0.112.255",
    "203.0.114.0",
    "223.255.255.255",
    "8.8.8.8",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "64:ff9b:2::1",
    "2002:808:808::1",
    "100:0:0:1::",
    "2001:200::1",
    "2001:db7:ffff::1",
    "2001:db9::1",
    "2606:4700::1111",
    "3ffe:ffff::1",
    "3fff:1000::1",
    "5eff::1",
    "fbff::1",
    "fe00::1",
];

#[test]
fn every_refused_range_is_refused_at_both_ends_and_named() {
    for (first, last, word) in REFUSED {
        for a in [first, last] {
            let rule = internal_range(ip(a)).unwrap_or_else(|| panic!("{a} was allowed"));
            assert!(rule.contains(word), "{a}: {rule} does not name {word:?}");
            assert!(rule.contains('/'), "{a}: {rule} names no range");
        }
    }
}

#[test]
fn public_neighbours_are_allowed() {
    for a in ALLOWED {
        assert_eq!(internal_range(ip(a)), None, "{a}");
    }
}

#[test]
fn embedded_ipv4_forms_are_judged_by_the_embedded_address() {
    for (a, words) in [
        ("::ffff:127.0.0.1", ["IPv4-mapped", "loopback"]),
        ("::ffff:192.0.2.7", ["IPv4-mapped", "TEST-NET-1"]),
        ("64:ff9b::198.51.100.1", ["NAT64", "TEST-NET-2"]),
        ("64:ff9b::a9fe:a9fe", ["NAT64", "link-local"]),
        ("2002:cb00:7101::1", ["6to4", "TEST-NET-3"]),
        ("2002:0a00:0001::", ["6to4", "RFC 1918"]),
    ] {
        let rule = internal_range(ip(a)).unwrap_or_else(|| panic!("{a} was allowed"));
        for w in words {
            assert!(rule.contains(w), "{a}: {rule} lacks {w:?}");
        }
    }
}

#[test]
fn literal_urls_name_the_rule() {
    let url = url::Url::parse("https://[64:ff9b:1::a]/").unwrap();
    let why = forbidden_host(&url).unwrap();
    assert!(why.contains("64:ff9b:1::/48 (local-use NAT64"), "{why}");
    let url = url::Url::parse("https://3325256705/").unwrap(); // 198.51.100.1
    let why = forbidden_host(&url).unwrap();
    assert!(
        why.starts_with("198.51.100.1 is in 198.51.100.0/24"),
        "{why}"
    );
}

fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

fn nat64(v4: Ipv4Addr) -> IpAddr {
    let [a, b, c, d] = v4.octets();
    IpAddr::V6(Ipv6Addr::new(
        0x64,
        0xff9b,
        0,
        0,
        0,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
    ))
}

fn six_to_four(v4: Ipv4Addr) -> IpAddr {
    let [a, b, c, d] = v4.octets();
    IpAddr::V6(Ipv6Addr::new(
        0x2002,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        0,
        1,
    ))
}

proptest! {
    /// The std predicates are a floor: whatever they call internal is refused.
    #[test]
    fn std_internal_addresses_are_refused(bits: u32) {
        let v4 = Ipv4Addr::from(bits);
        if v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
            || v4.is_broadcast() || v4.is_multicast() || v4.is_documentation()
        {
            prop_assert!(is_private(IpAddr::V4(v4)));
        }
    }

    /// Mapped, NAT64 and 6to4 spellings of an IPv4 address get its verdict.
    #[test]
    fn embedded_forms_agree_with_the_ipv4_address(bits: u32) {
        let v4 = Ipv4Addr::from(bits);
        let want = is_private(IpAddr::V4(v4));
        prop_assert_eq!(is_private(mapped(v4)), want);
        prop_assert_eq!(is_private(nat64(v4)), want);
        prop_assert_eq!(is_private(six_to_four(v4)), want);
    }

    /// Decimal, hex, octal and dotted spellings parse to the same host and
    /// get the same verdict in a base URL.
    #[test]
    fn ipv4_spellings_agree(bits: u32) {
        let v4 = Ipv4Addr::from(bits);
        let [a, b, c, d] = v4.octets();
        let dotted = v4.to_string();
        let want = forbidden_host(&url::Url::parse(&format!("https://{v4}/")).unwrap()).is_some();
        prop_assert_eq!(want, is_private(IpAddr::V4(v4)));
        for spelled in [
            format!("{bits}"),
            format!("0x{bits:x}"),
            format!("0{bits:o}"),
            format!("0{a:o}.0x{b:x}.{c}.0{d:o}"),
        ] {
            let url = url::Url::parse(&format!("https://{spelled}/")).unwrap();
            prop_assert_eq!(url.host_str(), Some(dotted.as_str()));
            prop_assert_eq!(forbidden_host(&url).is_some(), want, "{}", spelled);
        }
    }

    /// Arbitrary IPv6 addresses never panic and agree with the std floor.
    #[test]
    fn ipv6_floor(bits: u128) {
        let v6 = Ipv6Addr::from(bits);
        let refused = is_private(IpAddr::V6(v6));
        if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
            || v6.is_unique_local() || v6.is_unicast_link_local()
        {
            prop_assert!(refused);
        }
    }
}
