//! `/v1/runs`: start, read, list, wait for and cancel workflow runs.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use kagzi_proto::{
    Problem, ResultQuery, Run, RunCounts, RunFilter, RunPage, RunStatus, SignalList, SignalSent,
    StartRun, Started, StepList,
};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{AnyJson, Json, Path, Query, check_payload};
use crate::model::RunId;
use crate::state::AppState;
use crate::store::NewRun;

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
        .routes(routes!(counts))
        .routes(routes!(show, super::repair::remove))
        .routes(routes!(signals))
        .routes(routes!(steps, super::reports::step))
        .routes(routes!(result))
        .routes(routes!(cancel))
        .routes(routes!(signal))
        .routes(routes!(super::reports::receive))
        .routes(routes!(super::reports::suspend))
        .routes(routes!(super::reports::complete))
        .routes(routes!(super::reports::fail))
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

/// Start a run of a workflow.
///
/// The run waits as `pending` until a worker of its queue that can run the workflow claims it;
/// a worker already waiting for it gets it at once (the answer then says `running`). With an
/// `idempotency_key`, a start repeated within the server's idempotency window returns the same
/// run (200).
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

/// List runs.
///
/// Newest first, one page at a time: pass the answer's `next_cursor` as `cursor` for the next
/// (older) page. Filters combine; without any, every run is listed.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    operation_id = "list_runs",
    params(RunFilter),
    responses((status = 200, description = "One page of runs.", body = RunPage)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<RunFilter>,
) -> Result<Json<RunPage>> {
    let limit = page_limit(q.limit)?;
    let filter = store_filter(q, limit + 1)?;
    let mut runs = state.store.list_runs(&filter).await?;
    let next_cursor = super::next_page(&mut runs, limit, |r| r.id);
    Ok(Json(RunPage {
        runs: runs.into_iter().map(Run::from).collect(),
        next_cursor,
    }))
}

/// A listing's page size: `limit`, 50 by default, refused outside 1 to 1000.
fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    Ok(limit)
}

/// The store's filter for a listing's query `q`, reading at most `limit` runs.
pub(super) fn store_filter(q: RunFilter, limit: u32) -> Result<crate::store::RunFilter> {
    for (name, value) in [
        ("workflow", &q.workflow),
        ("queue", &q.queue),
        ("idempotency_key", &q.idempotency_key),
    ] {
        if value.as_ref().is_some_and(|v| v.contains('\0')) {
            return Err(ApiError::BadRequest(format!(
                "{name} must not contain U+0000 (the NUL character)"
            )));
        }
    }
    Ok(crate::store::RunFilter {
        workflow: q.workflow,
        queue: q.queue,
        status: q.status,
        parent_id: q.parent_id,
        schedule_id: q.schedule_id,
        idempotency_key: q.idempotency_key,
        created_after: q.created_after,
        created_before: q.created_before,
        before: q.cursor,
        limit,
    })
}

/// The most runs of one status that `GET /v1/runs/counts` counts.
const COUNT_CAP: u64 = 10_000;

/// Count runs by status.
///
/// How many runs the filter matches in each status (the filter's `status`, `cursor` and
/// `limit` are ignored). Each count stops at `cap` (10000), so that counting stays fast on
/// a table of millions of runs: a count equal to `cap` means that many or more, and
/// `capped` says so.
#[utoipa::path(
    get,
    path = "/v1/runs/counts",
    tag = "runs",
    operation_id = "count_runs",
    params(RunFilter),
    responses((status = 200, description = "The counts by status.", body = RunCounts)),
)]
pub(crate) async fn counts(
    State(state): State<AppState>,
    Query(q): Query<RunFilter>,
) -> Result<Json<RunCounts>> {
    // A limit is no part of a count, but one given must still be one a listing takes.
    page_limit(q.limit)?;
    let filter = store_filter(q, 0)?;
    Ok(Json(state.store.count_runs(&filter, COUNT_CAP).await?))
}

/// Read a run's signals.
///
/// The signals sent to the run, in the order they were sent (at most the latest 1000):
/// each with its payload, and the step key it was received as, or null while it waits.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/signals",
    tag = "runs",
    operation_id = "list_signals",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses((status = 200, description = "The run's signals.", body = SignalList)),
)]
pub(crate) async fn signals(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<SignalList>> {
    Ok(Json(SignalList {
        signals: state.store.list_signals(RunId(id)).await?,
    }))
}

/// Read a run.
///
/// The run as it stands now: status, input, output or error, attempts, times, and what a
/// suspended run waits for.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    operation_id = "get_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses((status = 200, description = "The run.", body = Run)),
)]
pub(crate) async fn show(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<Json<Run>> {
    Ok(Json(state.store.get_run(RunId(id)).await?.into()))
}

/// Read a run's journal.
///
/// The run's recorded steps, in position order: each with its key, status, output or error,
/// attempts and times.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/steps",
    tag = "runs",
    operation_id = "list_steps",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses((status = 200, description = "The run's steps.", body = StepList)),
)]
pub(crate) async fn steps(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<StepList>> {
    let steps = state.store.list_steps(RunId(id)).await?;
    Ok(Json(StepList {
        steps: steps.into_iter().map(Into::into).collect(),
    }))
}

/// Wait for a run to end.
///
/// A long poll: answers as soon as the run has ended (completed, failed or cancelled), or with
/// the run as it stands once `timeout_ms` passed. Check the answer's `status`.
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
    let _waiting = crate::meter::Waiting::start("result");
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
            return Ok(Json(run.into()));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline.min(now + recheck)) => {}
            () = state.shutdown.cancelled() => return Ok(Json(run.into())),
        }
    }
}

/// Cancel a run.
///
/// Cancels a run that has not ended, and every child run of it. A pending, sleeping or waiting
/// run is cancelled at once; a running one is stopped by its worker at the next heartbeat, and
/// no further step starts.
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
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Run>> {
    let run = state.store.cancel_run(RunId(id), Utc::now()).await?;
    tracing::info!(run_id = %run.id, "run cancelled");
    Ok(Json(run.into()))
}

/// Send a signal to a run.
///
/// The JSON body is the signal's payload. Signals are kept until the run receives them, one at
/// a time in the order they arrived; a run waiting for this signal wakes at once. A run that
/// already ended refuses it (409).
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
pub(crate) async fn signal(
    State(state): State<AppState>,
    Path((id, name)): Path<(Uuid, String)>,
    AnyJson(payload): AnyJson<Value>,
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
