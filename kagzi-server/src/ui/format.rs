//! How the pages show times, durations, statuses and JSON.

use chrono::{DateTime, TimeDelta, Utc};
use kagzi_proto::RunStatus;
use maud::{Markup, html};
use serde_json::Value;

/// `d` in the largest units that keep it short: `850 ms`, `4.2 s`, `3 min 5 s`, `2 h 10 min`,
/// `3 d 4 h`.
pub(crate) fn duration(d: TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    if ms < 1_000 {
        return format!("{ms} ms");
    }
    if ms < 10_000 {
        return format!("{:.1} s", ms as f64 / 1_000.0);
    }
    let s = ms / 1_000;
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => pair(s / 60, "min", s % 60, "s"),
        3_600..86_400 => pair(s / 3_600, "h", s % 3_600 / 60, "min"),
        _ => pair(s / 86_400, "d", s % 86_400 / 3_600, "h"),
    }
}

fn pair(big: i64, big_unit: &str, small: i64, small_unit: &str) -> String {
    if small == 0 {
        format!("{big} {big_unit}")
    } else {
        format!("{big} {big_unit} {small} {small_unit}")
    }
}

/// How long ago (or how far ahead) `t` is: `5 s ago`, `in 3 min`.
pub(crate) fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = now.signed_duration_since(t);
    if d.num_milliseconds().abs() < 1_000 {
        "now".to_owned()
    } else if d > TimeDelta::zero() {
        format!("{} ago", duration(d))
    } else {
        format!("in {}", duration(-d))
    }
}

/// `t` as UTC to the second, e.g. `2026-12-04 09:00:03`.
pub(crate) fn absolute(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A time element: relative to `now`, the exact time (to the millisecond, UTC) on hover.
pub(crate) fn time(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S%.3f UTC")) {
            (relative(t, now))
        }
    }
}

/// An optional time, or a dash.
pub(crate) fn maybe_time(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    match t {
        Some(t) => time(t, now),
        None => html! { span.muted { "–" } },
    }
}

/// A run's status as a coloured badge.
pub(crate) fn status(status: RunStatus) -> Markup {
    html! { span class={ "badge st-" (status.as_str()) } { (status.as_str()) } }
}

/// An id's last twelve characters, the whole id on hover: run ids are UUIDv7, whose first
/// characters are a timestamp that runs started together share.
pub(crate) fn short_id(id: &impl std::fmt::Display) -> Markup {
    html! { code title=(id.to_string()) { (short(id)) } }
}

/// An id's last twelve characters, after an ellipsis.
pub(crate) fn short(id: &impl std::fmt::Display) -> String {
    let id = id.to_string();
    let tail: String = id
        .chars()
        .skip(id.chars().count().saturating_sub(12))
        .collect();
    format!("…{tail}")
}

/// A JSON value, pretty-printed, folded when it is long.
pub(crate) fn json(label: &str, value: &Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|e| e.to_string());
    let lines = text.lines().count();
    html! {
        details.json id={ "json-" (label.to_lowercase()) } open[lines <= 40] {
            summary { (label) span.muted { " · " (lines) (if lines == 1 { " line" } else { " lines" }) } }
            pre { code { (text) } }
        }
    }
}

/// A JSON value on one line, cut to `max` characters.
pub(crate) fn json_inline(value: &Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// A count with thousands separators: `12,345`.
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `text` as one URL path segment: everything but unreserved characters percent-encoded.
pub(crate) fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_largest_units_that_stay_short() {
        let ms = TimeDelta::milliseconds;
        assert_eq!(duration(ms(0)), "0 ms");
        assert_eq!(duration(ms(850)), "850 ms");
        assert_eq!(duration(ms(4_240)), "4.2 s");
        assert_eq!(duration(ms(42_000)), "42 s");
        assert_eq!(duration(ms(185_000)), "3 min 5 s");
        assert_eq!(duration(ms(7_800_000)), "2 h 10 min");
        assert_eq!(duration(ms(3_600_000)), "1 h");
        assert_eq!(duration(ms(273_600_000)), "3 d 4 h");
        assert_eq!(duration(ms(-5)), "0 ms");
    }

    #[test]
    fn relative_times_say_ago_or_in() {
        let now = Utc::now();
        assert_eq!(relative(now - TimeDelta::seconds(5), now), "5.0 s ago");
        assert_eq!(relative(now + TimeDelta::minutes(3), now), "in 3 min");
        assert_eq!(relative(now, now), "now");
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn long_json_is_cut_on_one_line() {
        let value = serde_json::json!({"a": "x".repeat(50)});
        let cut = json_inline(&value, 10);
        assert_eq!(cut.chars().count(), 11);
        assert!(cut.ends_with('…'));
        assert_eq!(json_inline(&serde_json::json!(1), 10), "1");
    }
}
