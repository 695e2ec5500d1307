//! `/v1/runs`: start, read, list, wait for and cancel workflow runs.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Problem, Result};
use super::extract::{Json, Path, Query, check_payload, whole};
use crate::model::{RetryPolicy, Run, RunId, RunStatus, ScheduleId, Step};
use crate::state::AppState;
use crate::store::{NewRun, RunFilter};

/// The longest a result long-poll waits.
const MAX_RESULT_WAIT: Duration = Duration::from_secs(60);
/// The longest name (workflow, queue, step key) accepted, in characters.
pub(crate) const MAX_NAME_LEN: usize = 255;
/// The longest start delay accepted: ten years, in milliseconds.
const MAX_DELAY_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start, list))
        .routes(routes!(show))
        .routes(routes!(steps, super::reports::step))
        .routes(routes!(result))
        .routes(routes!(cancel))
        .routes(routes!(signal))
        .routes(routes!(super::reports::receive))
        .routes(routes!(super::reports::suspend))
        .routes(routes!(super::reports::complete))
        .routes(routes!(super::reports::fail))
}

/// `POST /v1/runs` body: which workflow to run, on which queue, with what input.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"workflow": "greet", "input": {"name": "World"}}))]
pub(crate) struct StartRun {
    /// The name the workflow function is registered under on the workers.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        example = "greet"
    )]
    workflow: String,
    /// The queue the run waits on; workers poll one queue each.
    #[serde(default = "default_queue")]
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        default = "default",
        example = "default"
    )]
    queue: String,
    /// The workflow's input: any JSON value (default `null`), at most the payload limit
    /// (2 MiB by default) as JSON.
    #[serde(default)]
    #[schema(example = json!({"name": "World"}))]
    input: Value,
    /// How many times a failed run is retried, with exponential backoff.
    #[serde(default, deserialize_with = "whole::u31")]
    #[schema(default = 0, maximum = 2147483647, example = 3)]
    retries: u32,
    /// Start no earlier than this many milliseconds from now (at most ten years).
    #[serde(default, deserialize_with = "whole::u63")]
    #[schema(default = 0, maximum = 315360000000_u64, example = 0)]
    delay_ms: u64,
    /// A start with a key that an earlier start used returns that run (200) instead of
    /// creating one; with a different workflow or input it is a 409. A key is kept for the
    /// server's idempotency window (`KAGZI_IDEMPOTENCY_WINDOW_MS`, default 24 hours) after
    /// the run it started was created; a child run's key for good.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 255, example = "order-7")]
    idempotency_key: Option<String>,
    /// The run fails with a timeout once this many milliseconds passed since the start,
    /// whatever it is doing (at most ten years).
    #[serde(default, deserialize_with = "whole::opt_u63")]
    #[schema(maximum = 315360000000_u64, example = 60000)]
    timeout_ms: Option<u64>,
    /// How a failed run is retried; overrides `retries`.
    #[serde(default)]
    retry_policy: Option<RetryPolicy>,
    /// The run starting this one as its child (set by workers).
    #[serde(default)]
    parent_id: Option<RunId>,
}

fn default_queue() -> String {
    "default".to_owned()
}

/// `POST /v1/runs` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "status": "pending"}))]
pub(crate) struct Started {
    /// The new run's id.
    id: RunId,
    /// `pending` for a new run that waits for a worker, `running` for one handed straight to
    /// a worker that was waiting for it; for the run an earlier start with the same
    /// idempotency key made, its status now.
    status: RunStatus,
}

/// Checks a workflow, queue or step name: not blank, at most [`MAX_NAME_LEN`] characters.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(ApiError::InvalidBody(format!("{what} must not be empty")));
    }
    if name.contains('\0') {
        return Err(ApiError::InvalidBody(format!(
            "{what} must not contain U+0000 (the NUL character)"
        )));
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(ApiError::InvalidBody(format!(
            "{what} is {len} characters long; the limit is {MAX_NAME_LEN}"
        )));
    }
    Ok(())
}

