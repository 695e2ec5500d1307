//! The tables and detail blocks each resource is shown as.

use chrono::{DateTime, Utc};
use comfy_table::Table;
use kagzi_proto::{
    QueueList, Run, RunCounts, RunStatus, Schedule, Signal, Step, StepStatus, Worker, WorkerStatus,
};

use super::human::{self, cut, duration, json_brief, relative, time_and_relative};
use super::{Output, Paint};

/// How much of a JSON value a table cell shows.
const CELL_JSON: usize = 60;

/// Runs, one per row.
pub(crate) fn runs(out: &Output, runs: &[Run], now: DateTime<Utc>) -> Table {
    let mut table = out.table(&[
        "id", "workflow", "queue", "status", "attempts", "created", "took",
    ]);
    for run in runs {
        table.add_row(vec![
            out.cell(run.id, None),
            out.cell(&run.workflow, None),
            out.cell(&run.queue, None),
            out.status_cell(run.status),
            out.cell(run.attempts, None),
            out.cell(relative(run.created_at, now), None),
            out.cell(took(run, now), None),
        ]);
    }
    table
}

/// How long a run took (ended) or has been going (started, with `…`); `-` for a run that
/// never started.
fn took(run: &Run, now: DateTime<Utc>) -> String {
    match (run.started_at, run.finished_at) {
        (Some(started), Some(finished)) => duration(finished - started),
        (Some(started), None) => format!("{}…", duration(now - started)),
        (None, _) => "-".to_owned(),
    }
}

