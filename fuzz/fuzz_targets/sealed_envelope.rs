//! Sealed-value envelopes: opening arbitrary bytes never panics and never
//! succeeds on bytes that were not sealed under the key and associated
//! data; sealing then opening gives the plaintext back, and any changed
//! byte is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::crypto::Keyring;

fuzz_target!(|data: &[u8]| {
    let keys = Keyring::from_key(&[7u8; 32]);
    let split = data.first().map_or(0, |&b| usize::from(b) % 32).min(data.len());
    let (aad, rest) = data.split_at(split);
    // Arbitrary bytes as an envelope: forging one would need the key.
    if let Ok(plain) = keys.open(aad, rest) {
        panic!("opened {} forged bytes into {} bytes", rest.len(), plain.len());
    }
    // Round trip, then one flipped byte anywhere.
    let sealed = keys.seal(aad, rest);
    assert_eq!(keys.open(aad, &sealed).ok().as_deref(), Some(rest));
    if !sealed.is_empty() {
        let i = usize::from(data.get(1).copied().unwrap_or(0)) % sealed.len();
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(keys.open(aad, &bad).is_err());
        assert!(keys.open(b"other", &sealed).is_err() || aad == b"other");
    }
});
