//! The config file: never a panic; an accepted config passes `validate()`
//! again and keeps the invariants the daemon relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = Config::from_toml_str(text) {
        assert!(c.validate().is_ok());
        assert!(c.refresh.at_fraction + c.refresh.jitter_fraction < 1.0);
        assert!(c.limits.per_host_requests_per_second >= 1);
        assert!(c.refresh.backoff_max_ms >= c.refresh.backoff_initial_ms);
    }
});
