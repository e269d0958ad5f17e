//! Parsing of `--from-time` / `--to-time`: milliseconds since the epoch, or RFC 3339.

use super::{CliError, CliResult};

/// Milliseconds in a day.
const MS_PER_DAY: i64 = 86_400_000;

/// Parses `1700000000000`, `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.250+02:00` or
/// `2024-05-01` (midnight UTC) into milliseconds since the Unix epoch.
pub fn parse_time(text: &str) -> CliResult<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    parse_rfc3339(text).ok_or_else(|| {
        CliError::Usage(format!(
            "time {text:?} is neither milliseconds since the epoch nor RFC 3339 (2024-05-01T12:00:00Z)"
        ))
    })
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = match text.find(['T', 't', ' ']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let days = parse_date(date)?;
    let Some(time) = time else {
        return Some(days * MS_PER_DAY);
    };
    // Split off the zone: Z, or +hh:mm / -hh:mm.
    let (clock, offset_ms) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let i = time.rfind(['+', '-'])?;
        let (clock, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone[1..].split_once(':')?;
        let (h, m) = (number(h, 2)?, number(m, 2)?);
        if h > 23 || m > 59 {
            return None;
        }
        (clock, sign * (h * 3_600_000 + m * 60_000))
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (hms, f),
        Some(_) => return None,
        None => (clock, ""),
    };
    let mut parts = hms.split(':');
    let h = number(parts.next()?, 2)?;
    let m = number(parts.next()?, 2)?;
    let s = number(parts.next()?, 2)?;
    if parts.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Milliseconds from the first three fraction digits; finer digits are dropped.
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |acc, b| acc * 10 + i64::from(b - b'0'));
    Some(days * MS_PER_DAY + h * 3_600_000 + m * 60_000 + s * 1000 + millis - offset_ms)
}

/// Days since 1970-01-01 of `YYYY-MM-DD`.
fn parse_date(date: &str) -> Option<i64> {
    let mut parts = date.split('-');
    let y = number(parts.next()?, 4)?;
    let m = number(parts.next()?, 2)?;
    let d = number(parts.next()?, 2)?;
    if parts.next().is_some() || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// Parses exactly `digits` ASCII digits.
fn number(text: &str, digits: usize) -> Option<i64> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `days_from_civil`: days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_time("1700000000000").expect("ms"), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").expect("epoch"), 0);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").expect("t"),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.5Z").expect("t"),
            1_700_000_000_500
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123456Z").expect("t"),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("2023-11-15T00:13:20+02:00").expect("t"),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T20:13:20-02:00").expect("t"),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2024-02-29").expect("leap day"),
            1_709_164_800_000
        );
        assert_eq!(
            parse_time("1969-12-31T23:59:59Z").expect("before epoch"),
            -1000
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-02-29",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+2:00",
            "20231-11-14",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }
}
