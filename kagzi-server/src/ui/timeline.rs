//! A run's step timeline: one bar per journal entry, to scale, from the run's start to its
//! end (or now). The journal records when each step finished, so a bar starts where the
//! previous one ended; sleeps, signal waits and child runs are drawn as the gaps they are.

use chrono::{DateTime, TimeDelta, Utc};
use kagzi_proto::{Run, RunId, RunStatus, Step, StepStatus};
use maud::{Markup, html};

use super::format;

/// What a journal entry is, by its key's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A step of the workflow's own code.
    Step,
    /// A durable sleep (`sleep:NAME`): from when it began until it woke.
    Sleep,
    /// A signal received (`signal:NAME`): the wait for it.
    Signal,
    /// A deadline armed for a signal wait (`signal:NAME:deadline`).
    Deadline,
    /// A child run started (`child:WORKFLOW`).
    Child,
    /// A recorded `patched` decision (`patch:ID`).
    Patch,
    /// Where the run is now: the step running, or what it waits for.
    Now,
}

impl Kind {
    fn of(key: &str) -> Self {
        if key.starts_with("sleep:") {
            Self::Sleep
        } else if key.starts_with("signal:") && key.contains(":deadline") {
            Self::Deadline
        } else if key.starts_with("signal:") {
            Self::Signal
        } else if key.starts_with("child:") {
            Self::Child
        } else if key.starts_with("patch:") {
            Self::Patch
        } else {
            Self::Step
        }
    }

    fn class(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::Sleep => "sleep",
            Self::Signal => "signal",
            Self::Deadline | Self::Patch => "marker",
            Self::Child => "child",
            Self::Now => "now",
        }
    }
}

/// One bar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// The journal key, or what the run is doing now.
    pub label: String,
    /// What it is.
    pub kind: Kind,
    /// Whether the step failed.
    pub failed: bool,
    /// When it started (estimated: where the previous bar ended).
    pub from: DateTime<Utc>,
    /// When it ended.
    pub to: DateTime<Utc>,
    /// Attempts of a step.
    pub attempts: u32,
    /// A step's error.
    pub error: Option<String>,
    /// The reason for a gap, or what a marker recorded.
    pub note: Option<String>,
    /// The child run it started.
    pub child: Option<RunId>,
}

/// A run's bars between `start` and `end`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Timeline {
    /// The run's start: when it first started, or was created.
    pub start: DateTime<Utc>,
    /// Its end, or now.
    pub end: DateTime<Utc>,
    /// In journal order.
    pub bars: Vec<Bar>,
}

/// The timeline of `run` with its `steps` (in position order) at `now`.
pub(crate) fn build(run: &Run, steps: &[Step], now: DateTime<Utc>) -> Timeline {
    let start = run.started_at.unwrap_or(run.created_at);
    let mut cursor = start;
    let mut bars = Vec::with_capacity(steps.len() + 1);
    for step in steps {
        let recorded = step.finished_at.unwrap_or(step.created_at).max(start);
        let kind = Kind::of(&step.key);
        let mut bar = Bar {
            label: step.key.clone(),
            kind,
            failed: step.status == StepStatus::Failed,
            from: cursor.min(recorded),
            to: recorded,
            attempts: step.attempts,
            error: step.error.clone(),
            note: None,
            child: None,
        };
        match kind {
            Kind::Sleep => {
                // Recorded when the sleep began; its output is the time it wakes.
                let wake = step
                    .output
                    .as_ref()
                    .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok());
                bar.from = recorded;
                if let Some(wake) = wake {
                    bar.to = wake.max(recorded);
                    bar.note = Some(format!("sleep until {}", format::absolute(wake)));
                }
            }
            Kind::Signal => bar.note = Some("waited for the signal".to_owned()),
            Kind::Child => {
                bar.child = step
                    .output
                    .as_ref()
                    .and_then(|v| serde_json::from_value(v.clone()).ok());
                bar.from = recorded;
                bar.note = Some("started a child run".to_owned());
            }
            Kind::Deadline | Kind::Patch => {
                bar.from = recorded;
                bar.note = step.output.as_ref().map(|v| format::json_inline(v, 60));
            }
            Kind::Step | Kind::Now => {}
        }
        // A sleep that has not woken yet ends the run's known past at now.
        cursor = cursor.max(bar.to.min(now.max(recorded)));
        bars.push(bar);
    }
    if let Some(now_bar) = current(run, cursor, now) {
        bars.push(now_bar);
    }
    let end = run
        .finished_at
        .unwrap_or(now)
        .max(bars.iter().map(|b| b.to).max().unwrap_or(start))
        .max(start);
    Timeline { start, end, bars }
}

