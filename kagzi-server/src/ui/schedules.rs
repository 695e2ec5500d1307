//! The schedules page and a schedule's page: cron, time zone, next due times, last runs.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use kagzi_proto::{Schedule, ScheduleFilter, ScheduleRunsQuery};
use maud::{Markup, html};

use super::error::Result;
use super::format::{self, path_segment};
use super::layout::{self, Flash, Nav};
use crate::api;
use crate::api::extract::{Path as ApiPath, Query as ApiQuery};
use crate::schedule::CronSpec;
use crate::state::AppState;

/// The most schedules the list shows.
const MAX_LISTED: u32 = 500;
/// How many due times a schedule's page shows.
const NEXT_DUE: usize = 5;
/// How many of its last runs a schedule's page shows.
const LAST_RUNS: u32 = 20;

/// The name a schedule is shown by, and the key of its page.
fn label(s: &Schedule) -> (String, String) {
    match &s.name {
        Some(name) => (name.clone(), name.clone()),
        None => (super::format::short(&s.id), s.id.to_string()),
    }
}

fn buttons(s: &Schedule) -> Markup {
    let base = format!("/ui/schedules/{}", path_segment(&s.id.to_string()));
    html! {
        span.buttons {
            @if s.paused {
                form.inline method="post" action={ (base) "/resume" } { button type="submit" { "Resume" } }
            } @else {
                form.inline method="post" action={ (base) "/pause" } { button type="submit" { "Pause" } }
            }
            form.inline method="post" action={ (base) "/trigger" } { button type="submit" { "Trigger now" } }
        }
    }
}

fn state_badge(s: &Schedule) -> Markup {
    if s.paused {
        html! { span.badge.st-cancelled { "paused" } }
    } else {
        html! { span.badge.st-running { "active" } }
    }
}

/// `GET /ui/schedules`.
pub(crate) async fn list_page(
    State(state): State<AppState>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let filter = ScheduleFilter {
        limit: Some(MAX_LISTED),
        ..ScheduleFilter::default()
    };
    let page = api::schedules::list(State(state.clone()), ApiQuery(filter))
        .await?
        .0;
    let now = Utc::now();
    let login = super::session::login_enabled(&state);
    let body = html! {
        (flash.banner())
        h1 { "Schedules" }
        @if page.schedules.is_empty() {
            p.empty { "No schedules. Create one with " code { "POST /v1/schedules" } " or " code { "kagzi schedule create" } "." }
        } @else {
            table.schedules {
                thead { tr { th { "Schedule" } th { "Workflow" } th { "Queue" } th { "Cron" } th { "Time zone" } th { "Next due" } th { "Last fired" } th { "State" } th {} } }
                tbody {
                    @for s in &page.schedules {
                        @let (name, key) = label(s);
                        tr data-schedule=(s.id) {
                            td { a href={ "/ui/schedules/" (path_segment(&key)) } { (name) } }
                            td { (s.workflow) }
                            td { (s.queue) }
                            td { code { (s.cron) } }
                            td { (s.time_zone) }
                            td { @if s.paused { span.muted { "paused" } } @else { (format::maybe_time(s.next_fire_at, now)) } }
                            td { (format::maybe_time(s.last_fired_at, now)) }
                            td { (state_badge(s)) }
                            td { (buttons(s)) }
                        }
                    }
                }
            }
            @if page.next_cursor.is_some() {
                p.muted { "The first " (MAX_LISTED) " schedules are shown; " code { "GET /v1/schedules" } " lists them all." }
            }
        }
    };
    Ok(layout::page("Schedules", Nav::Schedules, login, body).into_response())
}

/// The next `n` due times of `s` after `now`, in UTC.
fn next_due(s: &Schedule, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let Ok(spec) = CronSpec::parse(&s.cron, &s.time_zone) else {
        return Vec::new();
    };
    std::iter::successors(spec.next_after(now), |t| spec.next_after(*t))
        .take(n)
        .collect()
}

/// `GET /ui/schedules/{id}`: a schedule by id or name.
pub(crate) async fn page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let s = api::schedules::show(State(state.clone()), ApiPath(id.clone()))
        .await?
        .0;
    let query = ScheduleRunsQuery {
        limit: Some(LAST_RUNS),
        ..ScheduleRunsQuery::default()
    };
    let runs = api::schedules::runs(State(state.clone()), ApiPath(id), ApiQuery(query))
        .await?
        .0
        .runs;
    let now = Utc::now();
    let login = super::session::login_enabled(&state);
    let (name, _) = label(&s);
    let body = html! {
        (flash.banner())
        nav.breadcrumbs { a href="/ui/schedules" { "Schedules" } " / " span { (name) } }
        header.run-head { h1 { (name) " " (state_badge(&s)) } code.id { (s.id) } }
        (buttons(&s))
        dl.facts {
            dt { "Workflow" } dd { (s.workflow) }
            dt { "Queue" } dd { (s.queue) }
            dt { "Cron" } dd { code { (s.cron) } }
            dt { "Time zone" } dd { (s.time_zone) }
            dt { "Overlap" } dd { (format!("{:?}", s.overlap).to_lowercase()) }
            dt { "Retries" } dd { (s.retries) }
            dt { "Last fired" } dd { (format::maybe_time(s.last_fired_at, now)) }
            dt { "Created" } dd { (format::time(s.created_at, now)) }
        }
        section {
            h2 { "Next due" @if s.paused { span.muted { " · paused: none fires until resumed" } } }
            ol.due {
                @for t in next_due(&s, now, NEXT_DUE) {
                    li { (format::absolute(t)) " UTC " span.muted { (format::relative(t, now)) } }
                }
            }
        }
        section {
            h2 { "Last runs" }
            @if runs.is_empty() {
                p.muted { "None yet." }
            } @else {
                table {
                    thead { tr { th { "Run" } th { "Status" } th { "For" } th { "Created" } th { "Duration" } } }
                    tbody {
                        @for run in &runs {
                            tr {
                                td { a href={ "/ui/runs/" (run.id) } { (format::short_id(&run.id)) } }
                                td { (format::status(run.status)) }
                                td { @if let Some(at) = run.scheduled_at { (format::absolute(at)) } }
                                td { (format::time(run.created_at, now)) }
                                td { (super::runs::run_duration(run, now)) }
                            }
                        }
                    }
                }
                p { a href={ "/ui?schedule=" (s.id) } { "all its runs →" } }
            }
        }
        section.payloads { (format::json("Input", &s.input)) }
    };
    Ok(layout::page(&name, Nav::Schedules, login, body).into_response())
}
