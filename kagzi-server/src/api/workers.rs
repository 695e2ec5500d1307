//! `/v1/workers`: register, heartbeat, long-poll for work, deregister.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, post};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path};
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
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/workers", post(register))
        .route("/v1/workers/{id}", delete(deregister))
        .route("/v1/workers/{id}/heartbeat", post(heartbeat))
        .route("/v1/workers/{id}/poll", post(poll))
}

/// `POST /v1/workers` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterBody {
    queue: String,
    workflows: Vec<String>,
    capacity: u32,
    #[serde(default)]
    hostname: Option<String>,
}

/// `POST /v1/workers` answer.
#[derive(Debug, Serialize)]
pub(crate) struct Registered {
    id: WorkerId,
    /// Heartbeat this often.
    heartbeat_interval_ms: u64,
    /// A claim's lease lasts this long without a heartbeat.
    lease_ms: u64,
}

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
    for workflow in &body.workflows {
        super::runs::check_name("each workflow", workflow)?;
    }
    if body.capacity == 0 {
        return Err(ApiError::InvalidBody(
            "capacity must be at least 1".to_owned(),
        ));
    }
    let new = NewWorker {
        queue: body.queue,
        workflows: body.workflows,
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeartbeatBody {
    #[serde(default)]
    runs: Vec<Lease>,
}

/// `POST /v1/workers/{id}/heartbeat` answer.
#[derive(Debug, Serialize)]
pub(crate) struct HeartbeatAnswer {
    /// Runs the worker named but no longer holds (cancelled, reclaimed, ended): stop them.
    lost: Vec<RunId>,
}

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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PollBody {
    /// Claim at most this many runs.
    max: u32,
    /// Wait at most this long for work, in milliseconds (at most 60000).
    #[serde(default = "default_poll_ms")]
    timeout_ms: u64,
}

fn default_poll_ms() -> u64 {
    30_000
}

/// `POST /v1/workers/{id}/poll` answer.
#[derive(Debug, Serialize)]
pub(crate) struct PollAnswer {
    runs: Vec<Task>,
}

/// Claims due runs for the worker; when none is due, waits until a notification says one
/// may be (or the next delayed run comes due), up to the timeout.
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
    let worker = state.store.get_worker(WorkerId(id)).await?;
    let wait = Duration::from_millis(body.timeout_ms).min(MAX_POLL_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let recheck = Duration::from_millis(state.config.poll_recheck_ms);
    let lease = chrono::Duration::from_std(state.config.lease()).unwrap_or_default();
    let subscription = state.wakeups.queues.subscribe(worker.queue.clone());
    loop {
        let notified = subscription.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Utc::now();
        let runs = state
            .store
            .claim(&worker, body.max, now + lease, now)
            .await?;
        let instant = tokio::time::Instant::now();
        if !runs.is_empty() || instant >= deadline || state.shutdown.is_cancelled() {
            return Ok(Json(PollAnswer { runs }));
        }
        let mut wake_at = deadline.min(instant + recheck);
        if let Some(due) = state.store.next_due(&worker).await? {
            let until_due = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            wake_at = wake_at.min(instant + until_due.max(CONTENDED_RETRY));
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(wake_at) => {}
            () = state.shutdown.cancelled() => {}
        }
    }
}

async fn deregister(State(state): State<AppState>, Path(id): Path<Uuid>) -> Result<StatusCode> {
    let released = state
        .store
        .deregister_worker(WorkerId(id), Utc::now())
        .await?;
    tracing::info!(worker_id = %id, released, "worker deregistered");
    Ok(StatusCode::NO_CONTENT)
}
