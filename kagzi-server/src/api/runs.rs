//! `/v1/runs`: start, read, list, wait for and cancel workflow runs.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, Query, check_payload};
use crate::model::{Run, RunId, RunStatus, ScheduleId, Step};
use crate::state::AppState;
use crate::store::{NewRun, RunFilter};

/// The longest a result long-poll waits.
const MAX_RESULT_WAIT: Duration = Duration::from_secs(60);
/// The longest name (workflow, queue) accepted.
pub(crate) const MAX_NAME_LEN: usize = 255;

/// The routes of this resource.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(start).get(list))
        .route("/v1/runs/{id}", get(show))
        .route("/v1/runs/{id}/steps", get(steps).post(super::reports::step))
        .route("/v1/runs/{id}/result", get(result))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/complete", post(super::reports::complete))
        .route("/v1/runs/{id}/fail", post(super::reports::fail))
}

/// `POST /v1/runs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRun {
    workflow: String,
    #[serde(default = "default_queue")]
    queue: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    retries: u32,
    /// Start no earlier than this many milliseconds from now.
    #[serde(default)]
    delay_ms: u64,
}

fn default_queue() -> String {
    "default".to_owned()
}

/// `POST /v1/runs` answer.
#[derive(Debug, Serialize)]
pub(crate) struct Started {
    id: RunId,
    status: RunStatus,
}

/// Checks a workflow or queue name.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(ApiError::InvalidBody(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ApiError::InvalidBody(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

async fn start(
    State(state): State<AppState>,
    Json(req): Json<StartRun>,
) -> Result<(StatusCode, Json<Started>)> {
    check_name("workflow", &req.workflow)?;
    check_name("queue", &req.queue)?;
    check_payload("input", &req.input, state.config.max_payload_bytes)?;
    let now = Utc::now();
    let delay = chrono::Duration::milliseconds(i64::try_from(req.delay_ms).unwrap_or(i64::MAX));
    let new = NewRun {
        workflow: req.workflow,
        queue: req.queue,
        input: req.input,
        retries: req.retries,
        available_at: now.checked_add_signed(delay).unwrap_or(now),
    };
    let id = state.store.create_run(&new, now).await?;
    tracing::debug!(run_id = %id, workflow = %new.workflow, "run started");
    Ok((
        StatusCode::CREATED,
        Json(Started {
            id,
            status: RunStatus::Pending,
        }),
    ))
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    workflow: Option<String>,
    queue: Option<String>,
    status: Option<RunStatus>,
    /// Only runs started by this schedule.
    schedule_id: Option<Uuid>,
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

/// `GET /v1/runs` answer.
#[derive(Debug, Serialize)]
pub(crate) struct RunPage {
    runs: Vec<Run>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: Option<RunId>,
}

async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<RunPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let filter = RunFilter {
        workflow: q.workflow,
        queue: q.queue,
        status: q.status,
        schedule_id: q.schedule_id.map(ScheduleId),
        before: q.cursor.map(RunId),
        limit: limit + 1,
    };
    let mut runs = state.store.list_runs(&filter).await?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(RunPage { runs, next_cursor }))
}

async fn show(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Run>> {
    Ok(Json(state.store.get_run(RunId(id)).await?))
}

/// `GET /v1/runs/{id}/steps` answer.
#[derive(Debug, Serialize)]
pub(crate) struct StepList {
    steps: Vec<Step>,
}

async fn steps(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<StepList>> {
    Ok(Json(StepList {
        steps: state.store.list_steps(RunId(id)).await?,
    }))
}

/// `GET /v1/runs/{id}/result` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultQuery {
    /// How long to wait for the run to end, in milliseconds (at most 60000).
    timeout_ms: Option<u64>,
}

/// Waits until the run is terminal or the timeout passes, then answers with the run as it
/// stands; woken by the run's end notification, not by polling.
async fn result(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(q): Query<ResultQuery>,
) -> Result<Json<Run>> {
    let id = RunId(id);
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(30_000)).min(MAX_RESULT_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let recheck = Duration::from_millis(state.config.poll_recheck_ms);
    let subscription = state.wakeups.runs.subscribe(id);
    loop {
        let notified = subscription.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let run = state.store.get_run(id).await?;
        let now = tokio::time::Instant::now();
        if run.status.is_terminal() || now >= deadline {
            return Ok(Json(run));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline.min(now + recheck)) => {}
            () = state.shutdown.cancelled() => return Ok(Json(run)),
        }
    }
}

async fn cancel(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Run>> {
    let run = state.store.cancel_run(RunId(id), Utc::now()).await?;
    tracing::info!(run_id = %run.id, "run cancelled");
    Ok(Json(run))
}
