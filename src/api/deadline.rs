//! A call's deadline as the handler sees it: the caller's `grpc-timeout`
//! header, cut to the server's own `[grpc] request_timeout_ms`, the two
//! limits tonic's timeout layer enforces on the call.
//!
//! Why a handler needs it: a use case that may wait (ReportRejectedToken
//! within its rate-limit interval) must know whether the wait fits, so it
//! can answer UNAVAILABLE with a retry time instead of being cut off with
//! CANCELLED or DEADLINE_EXCEEDED and no explanation. tonic parses the
//! header only inside its private timeout layer, so it is parsed here too,
//! by the same rules (gRPC over HTTP/2: at most 8 digits and a unit; a
//! header that does not parse counts as absent, as tonic treats it).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// How long the call may take from now: the shorter of the caller's
/// `grpc-timeout` and `server_timeout` (`None`: neither is set).
pub fn budget(metadata: &MetadataMap, server_timeout: Option<Duration>) -> Option<Duration> {
    let client = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    match (client, server_timeout) {
        (Some(c), Some(s)) => Some(c.min(s)),
        (c, s) => c.or(s),
    }
}

/// `grpc-timeout` = 1 to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at_checked(unit_at)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn parses_every_unit() {
        for (v, d) in [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("4S", Duration::from_secs(4)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("7n", Duration::from_nanos(7)),
        ] {
            assert_eq!(parse_grpc_timeout(v), Some(d), "{v}");
        }
    }

    #[test]
    fn refuses_malformed_values() {
        for v in ["", "m", "5", "5x", "-5m", "+5m", "123456789m", "5 m", "ü"] {
            assert_eq!(parse_grpc_timeout(v), None, "{v:?}");
        }
    }

    #[test]
    fn the_shorter_limit_wins() {
        let server = Some(Duration::from_secs(30));
        assert_eq!(
            budget(&with_header("5S"), server),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            budget(&with_header("5M"), server),
            Some(Duration::from_secs(30))
        );
        assert_eq!(budget(&MetadataMap::new(), server), server);
        assert_eq!(budget(&with_header("junk"), server), server);
        assert_eq!(
            budget(&with_header("100m"), None),
            Some(Duration::from_millis(100))
        );
        assert_eq!(budget(&MetadataMap::new(), None), None);
    }
}
