//! Logs: readable lines by default, or one JSON object a line (`KAGZI_LOG_FORMAT=json`) with
//! each event's fields (`run_id`, `workflow`, …) as keys, for a log pipeline; filtered by
//! `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable that picks the format: `text` (the default) or `json`.
pub const FORMAT_VAR: &str = "KAGZI_LOG_FORMAT";

/// Installs the process's log subscriber, filtered by `RUST_LOG` or else `default_filter`,
/// writing to standard error when `to_stderr`, else to standard output. A subscriber already
/// installed stays.
///
/// # Errors
/// When `KAGZI_LOG_FORMAT` is neither `text` nor `json`.
pub fn init(default_filter: &str, to_stderr: bool) -> Result<(), String> {
    let format = std::env::var(FORMAT_VAR).unwrap_or_default();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second subscriber cannot be set; the first one stays, which is fine.
    let _ = match (format.trim().to_ascii_lowercase().as_str(), to_stderr) {
        ("" | "text", true) => builder
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .try_init(),
        ("" | "text", false) => builder.with_ansi(ansi).try_init(),
        ("json", true) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .try_init(),
        ("json", false) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        (other, _) => {
            return Err(format!(
                "{FORMAT_VAR} must be `text` or `json`, not {other:?}"
            ));
        }
    };
    Ok(())
}
