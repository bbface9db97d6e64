//! `pbx_base_url` under the production policy (https only, no internal
//! hosts): never a panic; an accepted URL never names an internal or
//! reserved address in any spelling, and the client's re-check agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::domain::{internal_range, PbxBaseUrl, UrlPolicy};

const STRICT: UrlPolicy = UrlPolicy {
    allow_insecure_http: false,
    allow_private_addresses: false,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = PbxBaseUrl::parse(s, STRICT) else {
        return;
    };
    assert!(!url.is_internal(), "{s:?} accepted but internal");
    let host = url.host_name();
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        assert_eq!(internal_range(ip), None, "{s:?} accepted");
    }
});
