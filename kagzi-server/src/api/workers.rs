//! `/v1/workers`: register, heartbeat, long-poll for work, deregister.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, whole};
use crate::model::{Lease, RunId, Task, WorkerId};
use crate::state::AppState;
use crate::store::NewWorker;

/// The longest a poll waits for work.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// The most runs one poll claims.
const MAX_POLL_BATCH: u32 = 1000;
/// When claimable-looking runs are held by a concurrent claim, wait this long before looking
/// again rather than spinning.
const CONTENDED_RETRY: Duration = Duration::from_millis(10);

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(deregister))
        .routes(routes!(heartbeat))
        .routes(routes!(poll))
}

/// `POST /v1/workers` body: what the worker polls and can run.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"queue": "default", "workflows": ["greet"], "capacity": 10, "hostname": "box-1"}))]
pub(crate) struct RegisterBody {
    /// The queue the worker polls.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        example = "default"
    )]
    queue: String,
    /// The workflows the worker can run; polls only claim runs of these.
    #[schema(min_items = 1, max_items = 1000, inline)]
    workflows: Vec<WorkflowName>,
    /// How many runs the worker executes at once.
    #[serde(deserialize_with = "whole::u31")]
    #[schema(minimum = 1, maximum = 2147483647, example = 10)]
    capacity: u32,
    /// The host the worker runs on, for operators.
    #[serde(default)]
    #[schema(max_length = 255, pattern = r"^[^\u0000]*$", example = "box-1")]
    hostname: Option<String>,
}

/// A workflow name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$", example = "greet")]
pub(crate) struct WorkflowName(String);

/// `POST /v1/workers` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b", "heartbeat_interval_ms": 10000, "lease_ms": 30000}))]
pub(crate) struct Registered {
    /// The worker's id, for its polls and heartbeats.
    id: WorkerId,
    /// Heartbeat this often.
    heartbeat_interval_ms: u64,
    /// A claim's lease lasts this long without a heartbeat.
    lease_ms: u64,
}

/// Registers a worker: the queue it polls, the workflows it runs and its capacity.
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
    if body.workflows.len() > 1000 {
        return Err(ApiError::InvalidBody(
            "workflows must name at most 1000 workflows".to_owned(),
        ));
    }
    for workflow in &body.workflows {
        super::runs::check_name("each workflow", &workflow.0)?;
    }
    if let Some(hostname) = &body.hostname
        && (hostname.contains('\0') || hostname.chars().count() > super::runs::MAX_NAME_LEN)
    {
        return Err(ApiError::InvalidBody(format!(
            "hostname must be at most {} characters long, without U+0000",
            super::runs::MAX_NAME_LEN
        )));
    }
    if body.capacity == 0 {
        return Err(ApiError::InvalidBody(
            "capacity must be at least 1".to_owned(),
        ));
    }
    let new = NewWorker {
        queue: body.queue,
        workflows: body.workflows.into_iter().map(|w| w.0).collect(),
        capacity: body.capacity,
        hostname: body.hostname,
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

/// `POST /v1/workers/{id}/heartbeat` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"runs": [{"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e"}]}))]
pub(crate) struct HeartbeatBody {
    /// The runs the worker is executing, with their lease tokens: their leases are extended.
    #[serde(default)]
    runs: Vec<Lease>,
}

/// `POST /v1/workers/{id}/heartbeat` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"lost": []}))]
pub(crate) struct HeartbeatAnswer {
    /// Runs the worker named but no longer holds (cancelled, reclaimed, ended): stop them.
    lost: Vec<RunId>,
}

/// Tells the server the worker is alive and extends the leases of the runs it holds.
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

/// `POST /v1/workers/{id}/poll` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max": 10, "timeout_ms": 30000}))]
pub(crate) struct PollBody {
    /// Claim at most this many runs (1 to 1000).
    #[serde(deserialize_with = "whole::u31")]
    #[schema(minimum = 1, maximum = 1000, example = 10)]
    max: u32,
    /// Wait at most this long for work, in milliseconds (default 30000, at most 60000).
    #[serde(default = "default_poll_ms", deserialize_with = "whole::u63")]
    #[schema(default = 30000, maximum = 60000, example = 30000)]
    timeout_ms: u64,
}

fn default_poll_ms() -> u64 {
    30_000
}

/// `POST /v1/workers/{id}/poll` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"runs": [{"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "workflow": "greet", "input": {"name": "World"}, "attempt": 1, "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "lease_expires_at": "2026-11-26T09:00:30Z", "journal": []}]}))]
pub(crate) struct PollAnswer {
    /// The runs claimed for the worker, each with its lease and journal; empty when no run
    /// came due before the timeout.
    runs: Vec<Task>,
}

/// Claims due runs for the worker; when none is due, waits until one may be (a new run, a
/// delayed run coming due), up to the timeout. Each claimed run comes with a lease: report
/// on it with the lease token, and keep it alive with heartbeats.
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

/// Deregisters a worker; the runs it still held go back to their queue at once.
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
