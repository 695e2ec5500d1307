//! Parsers for argument values: JSON given inline, from a file or from standard input;
//! durations (`30s`, `1h 30m`); times (RFC 3339, a date, or a duration meaning "ago").

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use clap::ValueEnum;
use kagzi_proto::{Overlap, RunStatus, WorkerStatus};
use serde_json::Value;

use crate::error::{Error, Result};

/// A JSON value from the command line: `JSON`, `@FILE` or `-` (standard input).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JsonArg {
    /// Given inline, already parsed.
    Inline(Value),
    /// To be read from this file.
    File(PathBuf),
    /// To be read from standard input.
    Stdin,
}

impl JsonArg {
    /// The value, reading the file or standard input if it comes from there.
    ///
    /// # Errors
    /// [`Error::Io`] when the file or standard input cannot be read, [`Error::Usage`] when
    /// what they hold is not JSON.
    pub(crate) fn read(&self, flag: &str) -> Result<Value> {
        let (text, from) = match self {
            JsonArg::Inline(value) => return Ok(value.clone()),
            JsonArg::File(path) => {
                let from = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("{flag} @{from}"), e))?;
                (text, from)
            }
            JsonArg::Stdin => {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Error::io(format!("{flag} - (standard input)"), e))?;
                (text, "standard input".to_owned())
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| Error::Usage(format!("{flag}: {from} does not hold JSON: {e}")))
    }
}

/// Reads `JSON`, `@FILE` or `-`.
///
/// # Errors
/// When inline text is not JSON (with a hint for an unquoted string).
pub(crate) fn json(text: &str) -> Result<JsonArg, String> {
    if text == "-" {
        return Ok(JsonArg::Stdin);
    }
    if let Some(path) = text.strip_prefix('@') {
        return Ok(JsonArg::File(PathBuf::from(path)));
    }
    serde_json::from_str(text)
        .map(JsonArg::Inline)
        .map_err(|e| {
            let hint = if text.starts_with(['{', '[', '"']) {
                String::new()
            } else {
                format!(" (a JSON string needs its quotes: '\"{text}\"')")
            };
            format!("not JSON: {e}{hint}; give JSON, @FILE or - for standard input")
        })
}

/// Reads a duration: `500ms`, `30s`, `5m`, `1h 30m`, `2d`.
///
/// # Errors
/// When the text is not a duration with units.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e}: give a duration with units, like 500ms, 30s, 5m, 1h 30m, 2d"))
}

/// Reads a time: RFC 3339 (`2026-11-26T09:00:00Z`), a date (`2026-11-26`, midnight UTC),
/// or a duration meaning that long ago (`1h`, `2d`).
///
/// # Errors
/// When the text is none of those.
pub(crate) fn time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!(
            "{text:?} is not a time: give RFC 3339 (2026-11-26T09:00:00Z), a date (2026-11-26) \
             or how long ago (30m, 2h, 7d)"
        )
    })?;
    let ago = TimeDelta::from_std(ago).map_err(|_| format!("{text:?} is too long ago"))?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

/// Milliseconds of `duration`, for the protocol's `*_ms` fields.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A run status as an argument (its values complete in the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusArg {
    /// Waiting for a worker.
    Pending,
    /// Held by a worker.
    Running,
    /// On a durable timer.
    Sleeping,
    /// Waiting for a signal or a child run.
    Waiting,
    /// Ended with an output.
    Completed,
    /// Ended with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<StatusArg> for RunStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Pending => RunStatus::Pending,
            StatusArg::Running => RunStatus::Running,
            StatusArg::Sleeping => RunStatus::Sleeping,
            StatusArg::Waiting => RunStatus::Waiting,
            StatusArg::Completed => RunStatus::Completed,
            StatusArg::Failed => RunStatus::Failed,
            StatusArg::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// A worker status as an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WorkerStatusArg {
    /// Heartbeating.
    Online,
    /// Gone.
    Offline,
}

impl From<WorkerStatusArg> for WorkerStatus {
    fn from(status: WorkerStatusArg) -> Self {
        match status {
            WorkerStatusArg::Online => WorkerStatus::Online,
            WorkerStatusArg::Offline => WorkerStatus::Offline,
        }
    }
}

/// An overlap policy as an argument, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OverlapArg {
    /// Start nothing while the previous run is going (the default).
    Skip,
    /// Keep one due time for when the previous run ends.
    #[value(name = "buffer_one")]
    BufferOne,
    /// Start a run at every due time.
    #[value(name = "allow_all")]
    AllowAll,
}

impl From<OverlapArg> for Overlap {
    fn from(overlap: OverlapArg) -> Self {
        match overlap {
            OverlapArg::Skip => Overlap::Skip,
            OverlapArg::BufferOne => Overlap::BufferOne,
            OverlapArg::AllowAll => Overlap::AllowAll,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_comes_inline_from_a_file_or_from_stdin() {
        assert_eq!(
            json(r#"{"name": "Ada"}"#),
            Ok(JsonArg::Inline(serde_json::json!({"name": "Ada"})))
        );
        assert_eq!(json("@in.json"), Ok(JsonArg::File("in.json".into())));
        assert_eq!(json("-"), Ok(JsonArg::Stdin));
        assert_eq!(json("7"), Ok(JsonArg::Inline(serde_json::json!(7))));
        let error = json("hello").expect_err("not JSON");
        assert!(error.contains(r#"'"hello"'"#), "{error}");
    }

    #[test]
    fn a_json_file_is_read_when_needed() -> Result<()> {
        let path = std::env::temp_dir().join(format!("kagzi-cli-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"n": 1}"#).map_err(|e| Error::io("write", e))?;
        let value = JsonArg::File(path.clone()).read("--input");
        let _ = std::fs::remove_file(&path);
        assert_eq!(value?, serde_json::json!({"n": 1}));
        let missing = JsonArg::File("/nonexistent/kagzi.json".into()).read("--input");
        assert!(matches!(missing, Err(Error::Io { .. })));
        Ok(())
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(duration("5").is_err());
    }

    #[test]
    fn times_are_absolute_or_ago() {
        assert_eq!(
            time("2026-11-26T10:00:00+01:00").map(|t| t.to_rfc3339()),
            Ok("2026-11-26T09:00:00+00:00".to_owned())
        );
        assert_eq!(
            time("2026-11-26").map(|t| t.to_rfc3339()),
            Ok("2026-11-26T00:00:00+00:00".to_owned())
        );
        let hour_ago = time("1h").expect("a duration is a time ago");
        let delta = Utc::now() - hour_ago;
        assert!((3_599..=3_601).contains(&delta.num_seconds()), "{delta}");
        assert!(time("yesterday-ish").is_err());
    }
}
