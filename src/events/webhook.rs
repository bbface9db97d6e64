//! What one webhook request carries, as pure functions: the JSON body of
//! an event (the TenantEvent field names, enums by their gRPC names, `at`
//! in RFC 3339), its signature header and the retry delay after a failed
//! attempt. The task that sends them is `deliver.rs`.
//!
//! Why the gRPC enum names ("TENANT_EVENT_KIND_STATE_CHANGED",
//! "TENANT_STATE_ACTIVE") and not the stored ones: a CRM that reads both
//! WatchTenantEvents and the webhook sees one vocabulary. They are spelled
//! here, not taken from the generated protobuf code, because only `api`
//! knows protobuf; a unit test pins them to the stored names.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2_hmac::Sha256;

use crate::domain::TenantState;
use crate::store::{TenantEvent, TenantEventKind};

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "X-Pbx-Tokend-Signature";

/// The first retry waits about this long; each failure doubles it.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// No retry waits longer than this (a receiver down for hours is retried
/// every ~5 minutes, not once a day).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Serialize)]
struct Body<'a> {
    event_id: i64,
    tenant_id: &'a str,
    kind: String,
    previous_state: Option<String>,
    state: Option<String>,
    message: &'a str,
    at: String,
}

/// "TENANT_EVENT_KIND_" + the stored name in capitals.
pub fn kind_name(kind: TenantEventKind) -> String {
    format!("TENANT_EVENT_KIND_{}", kind.as_str().to_ascii_uppercase())
}

/// "TENANT_STATE_" + the stored name in capitals.
pub fn state_name(state: TenantState) -> String {
    format!("TENANT_STATE_{}", state.as_str().to_ascii_uppercase())
}

/// The request body: one event as one JSON object. `previous_state` and
/// `state` are `null` where the event has none.
pub fn body(event: &TenantEvent) -> Vec<u8> {
    let body = Body {
        event_id: event.event_id,
        tenant_id: event.tenant_id.as_str(),
        kind: kind_name(event.kind),
        previous_state: event.previous_state.map(state_name),
        state: event.state.map(state_name),
        message: &event.message,
        at: event.at.to_string(),
    };
    // Serializing plain strings and integers cannot fail; an empty body
    // would be refused by the receiver's signature check, never accepted.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The header value: `sha256=` and the lowercase hex HMAC-SHA256 of the
/// raw body keyed with the secret's bytes.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length (longer ones are hashed first), so
    // this never fails; the fallback only satisfies the type.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => String::from("sha256="),
    }
}

/// How long to wait before the next attempt after `attempts` failed ones
/// (0 for the first failure): `BACKOFF_INITIAL * 2^attempts` capped at
/// `BACKOFF_MAX`, then a random share in [1/2, 1] of it (`unit` in [0, 1)),
/// so receivers coming back are not hit by every tenant's retry at once.
pub fn backoff(attempts: u32, unit: f64) -> Duration {
    let cap = BACKOFF_MAX.as_millis() as f64;
    let base = (BACKOFF_INITIAL.as_millis() as f64 * 2f64.powi(attempts.min(30) as i32)).min(cap);
    let share = 0.5 + 0.5 * unit.clamp(0.0, 1.0);
    Duration::from_millis((base * share) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::UnixMs;
    use crate::domain::TenantId;

    #[test]
    fn the_signature_is_hmac_sha256_hex_of_the_raw_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231 test case 6: a key longer than the block size.
        assert_eq!(
            signature(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "sha256=60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        assert_eq!(backoff(0, 0.999_999), Duration::from_millis(999));
        assert_eq!(backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 0.999_999), Duration::from_millis(7_999));
        assert_eq!(backoff(3, 0.0), Duration::from_millis(4_000));
        for attempts in [9, 10, 50, u32::MAX] {
            assert_eq!(backoff(attempts, 0.999_999), Duration::from_millis(299_999));
            assert_eq!(backoff(attempts, 0.0), Duration::from_millis(150_000));
        }
        // Out-of-range draws are clamped, never a longer wait.
        assert!(backoff(0, 7.0) <= BACKOFF_INITIAL);
    }

    #[test]
    fn the_body_has_the_tenant_event_field_names_and_rfc3339_time() {
        let event = TenantEvent {
            event_id: 42,
            tenant_id: TenantId::parse("acme-1").unwrap(),
            kind: TenantEventKind::StateChanged,
            previous_state: Some(TenantState::Active),
            state: Some(TenantState::RenewalFailing),
            message: "PBX answered 503 \"down\"".into(),
            at: UnixMs(1_767_225_600_123),
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&event)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event_id": 42,
                "tenant_id": "acme-1",
                "kind": "TENANT_EVENT_KIND_STATE_CHANGED",
                "previous_state": "TENANT_STATE_ACTIVE",
                "state": "TENANT_STATE_RENEWAL_FAILING",
                "message": "PBX answered 503 \"down\"",
                "at": "2026-01-01T00:00:00.123Z",
            })
        );
        let created = TenantEvent {
            kind: TenantEventKind::Created,
            previous_state: None,
            ..event
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&created)).unwrap();
        assert_eq!(v["kind"], "TENANT_EVENT_KIND_CREATED");
        assert!(v["previous_state"].is_null());
    }

    #[test]
    fn names_match_the_grpc_enums() {
        let kinds: Vec<String> = TenantEventKind::ALL.into_iter().map(kind_name).collect();
        assert_eq!(
            kinds,
            [
                "TENANT_EVENT_KIND_CREATED",
                "TENANT_EVENT_KIND_UPDATED",
                "TENANT_EVENT_KIND_DELETED",
                "TENANT_EVENT_KIND_STATE_CHANGED",
                "TENANT_EVENT_KIND_AUTHORIZATION_COMPLETED",
            ]
        );
        let states: Vec<String> = TenantState::ALL.into_iter().map(state_name).collect();
        assert_eq!(
            states,
            [
                "TENANT_STATE_PENDING_AUTHORIZATION",
                "TENANT_STATE_ACTIVE",
                "TENANT_STATE_RENEWAL_FAILING",
                "TENANT_STATE_CREDENTIALS_REJECTED",
                "TENANT_STATE_DISABLED",
            ]
        );
    }
}
