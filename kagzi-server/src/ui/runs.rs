//! The runs page: newest first, filtered, counted by status, a page at a time.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use kagzi_proto::{Run, RunCounts, RunFilter, RunId, RunStatus, ScheduleId};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use super::error::{Result, UiError};
use super::format;
use super::layout::{self, Flash, Nav};
use super::session::encode;
use crate::api;
use crate::state::AppState;

/// The page's query: the filter form's fields, as typed (an empty field is no filter).
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct RunsQuery {
    /// A run id or an idempotency key.
    q: Option<String>,
    status: Option<String>,
    workflow: Option<String>,
    queue: Option<String>,
    /// A parent run's id.
    parent: Option<String>,
    /// A schedule's id.
    schedule: Option<String>,
    /// `15m`, `1h`, `24h` or `7d`: created within that long before now.
    since: Option<String>,
    /// Created at or after, `YYYY-MM-DDTHH:MM` in UTC.
    from: Option<String>,
    /// Created before, `YYYY-MM-DDTHH:MM` in UTC.
    until: Option<String>,
    /// The last run of the previous page.
    cursor: Option<String>,
    limit: Option<String>,
}

/// The windows the "created" menu offers.
const SINCE: [(&str, &str, i64); 4] = [
    ("15m", "last 15 minutes", 15 * 60),
    ("1h", "last hour", 60 * 60),
    ("24h", "last 24 hours", 24 * 60 * 60),
    ("7d", "last 7 days", 7 * 24 * 60 * 60),
];

fn given(field: &Option<String>) -> Option<&str> {
    field.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn uuid(what: &str, value: Option<&str>) -> Result<Option<Uuid>> {
    value
        .map(|v| {
            Uuid::parse_str(v)
                .map_err(|_| UiError::bad_request(format!("{what} {v:?} is not a run id")))
        })
        .transpose()
}

fn minute(what: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M").map(|t| t.and_utc())
                })
                .map_err(|_| {
                    UiError::bad_request(format!(
                        "{what} {v:?} is not a time like 2026-12-04T09:30"
                    ))
                })
        })
        .transpose()
}

impl RunsQuery {
    /// The API's filter for this query, `q` aside.
    fn filter(&self, now: DateTime<Utc>) -> Result<RunFilter> {
        let status = given(&self.status)
            .map(str::parse::<RunStatus>)
            .transpose()
            .map_err(UiError::bad_request)?;
        let since = given(&self.since)
            .map(|s| {
                SINCE
                    .iter()
                    .find(|(key, _, _)| *key == s)
                    .map(|(_, _, secs)| now - TimeDelta::seconds(*secs))
                    .ok_or_else(|| {
                        UiError::bad_request(format!("since {s:?} is not one of 15m, 1h, 24h, 7d"))
                    })
            })
            .transpose()?;
        let from = minute("from", given(&self.from))?;
        let limit = given(&self.limit)
            .map(|l| {
                l.parse::<u32>()
                    .map_err(|_| UiError::bad_request(format!("limit {l:?} is not a number")))
            })
            .transpose()?;
        Ok(RunFilter {
            workflow: given(&self.workflow).map(str::to_owned),
            queue: given(&self.queue).map(str::to_owned),
            status,
            schedule_id: uuid("schedule", given(&self.schedule))?.map(ScheduleId),
            limit: Some(limit.unwrap_or(50)),
            cursor: uuid("cursor", given(&self.cursor))?.map(RunId),
            parent_id: uuid("parent", given(&self.parent))?.map(RunId),
            idempotency_key: None,
            created_after: since.max(from),
            created_before: minute("until", given(&self.until))?,
        })
    }

