//! `/v1/workers`: register, heartbeat, long-poll for work, deregister.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use kagzi_proto::{
    HeartbeatAnswer, HeartbeatBody, MAX_LONG_POLL_MS, MAX_POLL_BATCH, MAX_WORKFLOWS, PollAnswer,
    PollBody, RegisterBody, Registered, Worker, WorkerFilter, WorkerPage,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, Query};
use crate::model::WorkerId;
use crate::state::AppState;
use crate::store::NewWorker;

/// The longest a poll waits for work.
const MAX_POLL_WAIT: Duration = Duration::from_millis(MAX_LONG_POLL_MS);
/// When claimable-looking runs are held by a concurrent claim, wait this long before looking
/// again rather than spinning.
const CONTENDED_RETRY: Duration = Duration::from_millis(10);

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(deregister))
        .routes(routes!(heartbeat))
        .routes(routes!(poll))
}

/// Register a worker.
///
/// A worker names the queue it polls, the workflows it runs and how many runs it executes at
/// once; the answer gives its id and how often to heartbeat.
#[utoipa::path(
    post,
    path = "/v1/workers",
    tag = "workers",
    operation_id = "register_worker",
    request_body = RegisterBody,
    responses((status = 201, description = "The worker is registered.", body = Registered)),
)]
async fn register(
    State(state): State<AppState>,
    Json(body): Json<RegisterBody>,
) -> Result<(StatusCode, Json<Registered>)> {
    super::runs::check_name("queue", &body.queue)?;
    if body.workflows.is_empty() {
        return Err(ApiError::InvalidBody(
            "workflows must name at least one workflow".to_owned(),
        ));
    }
    if body.workflows.len() > MAX_WORKFLOWS {
        return Err(ApiError::InvalidBody(format!(
            "workflows must name at most {MAX_WORKFLOWS} workflows"
        )));
    }
    for workflow in &body.workflows {
        super::runs::check_name("each workflow", &workflow.0)?;
    }
    if body.pinned_workflows.len() > MAX_WORKFLOWS {
        return Err(ApiError::InvalidBody(format!(
            "pinned_workflows must name at most {MAX_WORKFLOWS} workflows"
        )));
    }
    for workflow in &body.pinned_workflows {
        super::runs::check_name("each pinned workflow", &workflow.0)?;
    }
    if let Some(hostname) = &body.hostname
        && (hostname.contains('\0') || hostname.chars().count() > super::runs::MAX_NAME_LEN)
    {
        return Err(ApiError::InvalidBody(format!(
            "hostname must be at most {} characters long, without U+0000",
            super::runs::MAX_NAME_LEN
        )));
    }
    if let Some(build) = &body.build_id {
        super::runs::check_name("build_id", build)?;
    }
    if body.capacity == 0 {
        return Err(ApiError::InvalidBody(
            "capacity must be at least 1".to_owned(),
        ));
    }
    // A pin needs a build to pin to and a workflow this worker runs; others do nothing.
    let pinned_workflows = body
        .pinned_workflows
        .into_iter()
        .filter(|p| body.build_id.is_some() && body.workflows.iter().any(|w| w.0 == p.0))
        .map(|w| w.0)
        .collect();
    let new = NewWorker {
        queue: body.queue,
        workflows: body.workflows.into_iter().map(|w| w.0).collect(),
        capacity: body.capacity,
        hostname: body.hostname,
        build_id: body.build_id,
        pinned_workflows,
    };
    let id = state.store.register_worker(&new, Utc::now()).await?;
    tracing::info!(worker_id = %id, queue = %new.queue, "worker registered");
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            id,
            heartbeat_interval_ms: state.config.heartbeat_ms,
            lease_ms: state.config.lease_ms,
        }),
    ))
}

/// List workers.
///
/// Registered workers, newest first, one page at a time: the queue each polls, its
/// workflows and capacity, the runs it holds now, its last heartbeat and whether it is
/// online. Pass the answer's `next_cursor` as `cursor` for the next (older) page.
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "workers",
    operation_id = "list_workers",
    params(WorkerFilter),
    responses((status = 200, description = "One page of workers.", body = WorkerPage)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<WorkerFilter>,
) -> Result<Json<WorkerPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    if q.queue.as_ref().is_some_and(|v| v.contains('\0')) {
        return Err(ApiError::BadRequest(
            "queue must not contain U+0000 (the NUL character)".to_owned(),
        ));
    }
    let filter = crate::store::WorkerFilter {
        queue: q.queue,
        status: q.status,
        before: q.cursor,
        limit: limit + 1,
    };
    let mut workers = state.store.list_workers(&filter).await?;
    let next_cursor = super::next_page(&mut workers, limit, |w| w.worker.id);
    Ok(Json(WorkerPage {
        workers: workers.into_iter().map(Worker::from).collect(),
        next_cursor,
    }))
}

