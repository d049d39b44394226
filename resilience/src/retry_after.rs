//! Parsing `Retry-After`.

use std::time::{Duration, SystemTime};

/// The longest delay accepted from a server: a hostile or broken `Retry-After` cannot park
/// a caller for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Parses a `Retry-After` header value: whole seconds (`120`), fractional seconds as
/// Microsoft Graph sends them (`2.128`), or an HTTP date (`Wed, 21 Oct 2015 07:28:00
/// GMT`, taken relative to `now`; a date in the past means no wait). Returns `None` for
/// anything else, so the caller falls back to its own backoff. Values above
/// [`MAX_RETRY_AFTER`] are capped.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use keel_resilience::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("2.128", now), Some(Duration::from_millis(2128)));
/// assert_eq!(
///     parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
///     Some(Duration::from_secs(10)),
/// );
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > 64 {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_seconds(value).map(|d| d.min(MAX_RETRY_AFTER));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn parse_seconds(value: &str) -> Option<Duration> {
    let (whole, fraction) = match value.split_once('.') {
        Some((w, f)) => (w, f),
        None => (value, ""),
    };
    if whole.is_empty() || fraction.contains('.') {
        return None;
    }
    // More digits than fit in any sane delay: cap rather than overflow.
    let seconds: u64 = if whole.len() > 12 {
        u64::MAX
    } else {
        whole.parse().ok()?
    };
    let mut nanos: u32 = 0;
    for (i, digit) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - u32::try_from(i).unwrap_or(8));
    }
    Some(
        Duration::from_secs(seconds.min(MAX_RETRY_AFTER.as_secs() + 1))
            + Duration::from_nanos(u64::from(nanos)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_445_412_470)
    }

    #[test]
    fn forms_servers_send() {
        assert_eq!(parse_retry_after("0", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 7 ", now()),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("2.128", now()),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            parse_retry_after("0.5", now()),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after("1.", now()), Some(Duration::from_secs(1)));
        // RFC 850 and asctime forms are HTTP dates too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now()),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:00 2015", now()),
            Some(Duration::from_secs(10))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn garbage_is_refused_and_huge_values_capped() {
        for bad in [
            "",
            "-1",
            "1.2.3",
            ".5",
            "soon",
            "1e3",
            "0x10",
            "Wed, 99 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("99999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now()),
            Some(MAX_RETRY_AFTER)
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_never_exceeds_the_cap(s in ".{0,80}") {
            if let Some(d) = parse_retry_after(&s, now()) {
                prop_assert!(d <= MAX_RETRY_AFTER);
            }
        }

        #[test]
        fn fractional_seconds_round_trip(ms in 0u64..3_600_000) {
            let text = format!("{}.{:03}", ms / 1000, ms % 1000);
            prop_assert_eq!(parse_retry_after(&text, now()), Some(Duration::from_millis(ms)));
        }
    }
}