/// What an active run is doing after its last journal entry.
fn current(run: &Run, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<Bar> {
    let (label, note) = match run.status {
        RunStatus::Running => ("running".to_owned(), "the next step is running".to_owned()),
        RunStatus::Waiting => {
            let what = run
                .waiting_for
                .clone()
                .unwrap_or_else(|| "a signal".to_owned());
            (
                format!("waiting for {what}"),
                "suspended: no worker slot held".to_owned(),
            )
        }
        RunStatus::Pending if run.attempts > 0 => (
            "pending".to_owned(),
            "back in its queue for another attempt".to_owned(),
        ),
        _ => return None,
    };
    Some(Bar {
        label,
        kind: Kind::Now,
        failed: false,
        from: since.min(now),
        to: now,
        attempts: 0,
        error: None,
        note: Some(note),
        child: None,
    })
}

/// The timeline as rows of bars drawn to scale in SVG (no inline styles, so the page's
/// content security policy holds).
pub(crate) fn render(timeline: &Timeline) -> Markup {
    let span = timeline
        .end
        .signed_duration_since(timeline.start)
        .num_microseconds()
        .unwrap_or(i64::MAX)
        .max(1) as f64;
    let x = |t: DateTime<Utc>| {
        let offset = t
            .signed_duration_since(timeline.start)
            .num_microseconds()
            .unwrap_or(0) as f64;
        (offset / span * 1000.0).clamp(0.0, 1000.0)
    };
    html! {
        div.timeline {
            div.timeline-head {
                span { "step" }
                span { "0" span.right { (format::duration(timeline.end - timeline.start)) } }
                span { "took" }
                span { "attempts" }
            }
            @if timeline.bars.is_empty() {
                p.muted { "No step recorded yet." }
            }
            @for bar in &timeline.bars {
                @let left = x(bar.from);
                @let width = (x(bar.to) - left).max(3.0);
                @let class = format!("bar {}{}", bar.kind.class(), if bar.failed { " failed" } else { "" });
                div class=(format!("row {}", bar.kind.class())) {
                    span.key title=(bar.label) { (bar.label) }
                    svg.track viewBox="0 0 1000 10" preserveAspectRatio="none" role="img" aria-label=(bar.label) {
                        title { (bar.label) ": " (format::absolute(bar.from)) " → " (format::absolute(bar.to)) }
                        rect class=(class) x=(format!("{left:.2}")) y="1" width=(format!("{:.2}", width.min(1000.0 - left).max(3.0))) height="8" {}
                    }
                    span.took { (format::duration(bar.to - bar.from)) }
                    span.attempts { @if bar.attempts > 1 { strong { (bar.attempts) } } @else if bar.attempts == 1 { "1" } }
                    @if let Some(note) = &bar.note {
                        span.note {
                            (note)
                            @if let Some(child) = bar.child {
                                " " a href={ "/ui/runs/" (child) } { (format::short_id(&child)) }
                            }
                        }
                    }
                    @if let Some(error) = &bar.error {
                        pre.error { (error) }
                    }
                }
            }
        }
    }
}

/// How long the run's steps took in all (the sum of the step bars).
pub(crate) fn busy(timeline: &Timeline) -> TimeDelta {
    timeline
        .bars
        .iter()
        .filter(|b| b.kind == Kind::Step)
        .map(|b| b.to - b.from)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(1_800_000_000_000 + ms).expect("a time")
    }

    fn run(status: RunStatus, started: i64, finished: Option<i64>) -> Run {
        serde_json::from_value(json!({
            "id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
            "workflow": "w",
            "queue": "default",
            "status": status,
            "input": null,
            "attempts": 1,
            "retries": 0,
            "created_at": at(0),
            "started_at": at(started),
            "finished_at": finished.map(at),
        }))
        .expect("a run")
    }

    fn step(key: &str, position: u32, finished: i64, output: serde_json::Value) -> Step {
        Step {
            key: key.to_owned(),
            position,
            status: StepStatus::Completed,
            output: Some(output),
            error: None,
            attempts: 1,
            created_at: at(finished),
            finished_at: Some(at(finished)),
        }
    }

    #[test]
    fn each_step_starts_where_the_previous_ended() {
        let run = run(RunStatus::Completed, 10, Some(100));
        let steps = [step("a", 0, 30, json!(1)), step("b", 1, 80, json!(2))];
        let t = build(&run, &steps, at(1_000));
        assert_eq!((t.start, t.end), (at(10), at(100)));
        assert_eq!(t.bars.len(), 2);
        assert_eq!((t.bars[0].from, t.bars[0].to), (at(10), at(30)));
        assert_eq!((t.bars[1].from, t.bars[1].to), (at(30), at(80)));
        assert_eq!(busy(&t), TimeDelta::milliseconds(70));
    }

    #[test]
    fn a_sleep_is_a_gap_until_it_wakes_and_a_signal_wait_ends_when_received() {
        let run = run(RunStatus::Completed, 0, Some(5_000));
        let steps = [
            step("sleep:cool-off", 0, 100, json!(at(2_100))),
            step("signal:approve", 1, 4_000, json!({"ok": true})),
            step("ship", 2, 4_500, json!(null)),
        ];
        let t = build(&run, &steps, at(9_000));
        let sleep = &t.bars[0];
        assert_eq!(
            (sleep.kind, sleep.from, sleep.to),
            (Kind::Sleep, at(100), at(2_100))
        );
        assert!(
            sleep
                .note
                .as_deref()
                .is_some_and(|n| n.starts_with("sleep until"))
        );
        let wait = &t.bars[1];
        assert_eq!(
            (wait.kind, wait.from, wait.to),
            (Kind::Signal, at(2_100), at(4_000))
        );
        assert_eq!((t.bars[2].from, t.bars[2].to), (at(4_000), at(4_500)));
    }

    #[test]
    fn an_active_run_ends_in_a_bar_for_what_it_does_now() {
        let mut waiting = run(RunStatus::Waiting, 0, None);
        waiting.waiting_for = Some("signal:approve".to_owned());
        let t = build(&waiting, &[step("a", 0, 50, json!(1))], at(400));
        let last = t.bars.last().expect("a bar");
        assert_eq!(last.kind, Kind::Now);
        assert_eq!(last.label, "waiting for signal:approve");
        assert_eq!((last.from, last.to, t.end), (at(50), at(400), at(400)));

        let done = run(RunStatus::Completed, 0, Some(60));
        let t = build(&done, &[step("a", 0, 50, json!(1))], at(400));
        assert!(t.bars.iter().all(|b| b.kind != Kind::Now));
    }

    #[test]
    fn a_child_start_links_to_the_child() {
        let child = "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b";
        let run = run(RunStatus::Completed, 0, Some(100));
        let t = build(&run, &[step("child:charge", 0, 20, json!(child))], at(100));
        assert_eq!(t.bars[0].kind, Kind::Child);
        assert_eq!(
            t.bars[0].child.map(|c| c.to_string()).as_deref(),
            Some(child)
        );
    }

    #[test]
    fn steps_finished_out_of_order_never_draw_backwards() {
        let run = run(RunStatus::Completed, 0, Some(100));
        let steps = [step("a", 0, 90, json!(1)), step("b", 1, 40, json!(2))];
        let t = build(&run, &steps, at(100));
        assert!(t.bars.iter().all(|b| b.from <= b.to));
        let html = render(&t).into_string();
        assert_eq!(html.matches("<rect").count(), 2);
    }
}
