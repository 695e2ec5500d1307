//! Waiting for runs: `kagzi run result` (until it ends), `kagzi run watch` (step by step).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kagzi_proto::{Run, RunId, RunStatus, Step, StepStatus};
use serde::Serialize;
use tokio::time::Instant;

use crate::args::run::{ResultArgs, WatchArgs};
use crate::client::{Client, MAX_RESULT_WAIT};
use crate::error::{Error, Result};
use crate::output::{Format, Output, Paint, human, tables};

/// Waits for run `id` to end, long-poll after long-poll, for at most `limit` (for ever
/// when `None`); the run as it stands when the wait ends.
///
/// # Errors
/// When the server cannot be asked.
pub(crate) async fn until_ended(
    id: RunId,
    limit: Option<Duration>,
    client: &Client,
) -> Result<Run> {
    let deadline = limit.map(|limit| Instant::now() + limit);
    loop {
        let wait = deadline.map_or(MAX_RESULT_WAIT, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        let run = client.wait(id, wait.min(MAX_RESULT_WAIT)).await?;
        let out_of_time = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if run.status.is_terminal() || out_of_time {
            return Ok(run);
        }
    }
}

/// Ok for a completed run; the error that makes the command exit non-zero otherwise.
fn outcome(run: &Run, waited: Option<Duration>) -> Result<()> {
    match run.status {
        RunStatus::Completed => Ok(()),
        status if status.is_terminal() => Err(Error::RunEnded {
            id: run.id,
            status,
            error: run.error.clone(),
        }),
        status => Err(Error::TimedOut {
            id: run.id,
            status,
            waited: waited.map_or_else(|| "the wait".to_owned(), human::std_duration),
        }),
    }
}

/// Waits for run `id` and prints it: as a table, its output (JSON); otherwise the run.
///
/// # Errors
/// [`Error::RunEnded`] when it failed or was cancelled, [`Error::TimedOut`] when `limit`
/// passed first.
pub(crate) async fn until_ended_and_print(
    id: RunId,
    limit: Option<Duration>,
    client: &Client,
    out: &Output,
) -> Result<()> {
    let run = until_ended(id, limit, client).await?;
    match out.format() {
        Format::Table if run.status == RunStatus::Completed => {
            let output = run.output.clone().unwrap_or(serde_json::Value::Null);
            let text = serde_json::to_string_pretty(&output).unwrap_or_else(|_| output.to_string());
            out.print(&text)?;
        }
        Format::Table => {}
        Format::Json | Format::Jsonl => out.json(&run)?,
    }
    outcome(&run, limit)
}

/// `kagzi run result`.
pub(crate) async fn result(args: &ResultArgs, client: &Client, out: &Output) -> Result<()> {
    until_ended_and_print(args.id, args.timeout, client, out).await
}

/// What `kagzi run watch` reports, one JSON line each with `-o json` or `-o jsonl`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event<'a> {
    /// The run is in a new status.
    Status {
        /// The status.
        status: RunStatus,
        /// Its attempts so far.
        attempts: u32,
        /// When the watch saw it.
        at: DateTime<Utc>,
    },
    /// A step was recorded, or recorded again (a retry).
    Step {
        /// The step.
        step: &'a Step,
    },
    /// The run ended.
    End {
        /// The run as it ended.
        run: &'a Run,
    },
}

/// `kagzi run watch`: prints the run's status changes and steps as they happen, until it
/// ends. Exits 0 when it completed, 6 when it failed or was cancelled.
pub(crate) async fn watch(args: &WatchArgs, client: &Client, out: &Output) -> Result<()> {
    let interval = args.interval.max(Duration::from_millis(50));
    let mut run = client.run(args.id).await?;
    if out.is_table() {
        out.print(&format!(
            "Watching run {} ({} on {}); Ctrl-C stops watching, not the run.",
            run.id, run.workflow, run.queue
        ))?;
    }
    let mut shown: HashMap<u32, (StepStatus, u32)> = HashMap::new();
    let mut status = None;
    // From the step before it (or the run's start) to its end, as `run show` measures.
    let mut previous_end = run.started_at;
    loop {
        let steps = client.steps(args.id).await?.steps;
        for step in &steps {
            let seen = (step.status, step.attempts);
            if shown.get(&step.position) == Some(&seen) {
                continue;
            }
            shown.insert(step.position, seen);
            let ended = step.finished_at.unwrap_or(step.created_at);
            let took = previous_end.map(|from| human::duration(ended - from));
            previous_end = Some(previous_end.map_or(ended, |p| p.max(ended)));
            emit(out, &Event::Step { step }, || {
                let (paint, result) = tables::step_result(step);
                format!(
                    "{}  step #{} {}  {}  attempt {}{}  {}",
                    human::clock(ended),
                    step.position,
                    step.key,
                    out.paint(step.status, paint),
                    step.attempts,
                    took.map(|t| format!(", took {t}")).unwrap_or_default(),
                    result
                )
            })?;
        }
        if run.status.is_terminal() {
            emit(out, &Event::End { run: &run }, || {
                let at = run.finished_at.unwrap_or_else(Utc::now);
                let took = run
                    .started_at
                    .map(|started| format!(" after {}", human::duration(at - started)))
                    .unwrap_or_default();
                let detail = match (&run.output, &run.error) {
                    (_, Some(error)) if run.status != RunStatus::Completed => {
                        format!(": {error}")
                    }
                    (Some(output), _) => format!(": {}", human::json_brief(output, 200)),
                    _ => String::new(),
                };
                format!(
                    "{}  {}{took}{detail}",
                    human::clock(at),
                    out.paint(run.status, Paint::status(run.status))
                )
            })?;
            return outcome(&run, None);
        }
        if status != Some(run.status) {
            status = Some(run.status);
            let at = Utc::now();
            let event = Event::Status {
                status: run.status,
                attempts: run.attempts,
                at,
            };
            emit(out, &event, || {
                let mut line = format!(
                    "{}  {}",
                    human::clock(at),
                    out.paint(run.status, Paint::status(run.status))
                );
                if run.attempts > 0 {
                    line.push_str(&format!("  attempt {}", run.attempts));
                }
                if let Some(waiting_for) = &run.waiting_for {
                    line.push_str(&format!("  waiting for {waiting_for}"));
                }
                if let Some(wake_at) = run.wake_at {
                    line.push_str(&format!("  wakes {}", human::relative(wake_at, at)));
                }
                line
            })?;
        }
        // The long-poll is the pause between looks, and answers at once when the run ends.
        run = client.wait(args.id, interval).await?;
    }
}

/// One watch event: a line of text for a table, a JSON line otherwise.
fn emit(out: &Output, event: &Event<'_>, text: impl FnOnce() -> String) -> Result<()> {
    match out.format() {
        Format::Table => out.print(&text()),
        Format::Json | Format::Jsonl => {
            let line = serde_json::to_string(event)
                .map_err(|e| Error::io("standard output", std::io::Error::other(e)))?;
            out.print(&line)
        }
    }
}
