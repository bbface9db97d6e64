//! How long a 429 asks us to wait, from `Retry-After`, `X-RateLimit-Reset`
//! and `Date`. Pure: no clock; an HTTP-date is compared with the answer's
//! own `Date`, so the skew between our clock and the PBX's does not matter.

use std::time::Duration;

use super::ResponseMeta;

/// 429 without a usable `Retry-After` / `X-RateLimit-Reset`.
pub const DEFAULT_THROTTLE: Duration = Duration::from_secs(60);
/// A longer throttle than this is treated as this: a broken or hostile header
/// must not park a tenant for days.
pub const MAX_THROTTLE: Duration = Duration::from_secs(3600);
/// `Retry-After: 0` would make callers hammer the PBX in a loop.
pub const MIN_THROTTLE: Duration = Duration::from_secs(1);

/// How long a 429 says to wait: the larger of `Retry-After` (seconds or an
/// IMF-fixdate HTTP-date, the latter only when `Date` is present to compare
/// with) and `X-RateLimit-Reset` (seconds until reset; a value that looks
/// like epoch seconds is converted through `Date`). Clamped to
/// [`MIN_THROTTLE`]..=[`MAX_THROTTLE`]; [`DEFAULT_THROTTLE`] when neither
/// header is usable.
pub fn throttle_delay(meta: &ResponseMeta) -> Duration {
    let server_now = meta.date.as_deref().and_then(parse_http_date);
    let retry_after = meta.retry_after.as_deref().and_then(|v| {
        seconds(v).or_else(|| Some(parse_http_date(v)?.saturating_sub(server_now?).max(0) as u64))
    });
    let reset = meta.rate_limit_reset.as_deref().and_then(seconds).map(|s| {
        const LOOKS_LIKE_EPOCH: u64 = 1_000_000_000;
        match server_now {
            Some(now) if s >= LOOKS_LIKE_EPOCH => {
                let s = i64::try_from(s).unwrap_or(i64::MAX);
                s.saturating_sub(now).max(0) as u64
            }
            _ => s,
        }
    });
    let secs = match (retry_after, reset) {
        (None, None) => return DEFAULT_THROTTLE,
        (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
    };
    Duration::from_secs(secs.min(MAX_THROTTLE.as_secs())).clamp(MIN_THROTTLE, MAX_THROTTLE)
}

/// Non-negative seconds; fractions round up; absurdly many saturate.
fn seconds(v: &str) -> Option<u64> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(v.parse::<u64>().unwrap_or(u64::MAX));
    }
    match v.parse::<f64>() {
        Ok(f)
            if f.is_finite() && f >= 0.0 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            Some(f.ceil().min(u32::MAX as f64) as u64)
        }
        _ => None,
    }
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds. The
/// obsolete RFC 850 and asctime forms are not accepted.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let p: Vec<&str> = s.split_ascii_whitespace().collect();
    let [wday, day, mon, year, hms, "GMT"] = p.as_slice() else {
        return None;
    };
    if !wday.ends_with(',') || day.len() != 2 || year.len() != 4 || hms.len() != 8 {
        return None;
    }
    let num = |t: &str| -> Option<i64> {
        t.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| t.parse().ok())
            .flatten()
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == mon)? as i64 + 1;
    let (d, y) = (num(day)?, num(year)?);
    let t: Vec<i64> = hms.split(':').map(num).collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&d) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_429() {
        let meta = |ra: Option<&str>, reset: Option<&str>, date: Option<&str>| ResponseMeta {
            retry_after: ra.map(Into::into),
            rate_limit_reset: reset.map(Into::into),
            date: date.map(Into::into),
            ..Default::default()
        };
        let delay = |m: ResponseMeta| match crate::pbx::parse::classify_failure(
            429,
            &m,
            b"{\"message\":\"slow down\"}",
        ) {
            crate::pbx::PbxError::Throttled { retry_after } => retry_after.as_secs(),
            other => panic!("{other:?}"),
        };
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(delay(meta(None, None, None)), 60);
        assert_eq!(delay(meta(Some("120"), None, None)), 120);
        assert_eq!(delay(meta(None, Some("30"), None)), 30);
        assert_eq!(delay(meta(Some("10"), Some("30"), None)), 30);
        assert_eq!(delay(meta(Some("90"), Some("30"), None)), 90);
        assert_eq!(delay(meta(Some("0"), None, None)), 1);
        assert_eq!(delay(meta(Some("1.2"), None, None)), 2);
        assert_eq!(
            delay(meta(Some("99999999999999999999999"), None, None)),
            3600
        );
        assert_eq!(delay(meta(Some("86400"), None, None)), 3600);
        assert_eq!(delay(meta(Some("-5"), None, None)), 60);
        assert_eq!(delay(meta(Some("soon"), Some("later"), None)), 60);
        assert_eq!(delay(meta(Some("1e9"), None, None)), 60);
        // HTTP-date, measured against the server's own Date.
        assert_eq!(
            delay(meta(
                Some("Sun, 06 Nov 1994 08:51:37 GMT"),
                None,
                Some(date)
            )),
            120
        );
        // Without Date the HTTP-date cannot be resolved: the default applies.
        assert_eq!(
            delay(meta(Some("Sun, 06 Nov 1994 08:51:37 GMT"), None, None)),
            60
        );
        // In the past: the minimum.
        assert_eq!(
            delay(meta(
                Some("Sun, 06 Nov 1994 08:00:00 GMT"),
                None,
                Some(date)
            )),
            1
        );
        // An epoch-seconds X-RateLimit-Reset is converted through Date.
        let date = "Wed, 01 Jan 2025 00:00:00 GMT";
        let epoch = parse_http_date(date).unwrap() + 300;
        assert_eq!(delay(meta(None, Some(&epoch.to_string()), Some(date))), 300);
        assert_eq!(delay(meta(None, Some(&epoch.to_string()), None)), 3600);
    }

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 19a4 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
