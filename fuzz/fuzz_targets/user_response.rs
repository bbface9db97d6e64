//! `GET /api/ver1.0/user/` answers: never a panic; an accepted user has a
//! non-empty login without control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::pbx::parse::parse_user_response;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some(a) = common::answer(data) else { return };
    match parse_user_response(a.status, &a.meta, a.body) {
        Ok(user) => {
            assert!((200..300).contains(&a.status));
            assert!(!user.login.is_empty());
            assert!(!user.login.chars().any(|c| c.is_control()));
        }
        Err(e) => common::check_error(&e),
    }
});