/// Starts a run of a workflow. The run waits as `pending` until a worker of its queue that
/// can run the workflow claims it.
#[utoipa::path(
    post,
    path = "/v1/runs",
    tag = "runs",
    operation_id = "start_run",
    request_body = StartRun,
    responses(
        (status = 201, description = "The run was started.", body = Started),
        (status = 200, description = "A run with this idempotency key already exists: that run.", body = Started),
        (status = 404, description = "`parent_id` names no run.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The idempotency key belongs to a run of another workflow or input.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn start(
    State(state): State<AppState>,
    Json(req): Json<StartRun>,
) -> Result<(StatusCode, Json<Started>)> {
    let (status, started) = start_run(&state, req).await?;
    Ok((status, Json(started)))
}

/// Checks a start and starts the run: 201 with the new run, or 200 with the run an earlier
/// start with the same idempotency key made.
pub(super) async fn start_run(state: &AppState, req: StartRun) -> Result<(StatusCode, Started)> {
    let bytes = check_start(state, &req)?;
    start_checked(state, req, bytes).await
}

/// Checks a start without looking at the database; answers with the bytes its input takes.
pub(super) fn check_start(state: &AppState, req: &StartRun) -> Result<usize> {
    check_name("workflow", &req.workflow)?;
    check_name("queue", &req.queue)?;
    let bytes = check_payload("input", &req.input, state.config.max_payload_bytes)?;
    if req.delay_ms > MAX_DELAY_MS {
        return Err(ApiError::InvalidBody(format!(
            "delay_ms must be at most {MAX_DELAY_MS} (ten years), not {}",
            req.delay_ms
        )));
    }
    if let Some(key) = &req.idempotency_key {
        check_name("idempotency_key", key)?;
    }
    if let Some(timeout) = req.timeout_ms.filter(|ms| *ms > MAX_DELAY_MS) {
        return Err(ApiError::InvalidBody(format!(
            "timeout_ms must be at most {MAX_DELAY_MS} (ten years), not {timeout}"
        )));
    }
    if req
        .retry_policy
        .as_ref()
        .is_some_and(|p| p.max_attempts == 0)
    {
        return Err(ApiError::InvalidBody(
            "retry_policy.max_attempts must be at least 1".to_owned(),
        ));
    }
    if let Some(policy) = &req.retry_policy
        && !(policy.backoff_coefficient.is_finite() && policy.backoff_coefficient >= 1.0)
    {
        return Err(ApiError::InvalidBody(
            "retry_policy.backoff_coefficient must be a number of at least 1".to_owned(),
        ));
    }
    Ok(bytes)
}

/// Starts a run that [`check_start`] accepted (`bytes`: its input's size).
pub(super) async fn start_checked(
    state: &AppState,
    req: StartRun,
    bytes: usize,
) -> Result<(StatusCode, Started)> {
    if let Some(parent) = req.parent_id {
        match state.store.get_run(parent).await {
            Ok(_) => {}
            Err(crate::store::Error::NotFound(_)) => {
                return Err(ApiError::NotFound(format!("parent run {parent} not found")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let now = Utc::now();
    let after = |ms: u64| {
        let offset = chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX));
        now.checked_add_signed(offset).unwrap_or(now)
    };
    let new = NewRun {
        workflow: req.workflow,
        queue: req.queue,
        input: req.input,
        retries: req.retries,
        available_at: after(req.delay_ms),
        parent_id: req.parent_id,
        idempotency_key: req.idempotency_key,
        idempotency_cutoff: now.checked_sub_signed(chrono::Duration::milliseconds(
            i64::try_from(state.config.idempotency_window_ms).unwrap_or(i64::MAX),
        )),
        deadline_at: req.timeout_ms.map(after),
        retry_policy: req.retry_policy,
        claim: None,
    };
    let workflow = new.workflow.clone();
    let created = state.reports.starts.submit(new, bytes).await?;
    if created.existing {
        let run = state.store.get_run(created.id).await?;
        return Ok((
            StatusCode::OK,
            Started {
                id: run.id,
                status: run.status,
            },
        ));
    }
    tracing::debug!(run_id = %created.id, %workflow, "run started");
    Ok((
        StatusCode::CREATED,
        Started {
            id: created.id,
            // Running when it was handed straight to a waiting worker.
            status: if created.claimed {
                RunStatus::Running
            } else {
                RunStatus::Pending
            },
        },
    ))
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only runs of this workflow.
    #[param(example = "greet")]
    workflow: Option<String>,
    /// Only runs on this queue.
    #[param(example = "default")]
    queue: Option<String>,
    /// Only runs in this status.
    status: Option<RunStatus>,
    /// Only runs started by this schedule.
    schedule_id: Option<Uuid>,
    /// At most this many runs (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000, default = 50)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    parent_id: Option<Uuid>,
}

/// `GET /v1/runs` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"runs": [], "next_cursor": null}))]
pub(crate) struct RunPage {
    /// The runs, newest first.
    pub(crate) runs: Vec<Run>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    pub(crate) next_cursor: Option<RunId>,
}

/// Lists runs, newest first, one page at a time.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    operation_id = "list_runs",
    params(ListQuery),
    responses((status = 200, description = "One page of runs.", body = RunPage)),
)]
async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<RunPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    for (name, value) in [("workflow", &q.workflow), ("queue", &q.queue)] {
        if value.as_ref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "{name} must not contain U+0000 (the NUL character)"
            )));
        }
    }
    let filter = RunFilter {
        workflow: q.workflow,
        queue: q.queue,
        status: q.status,
        parent_id: q.parent_id.map(RunId),
        schedule_id: q.schedule_id.map(ScheduleId),
        before: q.cursor.map(RunId),
        limit: limit + 1,
    };
    let mut runs = state.store.list_runs(&filter).await?;
    let next_cursor = super::next_page(&mut runs, limit, |r| r.id);
    Ok(Json(RunPage { runs, next_cursor }))
}

