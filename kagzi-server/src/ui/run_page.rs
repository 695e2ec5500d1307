//! A run's page: what it is, its step timeline, signals, family, input and output, and the
//! actions an operator takes on it.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use kagzi_proto::{Run, RunCounts, RunFilter, RunStatus, Schedule, Signal, Step};
use maud::{Markup, html};
use uuid::Uuid;

use super::error::{Result, UiError};
use super::format;
use super::layout::{self, Flash, Nav};
use super::timeline;
use crate::api;
use crate::api::extract::{Path as ApiPath, Query as ApiQuery};
use crate::state::AppState;

/// The most ancestors shown above a run.
const MAX_ANCESTORS: usize = 10;
/// The most children listed on a run's page; the rest are a link to the filtered runs page.
const MAX_CHILDREN: u32 = 100;

/// Everything a run's page shows, read through the API's handlers.
struct Seen {
    run: Run,
    steps: Vec<Step>,
    signals: Vec<Signal>,
    ancestors: Vec<Run>,
    children: Vec<Run>,
    child_counts: RunCounts,
    schedule: Option<Schedule>,
}

/// Parses a run id from a dashboard path.
pub(crate) fn run_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| UiError::bad_request(format!("{id:?} is not a run id")))
}

async fn read(state: &AppState, id: Uuid) -> Result<Seen> {
    let run = api::runs::show(State(state.clone()), ApiPath(id)).await?.0;
    let children_filter = RunFilter {
        parent_id: Some(run.id),
        limit: Some(MAX_CHILDREN),
        ..RunFilter::default()
    };
    let counts_filter = RunFilter {
        parent_id: Some(run.id),
        ..RunFilter::default()
    };
    let (steps, signals, children, child_counts) = tokio::try_join!(
        api::runs::steps(State(state.clone()), ApiPath(id)),
        api::runs::signals(State(state.clone()), ApiPath(id)),
        api::runs::list(State(state.clone()), ApiQuery(children_filter)),
        api::runs::counts(State(state.clone()), ApiQuery(counts_filter)),
    )?;
    let mut ancestors = Vec::new();
    let mut parent = run.parent_id;
    while let Some(id) = parent.filter(|_| ancestors.len() < MAX_ANCESTORS) {
        match api::runs::show(State(state.clone()), ApiPath(id.0)).await {
            Ok(found) => {
                parent = found.0.parent_id;
                ancestors.push(found.0);
            }
            // A parent deleted since is shown as its id alone.
            Err(api::error::ApiError::NotFound(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    ancestors.reverse();
    let schedule = match run.schedule_id {
        Some(id) => api::schedules::show(State(state.clone()), ApiPath(id.to_string()))
            .await
            .ok()
            .map(|s| s.0),
        None => None,
    };
    Ok(Seen {
        run,
        steps: steps.0.steps,
        signals: signals.0.signals,
        ancestors,
        children: children.0.runs,
        child_counts: child_counts.0,
        schedule,
    })
}

/// `GET /ui/runs/{id}`: the run's page.
pub(crate) async fn page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let id = run_id(&id)?;
    let seen = read(&state, id).await?;
    let now = Utc::now();
    let run = &seen.run;
    let login = super::session::login_enabled(&state);
    let title = format!("{} {}", run.workflow, format::short(&run.id));
    let body = html! {
        (flash.banner())
        (family(&seen))
        div #run data-refresh=[(!run.status.is_terminal()).then_some("1000")] {
            header.run-head {
                h1 { (run.workflow) " " (format::status(run.status)) }
                code.id { (run.id) }
            }
            @if let Some(error) = &run.error {
                section.error-box { h2 { "Error" } pre { (error) } }
            }
            (facts(&seen, now))
            @let line = timeline::build(run, &seen.steps, now);
            section {
                h2 {
                    "Timeline "
                    span.muted {
                        "· " (seen.steps.len()) " journal entries · steps busy "
                        (format::duration(timeline::busy(&line))) " of " (format::duration(line.end - line.start))
                    }
                }
                (timeline::render(&line))
            }
            (signals(&seen.signals, now))
            (children(&seen, now))
            section.payloads {
                (format::json("Input", &run.input))
                @if let Some(output) = &run.output { (format::json("Output", output)) }
            }
        }
        (actions(run, &seen.steps))
    };
    Ok(layout::page(&title, Nav::Runs, login, body).into_response())
}

fn family(seen: &Seen) -> Markup {
    html! {
        nav.breadcrumbs aria-label="Parents" {
            a href="/ui" { "Runs" }
            @if seen.ancestors.is_empty() && seen.run.parent_id.is_some() {
                @if let Some(parent) = seen.run.parent_id {
                    " / " a href={ "/ui/runs/" (parent) } { (format::short_id(&parent)) }
                }
            }
            @for up in &seen.ancestors {
                " / " a href={ "/ui/runs/" (up.id) } { (up.workflow) " " (format::short_id(&up.id)) }
            }
            " / " span { (seen.run.workflow) " " (format::short_id(&seen.run.id)) }
        }
    }
}

fn facts(seen: &Seen, now: DateTime<Utc>) -> Markup {
    let run = &seen.run;
    let row = |name: &str, value: Markup| html! { dt { (name) } dd { (value) } };
    html! {
        dl.facts {
            (row("Queue", html! { (run.queue) }))
            (row("Attempts", html! { (run.attempts) " of " (run.retries + 1) }))
            (row("Created", format::time(run.created_at, now)))
            (row("Started", format::maybe_time(run.started_at, now)))
            (row("Finished", format::maybe_time(run.finished_at, now)))
            (row("Duration", super::runs::run_duration(run, now)))
            @if let Some(wake) = run.wake_at { (row("Wakes", format::time(wake, now))) }
            @if let Some(what) = &run.waiting_for { (row("Waiting for", html! { code { (what) } })) }
            @if let Some(deadline) = run.deadline_at { (row("Deadline", format::time(deadline, now))) }
            @if let Some(key) = &run.idempotency_key { (row("Idempotency key", html! { code { (key) } })) }
            @if let Some(build) = &run.build_id {
                (row("Build", html! { code { (build) } @if run.pinned { " (pinned)" } }))
            }
            @if let Some(forked) = run.forked_from {
                (row("Forked from", html! { a href={ "/ui/runs/" (forked) } { (format::short_id(&forked)) } }))
            }
            @if let Some(id) = run.schedule_id {
                (row("Schedule", html! {
                    a href={ "/ui/schedules/" (id) } {
                        @match &seen.schedule {
                            Some(s) => { (s.name.clone().unwrap_or_else(|| s.cron.clone())) }
                            None => { (format::short_id(&id)) " (deleted)" }
                        }
                    }
                    @if let Some(at) = run.scheduled_at { " for " (format::absolute(at)) }
                }))
            }
        }
    }
}

fn signals(signals: &[Signal], now: DateTime<Utc>) -> Markup {
    html! {
        section #signals {
            h2 { "Signals " span.muted { "· " (signals.len()) } }
            @if signals.is_empty() {
                p.muted { "None sent." }
            } @else {
                table {
                    thead { tr { th { "Name" } th { "Sent" } th { "State" } th { "Payload" } } }
                    tbody {
                        @for signal in signals {
                            tr {
                                td { code { (signal.name) } }
                                td { (format::time(signal.sent_at, now)) }
                                td {
                                    @match &signal.received_as {
                                        Some(key) => { "received as " code { (key) } }
                                        None => { span.badge.st-pending { "pending" } }
                                    }
                                }
                                td { code { (format::json_inline(&signal.payload, 120)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn children(seen: &Seen, now: DateTime<Utc>) -> Markup {
    let counts = &seen.child_counts;
    if counts.total == 0 {
        return html! {};
    }
    let by_status: Vec<(RunStatus, u64)> = RunStatus::ALL
        .into_iter()
        .map(|s| (s, counts.get(s)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let all = format!("/ui?parent={}", seen.run.id);
    html! {
        section #children {
            h2 { "Children " span.muted { "· " (format::count(counts.total)) @if counts.capped { "+" } } }
            p {
                @for (status, n) in &by_status {
                    (format::status(*status)) " " (format::count(*n)) " "
                }
                a href=(all) { "all children →" }
            }
            ul.tree {
                @for child in &seen.children {
                    li {
                        a href={ "/ui/runs/" (child.id) } { (child.workflow) " " (format::short_id(&child.id)) }
                        " " (format::status(child.status)) " "
                        span.muted { (format::relative(child.created_at, now)) }
                    }
                }
            }
        }
    }
}

fn actions(run: &Run, steps: &[Step]) -> Markup {
    let base = format!("/ui/runs/{}", run.id);
    let waiting_signal = run
        .waiting_for
        .as_deref()
        .and_then(|w| w.strip_prefix("signal:"))
        .unwrap_or_default();
    html! {
        section.actions {
            h2 { "Actions" }
            @if !run.status.is_terminal() {
                form method="post" action={ (base) "/cancel" } {
                    button.danger type="submit" name="cancel" { "Cancel run" }
                    span.muted { " and every child run of it" }
                }
                form.signal method="post" action={ (base) "/signal" } {
                    h3 { "Send a signal" }
                    label { "Name " input type="text" name="name" value=(waiting_signal) required; }
                    label.wide { "Payload (JSON) " textarea name="payload" rows="3" { "null" } }
                    button type="submit" { "Send signal" }
                }
            }
            @if matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
                form method="post" action={ (base) "/retry" } {
                    button type="submit" { "Retry run" }
                    span.muted { " as the same run, keeping its finished steps" }
                }
            }
            @if run.status.is_terminal() {
                form.fork method="post" action={ (base) "/fork" } {
                    h3 { "Fork" }
                    label { "From step "
                        select name="from_step" {
                            option value="" { "(the start)" }
                            @for step in steps { option value=(step.key) { (step.key) } }
                        }
                    }
                    label { "Queue " input type="text" name="queue" placeholder=(run.queue); }
                    label.wide { "Input (JSON, empty: the same) " textarea name="input" rows="3" {} }
                    button type="submit" { "Fork run" }
                }
                form method="post" action={ (base) "/delete" } data-confirm="Delete this run, its steps and signals?" {
                    button.danger type="submit" { "Delete run" }
                }
            }
        }
    }
}