    /// This query's link with `changes` applied (`None` removes a field) and the cursor reset
    /// unless a change sets it.
    fn link(&self, changes: &[(&str, Option<&str>)]) -> String {
        let fields = [
            ("q", &self.q),
            ("status", &self.status),
            ("workflow", &self.workflow),
            ("queue", &self.queue),
            ("parent", &self.parent),
            ("schedule", &self.schedule),
            ("since", &self.since),
            ("from", &self.from),
            ("until", &self.until),
            ("limit", &self.limit),
        ];
        let mut pairs: Vec<(&str, &str)> = fields
            .iter()
            .filter(|(name, _)| !changes.iter().any(|(c, _)| c == name))
            .filter_map(|(name, value)| given(value).map(|v| (*name, v)))
            .collect();
        pairs.extend(
            changes
                .iter()
                .filter_map(|(name, value)| value.map(|v| (*name, v))),
        );
        if pairs.is_empty() {
            "/ui".to_owned()
        } else {
            format!("/ui?{}", encode(&pairs))
        }
    }
}

/// `GET /ui`: the runs page.
pub(crate) async fn page(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
    Query(flash): Query<Flash>,
) -> Result<Response> {
    let now = Utc::now();
    let mut filter = q.filter(now)?;
    if let Some(search) = given(&q.q) {
        // A run id opens the run; anything else (or an id of no run) is an idempotency key.
        if let Ok(id) = Uuid::parse_str(search)
            && api::runs::show(State(state.clone()), api::extract::Path(id))
                .await
                .is_ok()
        {
            return Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response());
        }
        filter.idempotency_key = Some(search.to_owned());
    }
    let counts_filter = RunFilter {
        status: None,
        cursor: None,
        limit: None,
        ..filter.clone()
    };
    let (page, counts) = tokio::try_join!(
        api::runs::list(State(state.clone()), api::extract::Query(filter.clone())),
        api::runs::counts(State(state.clone()), api::extract::Query(counts_filter)),
    )?;
    let (page, counts) = (page.0, counts.0);
    let active = page.runs.iter().any(|r| !r.status.is_terminal())
        || RunStatus::ALL
            .iter()
            .any(|s| !s.is_terminal() && counts.get(*s) > 0);
    let login = super::session::login_enabled(&state);
    let body = html! {
        (flash.banner())
        (filters(&q))
        div #runs data-refresh=[(active && filter.cursor.is_none()).then_some("2000")] {
            (tabs(&q, filter.status, &counts))
            (table(&page.runs, now))
            nav.pages {
                @if filter.cursor.is_some() {
                    a href=(q.link(&[("cursor", None)])) { "← Newest" }
                }
                @if let Some(next) = page.next_cursor {
                    a href=(q.link(&[("cursor", Some(&next.to_string()))])) { "Older →" }
                }
            }
        }
    };
    Ok(layout::page("Runs", Nav::Runs, login, body).into_response())
}

fn filters(q: &RunsQuery) -> Markup {
    let value = |field: &Option<String>| given(field).unwrap_or_default().to_owned();
    let since = given(&q.since);
    let more = [&q.parent, &q.schedule, &q.from, &q.until]
        .iter()
        .any(|f| given(f).is_some());
    html! {
        form.filters method="get" action="/ui" {
            @if let Some(status) = given(&q.status) { input type="hidden" name="status" value=(status); }
            input.search type="search" name="q" value=(value(&q.q)) placeholder="Run id or idempotency key" aria-label="Run id or idempotency key";
            input type="text" name="workflow" value=(value(&q.workflow)) placeholder="Workflow" aria-label="Workflow";
            input type="text" name="queue" value=(value(&q.queue)) placeholder="Queue" aria-label="Queue";
            select name="since" aria-label="Created" {
                option value="" selected[since.is_none()] { "any time" }
                @for (key, label, _) in SINCE {
                    option value=(key) selected[since == Some(key)] { (label) }
                }
            }
            button type="submit" { "Filter" }
            a href="/ui" { "Clear" }
            details.more open[more] {
                summary { "More filters" }
                label { "Parent run " input type="text" name="parent" value=(value(&q.parent)) placeholder="run id"; }
                label { "Schedule " input type="text" name="schedule" value=(value(&q.schedule)) placeholder="schedule id"; }
                label { "Created from " input type="datetime-local" name="from" value=(value(&q.from)); }
                label { "until " input type="datetime-local" name="until" value=(value(&q.until)); }
                span.muted { "(UTC)" }
            }
        }
    }
}

