//! Durations as written in `config.toml`: a number and a unit, such as `"500ms"`, `"2s"`,
//! `"1.5s"`, `"1m"` or `"1h"`.
//!
//! TOML has no duration type, and a bare number of seconds invites unit mistakes (is
//! `timeout = 500` half a second or eight minutes?), so every duration carries its unit.
//! [`parse_duration`] is exact (decimal fractions are computed in integer nanoseconds, never
//! through a float) and [`format_duration`] is its inverse, used by summaries and `/status`.

use std::time::Duration;

/// What every duration error ends with: the accepted form.
const ACCEPTED: &str = "use a number and a unit: 500ms, 2s, 1m, 1h";

/// Units we accept, with their length in nanoseconds.
const UNITS: [(&str, u128); 4] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// More digits than this in either part of the number cannot be a sensible duration, and
/// bounding them keeps the arithmetic below inside `u128`.
const MAX_DIGITS: usize = 30;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration written as a non-negative decimal number followed by a unit (`ms`, `s`,
/// `m` or `h`), e.g. `"500ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`. Spaces around the string and
/// between number and unit are allowed. A fraction finer than a nanosecond is truncated.
///
/// The error is a complete sentence naming the input and the accepted form, ready to be put in
/// a `ConfigError` message.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err(format!("empty duration; {ACCEPTED}"));
    }
    if text.starts_with('-') {
        return Err(format!("\"{s}\" is negative; {ACCEPTED}"));
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!("\"{s}\" is not a duration; {ACCEPTED}"));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let well_formed = !whole.is_empty()
        && whole.len() <= MAX_DIGITS
        && fraction.len() <= MAX_DIGITS
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && !(number.contains('.') && fraction.is_empty());
    if !well_formed {
        return Err(format!("\"{s}\" is not a duration; {ACCEPTED}"));
    }
    if unit.is_empty() {
        return Err(format!("\"{s}\" has no unit; {ACCEPTED}"));
    }
    let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        if unit.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(format!(
                "\"{s}\" has an unknown unit \"{unit}\"; {ACCEPTED}"
            ));
        }
        return Err(format!("\"{s}\" is not a duration; {ACCEPTED}"));
    };
    // Both parts have at most MAX_DIGITS digits, so they fit in u128 and the products below
    // cannot overflow it (10^30 * 3.6 * 10^12 < 3.4 * 10^38).
    let whole: u128 = whole
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration; {ACCEPTED}"))?;
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration; {ACCEPTED}"))?;
        // Scale digits/10^len by the unit without leaving integers; 10^len may exceed u128 when
        // len is near MAX_DIGITS, so drop the digits beyond nanosecond precision first.
        let len = fraction.len() as u32;
        let keep = len.min(21);
        let digits = digits / 10u128.pow(len - keep);
        digits * unit_nanos / 10u128.pow(keep)
    };
    let too_long =
        || format!("\"{s}\" is too long; the longest accepted duration is about 584 billion years");
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_long)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it fits in u32.
    let subsec = (nanos % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, subsec))
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest unit that holds it
/// exactly: `1h`, `90s`, `500ms`, `1.5ms`, `0s`. `parse_duration(&format_duration(d)) == d` for
/// every `d`.
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    for (name, unit_nanos) in UNITS.iter().rev() {
        let (count, rest) = (nanos / unit_nanos, nanos % unit_nanos);
        if rest == 0 {
            return format!("{count}{name}");
        }
    }
    // Finer than a millisecond: a decimal number of milliseconds, trailing zeros dropped.
    let millis = nanos / 1_000_000;
    let rest = format!("{:06}", nanos % 1_000_000);
    format!("{millis}.{}ms", rest.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s:?} should be rejected, got {d:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_each_unit() {
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("2s"), Duration::from_secs(2));
        assert_eq!(ok("1m"), Duration::from_secs(60));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("0s"), Duration::ZERO);
    }

    #[test]
    fn accepts_fractions_exactly() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25m"), Duration::from_secs(15));
        assert_eq!(ok("1.5ms"), Duration::from_micros(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        // Beyond nanosecond precision is truncated, not rounded and not rejected.
        assert_eq!(ok("0.0000000019s"), Duration::from_nanos(1));
    }

    #[test]
    fn accepts_spaces_around_and_between() {
        assert_eq!(ok(" 2s "), Duration::from_secs(2));
        assert_eq!(ok("2 s"), Duration::from_secs(2));
    }

    #[test]
    fn rejects_empty() {
        assert!(err("").starts_with("empty duration"));
        assert!(err("   ").contains("500ms, 2s, 1m, 1h"));
    }

    #[test]
    fn rejects_negative() {
        let e = err("-1s");
        assert!(e.contains("negative"), "{e}");
        assert!(e.contains("500ms, 2s, 1m, 1h"), "{e}");
    }

    #[test]
    fn rejects_missing_unit() {
        let e = err("5");
        assert_eq!(
            e,
            "\"5\" has no unit; use a number and a unit: 500ms, 2s, 1m, 1h"
        );
    }

    #[test]
    fn rejects_unknown_unit() {
        let e = err("5sec");
        assert_eq!(
            e,
            "\"5sec\" has an unknown unit \"sec\"; use a number and a unit: 500ms, 2s, 1m, 1h"
        );
        assert!(err("5d").contains("unknown unit \"d\""));
        assert!(err("5S").contains("unknown unit \"S\""));
    }

    #[test]
    fn rejects_malformed_numbers() {
        for s in [
            "5s0", "s", "1.s", ".5s", "1.2.3s", "1e3s", "1_000ms", "+1s", "1s s",
        ] {
            let e = err(s);
            assert!(
                e.ends_with("use a number and a unit: 500ms, 2s, 1m, 1h"),
                "{s}: {e}"
            );
        }
        assert_eq!(
            err("5s0"),
            "\"5s0\" is not a duration; use a number and a unit: 500ms, 2s, 1m, 1h"
        );
    }

    #[test]
    fn rejects_overflow() {
        assert!(err("99999999999999999999h").contains("too long"));
        assert!(err("18446744073709551616s").contains("too long"));
        assert!(err("1234567890123456789012345678901s").contains("not a duration"));
        // The largest whole number of seconds a Duration holds is still fine.
        assert_eq!(ok("18446744073709551615s"), Duration::from_secs(u64::MAX));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "0.000001ms");
    }

    #[test]
    fn format_is_the_inverse_of_parse() {
        let samples = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(999_999_999),
            Duration::from_micros(1500),
            Duration::from_millis(1),
            Duration::from_millis(61_001),
            Duration::from_secs(59),
            Duration::from_secs(3599),
            Duration::from_secs(86_400),
            Duration::new(u64::MAX, 999_999_999),
        ];
        for d in samples {
            assert_eq!(ok(&format_duration(d)), d, "{}", format_duration(d));
        }
    }
}