/// Heartbeat (worker).
///
/// Tells the server the worker is alive and extends the leases of the runs it names; the answer
/// lists the runs it no longer holds (cancelled, reclaimed, ended), which it must stop.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/heartbeat",
    tag = "workers",
    operation_id = "heartbeat",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    request_body = HeartbeatBody,
    responses((status = 200, description = "The leases are extended; `lost` names the runs to stop.", body = HeartbeatAnswer)),
)]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<HeartbeatBody>,
) -> Result<Json<HeartbeatAnswer>> {
    let now = Utc::now();
    let lease_until = now + chrono::Duration::from_std(state.config.lease()).unwrap_or_default();
    let lost = state
        .store
        .heartbeat(WorkerId(id), &body.runs, lease_until, now)
        .await?;
    Ok(Json(HeartbeatAnswer { lost }))
}

/// Poll for runs (worker).
///
/// Claims up to `max` due runs for the worker. When none is due it waits, up to `timeout_ms`,
/// until one may be (a new run, a delayed run coming due) and answers the moment it arrives.
/// Each claimed run comes with a lease token for its reports and its journal.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/poll",
    tag = "workers",
    operation_id = "poll",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    request_body = PollBody,
    responses((status = 200, description = "The claimed runs (possibly none).", body = PollAnswer)),
)]
async fn poll(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<PollBody>,
) -> Result<Json<PollAnswer>> {
    if !(1..=MAX_POLL_BATCH).contains(&body.max) {
        return Err(ApiError::InvalidBody(format!(
            "max must be between 1 and {MAX_POLL_BATCH}, not {}",
            body.max
        )));
    }
    let wait = Duration::from_millis(body.timeout_ms);
    if wait > MAX_POLL_WAIT {
        return Err(ApiError::InvalidBody(format!(
            "timeout_ms must be at most {}",
            MAX_POLL_WAIT.as_millis()
        )));
    }
    let wait = wait.min(state.config.long_poll_max());
    let worker = state.workers.get(&*state.store, WorkerId(id)).await?;
    let deadline = tokio::time::Instant::now() + wait;
    let recheck = Duration::from_millis(state.config.poll_recheck_ms);
    let lease = chrono::Duration::from_std(state.config.lease()).unwrap_or_default();
    let subscription = state.wakeups.queues.subscribe(worker.queue.clone());
    let _waiting = crate::meter::Waiting::start("claim");
    loop {
        let notified = subscription.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Utc::now();
        let (runs, next_due) = state
            .store
            .claim_or_next_due(&worker, body.max, now + lease, now)
            .await?;
        let instant = tokio::time::Instant::now();
        if !runs.is_empty() || instant >= deadline || state.shutdown.is_cancelled() {
            return Ok(Json(PollAnswer { runs }));
        }
        // Nothing to claim: new starts for this worker may now be handed to it directly.
        let waiting = state.dispatcher.wait(Arc::clone(&worker), body.max);
        let mut wake_at = deadline.min(instant + recheck);
        if let Some(due) = next_due {
            let until_due = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            wake_at = wake_at.min(instant + until_due.max(CONTENDED_RETRY));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake_at) => {}
            () = state.shutdown.cancelled() => {}
            () = waiting.delivered() => {}
        }
        let runs = waiting.close().await;
        if !runs.is_empty() {
            return Ok(Json(PollAnswer { runs }));
        }
    }
}

/// Deregister a worker.
///
/// The worker is gone: the runs it still held go back to their queue at once, for another
/// worker.
#[utoipa::path(
    delete,
    path = "/v1/workers/{id}",
    tag = "workers",
    operation_id = "deregister_worker",
    params(("id" = Uuid, Path, description = "The worker's id.")),
    responses((status = 204, description = "The worker is gone.")),
)]
async fn deregister(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode> {
    let released = state
        .store
        .deregister_worker(WorkerId(id), Utc::now())
        .await?;
    tracing::info!(worker_id = %id, released, "worker deregistered");
    Ok(StatusCode::NO_CONTENT)
}