fn tabs(q: &RunsQuery, current: Option<RunStatus>, counts: &RunCounts) -> Markup {
    // A capped count is a lower bound, and says so.
    let shown = |n: u64, capped: bool| {
        if capped {
            format!("{}+", format::count(n))
        } else {
            format::count(n)
        }
    };
    html! {
        nav.tabs aria-label="Status" {
            a href=(q.link(&[("status", None)])) aria-current=[current.is_none().then_some("page")] {
                "all " span.count { (shown(counts.total, counts.capped)) }
            }
            @for status in RunStatus::ALL {
                a href=(q.link(&[("status", Some(status.as_str()))])) aria-current=[(current == Some(status)).then_some("page")] data-status=(status.as_str()) {
                    (status.as_str()) " " span.count { (shown(counts.get(status), counts.is_capped(status))) }
                }
            }
        }
        @if counts.capped {
            p.muted.small { "Counts stop at " (format::count(counts.cap)) " per status, so that this page stays fast on large tables." }
        }
    }
}

fn table(runs: &[Run], now: DateTime<Utc>) -> Markup {
    html! {
        @if runs.is_empty() {
            p.empty { "No runs match." }
        } @else {
            table.runs {
                thead { tr { th { "Run" } th { "Workflow" } th { "Queue" } th { "Status" } th { "Attempts" } th { "Created" } th { "Duration" } th { "Parent" } } }
                tbody {
                    @for run in runs {
                        tr data-run=(run.id) {
                            td { a href={ "/ui/runs/" (run.id) } { (format::short_id(&run.id)) } }
                            td { (run.workflow) }
                            td { (run.queue) }
                            td { (format::status(run.status)) }
                            td.num { (run.attempts) }
                            td { (format::time(run.created_at, now)) }
                            td { (run_duration(run, now)) }
                            td { @if let Some(parent) = run.parent_id { a href={ "/ui/runs/" (parent) } { (format::short_id(&parent)) } } }
                        }
                    }
                }
            }
        }
    }
}

/// How long a run ran: start to end, or to now while it has not ended.
pub(crate) fn run_duration(run: &Run, now: DateTime<Utc>) -> Markup {
    match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => html! { (format::duration(end - start)) },
        (Some(start), None) => html! { span.muted { (format::duration(now - start)) " so far" } },
        _ => html! { span.muted { "–" } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_are_no_filter_and_bad_ones_are_refused() {
        let q = RunsQuery {
            status: Some(String::new()),
            workflow: Some("  greet ".to_owned()),
            ..RunsQuery::default()
        };
        let f = q.filter(Utc::now()).expect("a filter");
        assert_eq!(f.status, None);
        assert_eq!(f.workflow.as_deref(), Some("greet"));
        let bad = RunsQuery {
            status: Some("done".to_owned()),
            ..RunsQuery::default()
        };
        assert!(bad.filter(Utc::now()).is_err());
        let bad = RunsQuery {
            parent: Some("nope".to_owned()),
            ..RunsQuery::default()
        };
        assert!(bad.filter(Utc::now()).is_err());
    }

    #[test]
    fn the_later_of_since_and_from_wins() {
        let now = Utc::now();
        let q = RunsQuery {
            since: Some("1h".to_owned()),
            from: Some("2000-01-01T00:00".to_owned()),
            ..RunsQuery::default()
        };
        let f = q.filter(now).expect("a filter");
        assert_eq!(f.created_after, Some(now - TimeDelta::hours(1)));
    }

    #[test]
    fn links_keep_the_other_filters_and_drop_the_cursor() {
        let q = RunsQuery {
            workflow: Some("greet".to_owned()),
            status: Some("failed".to_owned()),
            cursor: Some("x".to_owned()),
            ..RunsQuery::default()
        };
        assert_eq!(q.link(&[("status", None)]), "/ui?workflow=greet");
        assert_eq!(
            q.link(&[("status", Some("running"))]),
            "/ui?workflow=greet&status=running"
        );
        assert_eq!(RunsQuery::default().link(&[]), "/ui");
    }
}
