//! The `pbx-sim` binary as a process: what someone starting it by hand sees
//! when it cannot start. (Moved here from the root's e2e tests when the
//! simulator became its own crate: only this package's tests can name its
//! binary.)

use std::process::Command;

#[test]
fn a_taken_address_is_one_plain_line_without_a_backtrace() {
    // pbx-sim on a taken address, with RUST_BACKTRACE set: no backtrace.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_pbx-sim"))
        .args(["--listen", &addr])
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("in use"), "{err}");
    assert!(
        !err.contains("Stack backtrace") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