/// Reads one run as it stands now.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    operation_id = "get_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses((status = 200, description = "The run.", body = Run)),
)]
async fn show(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Run>> {
    Ok(Json(state.store.get_run(RunId(id)).await?))
}

/// `GET /v1/runs/{id}/steps` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"steps": [{"key": "greet", "position": 0, "status": "completed", "output": "Hello, World!", "error": null, "attempts": 1, "created_at": "2026-11-26T09:00:00.020Z", "finished_at": "2026-11-26T09:00:00.020Z"}]}))]
pub(crate) struct StepList {
    /// The run's journal, in position order.
    steps: Vec<Step>,
}

/// Lists the run's recorded steps (its journal), in position order.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/steps",
    tag = "runs",
    operation_id = "list_steps",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses((status = 200, description = "The run's steps.", body = StepList)),
)]
async fn steps(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<StepList>> {
    Ok(Json(StepList {
        steps: state.store.list_steps(RunId(id)).await?,
    }))
}

/// `GET /v1/runs/{id}/result` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ResultQuery {
    /// How long to wait for the run to end, in milliseconds (default 30000, at most 60000).
    #[param(default = 30000, maximum = 60000, example = 5000)]
    timeout_ms: Option<u64>,
}

/// Waits until the run has ended (completed, failed or cancelled) or the timeout passes,
/// then answers with the run as it stands: check its `status`.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/result",
    tag = "runs",
    operation_id = "wait_for_run",
    params(("id" = Uuid, Path, description = "The run's id."), ResultQuery),
    responses((status = 200, description = "The run, ended or (after the timeout) not yet.", body = Run)),
)]
async fn result(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Query(q): Query<ResultQuery>,
) -> Result<Json<Run>> {
    let id = RunId(id);
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(30_000));
    if wait > MAX_RESULT_WAIT {
        return Err(ApiError::BadRequest(format!(
            "timeout_ms must be at most {}",
            MAX_RESULT_WAIT.as_millis()
        )));
    }
    let wait = wait.min(state.config.long_poll_max());
    let deadline = tokio::time::Instant::now() + wait;
    let recheck = Duration::from_millis(state.config.poll_recheck_ms);
    let subscription = state.wakeups.runs.subscribe(id);
    loop {
        let notified = subscription.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A run that ended on this server comes with its wake-up; otherwise read it.
        let run = match subscription.value() {
            Some(run) => run,
            None => state.store.get_run(id).await?,
        };
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

/// Cancels a run that has not ended. A running run is stopped by its worker at the next
/// heartbeat.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancel",
    tag = "runs",
    operation_id = "cancel_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The run, now cancelled.", body = Run),
        (status = 409, description = "The run has already ended.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn cancel(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Run>> {
    let run = state.store.cancel_run(RunId(id), Utc::now()).await?;
    tracing::info!(run_id = %run.id, "run cancelled");
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/signals/{name}` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "name": "approve"}))]
pub(crate) struct SignalSent {
    run_id: RunId,
    name: String,
}

/// Sends a signal (the JSON body is its payload) to a run that has not ended. Signals are
/// kept until the run receives them, in the order they arrived; a run waiting for one wakes.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/signals/{name}",
    tag = "runs",
    operation_id = "send_signal",
    params(
        ("id" = Uuid, Path, description = "The run's id."),
        ("name" = String, Path, description = "The signal's name."),
    ),
    request_body(content = serde_json::Value, description = "The signal's payload: any JSON value.", example = json!({"approved": true})),
    responses(
        (status = 202, description = "The signal is kept for the run.", body = SignalSent),
        (status = 409, description = "The run has already ended.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn signal(
    State(state): State<AppState>,
    Path((id, name)): Path<(Uuid, String)>,
    Json(payload): Json<Value>,
) -> Result<(StatusCode, Json<SignalSent>)> {
    check_name("signal name", &name)?;
    check_payload("signal payload", &payload, state.config.max_payload_bytes)?;
    state
        .store
        .send_signal(RunId(id), &name, &payload, Utc::now())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignalSent {
            run_id: RunId(id),
            name,
        }),
    ))
}