/// A label and its value, one per line, labels aligned.
fn block(out: &Output, rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(label, value)| {
            let label = format!("{label:<width$}");
            format!("{}  {value}", out.paint(label, Some(Paint::Bold)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A run in detail, then its journal.
pub(crate) fn run_detail(out: &Output, run: &Run, steps: &[Step], now: DateTime<Utc>) -> String {
    let mut rows = vec![
        ("Run", run.id.to_string()),
        ("Workflow", run.workflow.clone()),
        ("Queue", run.queue.clone()),
        ("Status", out.paint(run.status, Paint::status(run.status))),
        (
            "Attempts",
            format!("{} (retries: {})", run.attempts, run.retries),
        ),
        ("Created", time_and_relative(run.created_at, now)),
    ];
    let times = [
        ("Started", run.started_at),
        ("Finished", run.finished_at),
        ("Wakes", run.wake_at),
        ("Deadline", run.deadline_at),
        ("Scheduled for", run.scheduled_at),
    ];
    for (label, at) in times {
        if let Some(at) = at {
            rows.push((label, time_and_relative(at, now)));
        }
    }
    if run.started_at.is_some() {
        rows.push(("Took", took(run, now)));
    }
    let links = [
        ("Waiting for", run.waiting_for.clone()),
        ("Parent", run.parent_id.map(|id| id.to_string())),
        ("Schedule", run.schedule_id.map(|id| id.to_string())),
        ("Idempotency key", run.idempotency_key.clone()),
        ("Forked from", run.forked_from.map(|id| id.to_string())),
        (
            "Build",
            run.build_id.clone().map(|b| {
                if run.pinned {
                    format!("{b} (pinned)")
                } else {
                    b
                }
            }),
        ),
    ];
    for (label, value) in links {
        if let Some(value) = value {
            rows.push((label, value));
        }
    }
    rows.push(("Input", run.input.to_string()));
    if let Some(output) = &run.output {
        rows.push(("Output", output.to_string()));
    }
    if let Some(error) = &run.error {
        rows.push(("Error", out.paint(error, Some(Paint::Red))));
    }
    let mut text = block(out, &rows);
    text.push_str("\n\n");
    if steps.is_empty() {
        text.push_str("No steps recorded.");
    } else {
        text.push_str(&out.paint("Steps", Some(Paint::Bold)));
        text.push('\n');
        text.push_str(&journal(out, run, steps).trim_fmt());
    }
    text
}

/// A run's steps: position, key, status, attempts, when each finished and how long it took
/// (from the step before it, or the run's start, to its end).
pub(crate) fn journal(out: &Output, run: &Run, steps: &[Step]) -> Table {
    let mut table = out.table(&[
        "#", "key", "status", "attempts", "finished", "took", "output",
    ]);
    let mut previous = run.started_at;
    for step in steps {
        let ended = step.finished_at.unwrap_or(step.created_at);
        let took = previous.map_or_else(|| "-".to_owned(), |from| duration(ended - from));
        previous = Some(previous.map_or(ended, |p| p.max(ended)));
        let (status, result) = step_result(step);
        table.add_row(vec![
            out.cell(step.position, None),
            out.cell(&step.key, None),
            out.cell(step.status, status),
            out.cell(step.attempts, None),
            out.cell(human::time(ended), None),
            out.cell(took, None),
            out.cell(result, None),
        ]);
    }
    table
}

/// A step's colour and what it returned (its output or error), cut to fit a cell.
pub(crate) fn step_result(step: &Step) -> (Option<Paint>, String) {
    match step.status {
        StepStatus::Completed => (
            Some(Paint::Green),
            step.output
                .as_ref()
                .map_or_else(|| "null".to_owned(), |o| json_brief(o, CELL_JSON)),
        ),
        _ => (
            Some(Paint::Red),
            cut(step.error.as_deref().unwrap_or(""), CELL_JSON),
        ),
    }
}

/// Run counts by status.
pub(crate) fn counts(out: &Output, counts: &RunCounts) -> Table {
    let mut table = out.table(&["status", "runs"]);
    // A count that reached the cap is a lower bound: `10000+`.
    let shown = |n: u64, capped: bool| {
        if capped {
            format!("{n}+")
        } else {
            n.to_string()
        }
    };
    for status in RunStatus::ALL {
        table.add_row(vec![
            out.status_cell(status),
            out.cell(shown(counts.get(status), counts.is_capped(status)), None),
        ]);
    }
    let total = shown(counts.total, counts.capped);
    table.add_row(vec![
        out.cell("total", Some(Paint::Bold)),
        out.cell(total, None),
    ]);
    table
}

/// A run's signals, in the order they were sent.
pub(crate) fn signals(out: &Output, signals: &[Signal], now: DateTime<Utc>) -> Table {
    let mut table = out.table(&["name", "sent", "received as", "payload"]);
    for signal in signals {
        table.add_row(vec![
            out.cell(&signal.name, None),
            out.cell(relative(signal.sent_at, now), None),
            out.cell(signal.received_as.as_deref().unwrap_or("(waiting)"), None),
            out.cell(json_brief(&signal.payload, CELL_JSON), None),
        ]);
    }
    table
}

/// Schedules, one per row.
pub(crate) fn schedules(out: &Output, schedules: &[Schedule], now: DateTime<Utc>) -> Table {
    let mut table = out.table(&[
        "id",
        "name",
        "workflow",
        "queue",
        "cron",
        "time zone",
        "state",
        "next",
    ]);
    for schedule in schedules {
        let (state, paint) = schedule_state(schedule);
        table.add_row(vec![
            out.cell(schedule.id, None),
            out.cell(schedule.name.as_deref().unwrap_or("-"), None),
            out.cell(&schedule.workflow, None),
            out.cell(&schedule.queue, None),
            out.cell(&schedule.cron, None),
            out.cell(&schedule.time_zone, None),
            out.cell(state, paint),
            out.cell(
                schedule
                    .next_fire_at
                    .map_or_else(|| "-".to_owned(), |at| relative(at, now)),
                None,
            ),
        ]);
    }
    table
}

fn schedule_state(schedule: &Schedule) -> (&'static str, Option<Paint>) {
    if schedule.paused {
        ("paused", Some(Paint::Yellow))
    } else {
        ("active", Some(Paint::Green))
    }
}

/// A schedule in detail.
pub(crate) fn schedule_detail(out: &Output, schedule: &Schedule, now: DateTime<Utc>) -> String {
    let (state, paint) = schedule_state(schedule);
    let mut rows = vec![
        ("Schedule", schedule.id.to_string()),
        (
            "Name",
            schedule.name.clone().unwrap_or_else(|| "-".to_owned()),
        ),
        ("Workflow", schedule.workflow.clone()),
        ("Queue", schedule.queue.clone()),
        (
            "Cron",
            format!("{} ({})", schedule.cron, schedule.time_zone),
        ),
        ("State", out.paint(state, paint)),
        ("Overlap", schedule.overlap.as_str().to_owned()),
        (
            "Catch-up",
            format!(
                "at most {} missed, {}",
                schedule.catch_up_max,
                schedule.catch_up_window_ms.map_or_else(
                    || "however old".to_owned(),
                    |ms| format!(
                        "within {}",
                        human::std_duration(std::time::Duration::from_millis(ms))
                    )
                )
            ),
        ),
        ("Retries", schedule.retries.to_string()),
        ("Input", schedule.input.to_string()),
    ];
    let times = [
        ("Next fire", schedule.next_fire_at),
        ("Last fired", schedule.last_fired_at),
        ("Buffered", schedule.buffered_at),
    ];
    for (label, at) in times {
        if let Some(at) = at {
            rows.push((label, time_and_relative(at, now)));
        }
    }
    rows.push(("Created", time_and_relative(schedule.created_at, now)));
    rows.push(("Updated", time_and_relative(schedule.updated_at, now)));
    rows.push(("Version", schedule.version.to_string()));
    block(out, &rows)
}

/// Workers, one per row.
pub(crate) fn workers(out: &Output, workers: &[Worker], now: DateTime<Utc>) -> Table {
    let mut table = out.table(&[
        "id",
        "queue",
        "status",
        "runs",
        "workflows",
        "host",
        "heartbeat",
    ]);
    for worker in workers {
        let paint = match worker.status {
            WorkerStatus::Online => Some(Paint::Green),
            _ => Some(Paint::Dim),
        };
        let status = match worker.status {
            WorkerStatus::Online => "online",
            _ => "offline",
        };
        table.add_row(vec![
            out.cell(worker.id, None),
            out.cell(&worker.queue, None),
            out.cell(status, paint),
            out.cell(format!("{}/{}", worker.runs_held, worker.capacity), None),
            out.cell(cut(&worker.workflows.join(", "), CELL_JSON), None),
            out.cell(worker.hostname.as_deref().unwrap_or("-"), None),
            out.cell(relative(worker.last_heartbeat_at, now), None),
        ]);
    }
    table
}

/// Queues by workflow: the backlog, how old its oldest run is, and who could take it.
pub(crate) fn queues(out: &Output, list: &QueueList) -> Table {
    let mut table = out.table(&[
        "queue",
        "workflow",
        "due",
        "oldest",
        "scheduled",
        "running",
        "suspended",
        "workers",
    ]);
    for stats in &list.queues {
        let oldest = stats
            .oldest_due_at
            .map_or_else(|| "-".to_owned(), |at| duration(list.now - at));
        let workers = if stats.workers == 0 && stats.due > 0 {
            out.cell(stats.workers, Some(Paint::Red))
        } else {
            out.cell(stats.workers, None)
        };
        table.add_row(vec![
            out.cell(&stats.queue, None),
            out.cell(&stats.workflow, None),
            out.cell(stats.due, None),
            out.cell(oldest, None),
            out.cell(stats.scheduled, None),
            out.cell(stats.running, None),
            out.cell(stats.suspended, None),
            workers,
        ]);
    }
    table
}
