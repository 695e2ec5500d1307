//! Values written for people: durations (`1.2s`, `3m 4s`), times and ages (`5m ago`), and
//! JSON cut to fit a table cell.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

/// A duration in its two largest units: `850ms`, `1.2s`, `3m 4s`, `2h 5m`, `3d 4h`.
pub(crate) fn duration(delta: TimeDelta) -> String {
    let ms = delta.num_milliseconds().max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let tenths = ms / 100;
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let s = ms / 1_000;
    let (d, h, m, s) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    match (d, h) {
        (0, 0) => format!("{m}m {s}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// A [`std::time::Duration`] as [`duration`] writes it.
pub(crate) fn std_duration(duration: std::time::Duration) -> String {
    self::duration(TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX))
}

/// How far `at` is from `now`: `5m ago`, `in 2h 5m`, `now`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let delta = now - at;
    if delta.num_milliseconds().abs() < 1_000 {
        "now".to_owned()
    } else if delta > TimeDelta::zero() {
        format!("{} ago", duration(delta))
    } else {
        format!("in {}", duration(-delta))
    }
}

/// A time in UTC to the millisecond: `2026-11-26 09:00:00.123Z`.
pub(crate) fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

/// A time of day in UTC: `09:00:00.123`.
pub(crate) fn clock(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S%.3f").to_string()
}

/// A time and how far it is from `now`: `2026-11-26 09:00:00.123Z (5m ago)`.
pub(crate) fn time_and_relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", time(at), relative(at, now))
}

/// `value` as compact JSON, cut to `max` characters with `…`.
pub(crate) fn json_brief(value: &Value, max: usize) -> String {
    cut(&value.to_string(), max)
}

/// `text` on one line, cut to `max` characters with `…`.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let kept: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_their_two_largest_units() {
        let cases = [
            (0, "0ms"),
            (850, "850ms"),
            (1_250, "1.2s"),
            (59_999, "59.9s"),
            (184_000, "3m 4s"),
            (7_500_000, "2h 5m"),
            (273_600_000, "3d 4h"),
            (-5, "0ms"),
        ];
        for (ms, text) in cases {
            assert_eq!(duration(TimeDelta::milliseconds(ms)), text, "{ms} ms");
        }
    }

    #[test]
    fn times_are_relative_to_now() {
        let now = Utc::now();
        assert_eq!(relative(now - TimeDelta::seconds(300), now), "5m 0s ago");
        assert_eq!(relative(now + TimeDelta::seconds(90), now), "in 1m 30s");
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn long_json_is_cut_on_one_line() {
        let value = serde_json::json!({"name": "a long name indeed"});
        assert_eq!(json_brief(&value, 100), r#"{"name":"a long name indeed"}"#);
        assert_eq!(json_brief(&value, 10), r#"{"name":"…"#);
        assert_eq!(cut("two\nlines", 20), "two lines");
    }
}
