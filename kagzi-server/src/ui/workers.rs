//! The workers page and the queues page.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use kagzi_proto::{WorkerFilter, WorkerStatus};
use maud::html;

use super::error::Result;
use super::format;
use super::layout::{self, Nav};
use crate::api;
use crate::api::extract::Query as ApiQuery;
use crate::state::AppState;

/// The most workers the page lists.
const MAX_LISTED: u32 = 1000;

/// `GET /ui/workers`.
pub(crate) async fn workers_page(State(state): State<AppState>) -> Result<Response> {
    let filter = WorkerFilter {
        limit: Some(MAX_LISTED),
        ..WorkerFilter::default()
    };
    let page = api::workers::list(State(state.clone()), ApiQuery(filter))
        .await?
        .0;
    let now = Utc::now();
    let online = page
        .workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Online)
        .count();
    let login = super::session::login_enabled(&state);
    let body = html! {
        div #workers data-refresh="2000" {
            h1 { "Workers " span.muted { "· " (online) " online of " (page.workers.len()) } }
            @if page.workers.is_empty() {
                p.empty { "No worker has registered." }
            } @else {
                table.workers {
                    thead { tr { th { "Worker" } th { "Status" } th { "Queue" } th { "Workflows" } th { "Runs held" } th { "Build" } th { "Host" } th { "Last heartbeat" } th { "Registered" } } }
                    tbody {
                        @for w in &page.workers {
                            @let is_online = w.status == WorkerStatus::Online;
                            tr.offline[!is_online] {
                                td { (format::short_id(&w.id)) }
                                td { @if is_online { span.badge.st-completed { "online" } } @else { span.badge.st-cancelled { "offline" } } }
                                td { (w.queue) }
                                td { (w.workflows.join(", ")) }
                                td.num { (w.runs_held) " / " (w.capacity) }
                                td {
                                    @if let Some(build) = &w.build_id { code { (build) } }
                                    @if !w.pinned_workflows.is_empty() { span.muted { " pins " (w.pinned_workflows.join(", ")) } }
                                }
                                td { (w.hostname.clone().unwrap_or_default()) }
                                td { (format::time(w.last_heartbeat_at, now)) }
                                td { (format::time(w.registered_at, now)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Workers", Nav::Workers, login, body).into_response())
}

/// `GET /ui/queues`.
pub(crate) async fn queues_page(State(state): State<AppState>) -> Result<Response> {
    let list = api::queues::list(State(state.clone())).await?.0;
    let now = list.now;
    let login = super::session::login_enabled(&state);
    let body = html! {
        div #queues data-refresh="2000" {
            h1 { "Queues" }
            p.muted { "Per queue and workflow, the runs that have not ended and the online workers that can take them." }
            @if list.queues.is_empty() {
                p.empty { "No run is waiting or running, and no worker is online." }
            } @else {
                table.queues {
                    thead { tr { th { "Queue" } th { "Workflow" } th { "Due now" } th { "Oldest due for" } th { "Due later" } th { "Running" } th { "Suspended" } th { "Workers" } } }
                    tbody {
                        @for q in &list.queues {
                            tr.stuck[q.due > 0 && q.workers == 0] {
                                td { a href={ "/ui?queue=" (format::path_segment(&q.queue)) } { (q.queue) } }
                                td { a href={ "/ui?workflow=" (format::path_segment(&q.workflow)) "&queue=" (format::path_segment(&q.queue)) } { (q.workflow) } }
                                td.num { (format::count(q.due)) }
                                td { @if let Some(at) = q.oldest_due_at { (format::duration(now - at)) } @else { span.muted { "–" } } }
                                td.num { (format::count(q.scheduled)) }
                                td.num { (format::count(q.running)) }
                                td.num { (format::count(q.suspended)) }
                                td.num { (q.workers) @if q.due > 0 && q.workers == 0 { " " span.badge.st-failed { "no worker" } } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page("Queues", Nav::Queues, login, body).into_response())
}
