//! `POST /api/ver1.0/application/` answers: never a panic; accepted
//! credentials are non-empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_tokend::pbx::parse::parse_application_response;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some(a) = common::answer(data) else { return };
    match parse_application_response(a.status, &a.meta, a.body) {
        Ok(app) => {
            assert!((200..300).contains(&a.status));
            assert!(!app.client_id.is_empty());
            assert!(!app.client_secret.expose().is_empty());
        }
        Err(e) => common::check_error(&e),
    }
});
