//! `POST /oauth/token` answers: never a panic; an accepted token is a
//! Bearer token of visible ASCII within the size cap, with a lifetime in
//! range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::pbx::parse::{parse_token_response, MAX_TOKEN_BYTES};

mod common;

const MAX_LIFETIME: u64 = 366 * 24 * 3600;

fuzz_target!(|data: &[u8]| {
    let Some(a) = common::answer(data) else { return };
    match parse_token_response(a.status, &a.meta, a.body, MAX_LIFETIME) {
        Ok(grant) => {
            assert!((200..300).contains(&a.status));
            let token = grant.access_token.expose();
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
            assert!(token.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(grant.token_type, "Bearer");
            if let Some(s) = grant.expires_in_secs {
                assert!((1..=MAX_LIFETIME).contains(&s));
            }
        }
        Err(e) => common::check_error(&e),
    }
});
