//! Worker reports on a run they hold: a step's outcome, completion, failure. Every report
//! carries the lease token from the claim and is refused with 409 when the lease is gone.

use axum::extract::State;
use chrono::DateTime;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, check_payload};
use crate::model::{Run, RunId, Step, StepStatus};
use crate::state::AppState;
use crate::store::{StepReport, Suspend};

/// `POST /v1/runs/{id}/steps` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepBody {
    lease_token: Uuid,
    key: String,
    position: u32,
    status: StepStatus,
    #[serde(default)]
    output: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default = "one")]
    attempts: u32,
}

fn one() -> u32 {
    1
}

/// Records a step outcome; answers with the journal entry as recorded (for a key that was
/// already completed, the earlier record: first write wins).
pub(crate) async fn step(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<StepBody>,
) -> Result<Json<Step>> {
    if body.key.is_empty() || body.key.len() > super::runs::MAX_NAME_LEN {
        return Err(ApiError::InvalidBody(
            "key must be 1 to 255 bytes long".to_owned(),
        ));
    }
    let limit = state.config.max_payload_bytes;
    let (output, error) = match body.status {
        StepStatus::Completed => {
            let output = body.output.unwrap_or(Value::Null);
            check_payload(&format!("the output of step {}", body.key), &output, limit)?;
            (Some(output), None)
        }
        _ => {
            let error = body
                .error
                .ok_or_else(|| ApiError::InvalidBody("a failed step needs an error".to_owned()))?;
            check_payload(&format!("the error of step {}", body.key), &error, limit)?;
            (None, Some(error))
        }
    };
    let report = StepReport {
        key: body.key,
        position: body.position,
        status: body.status,
        output,
        error,
        attempts: body.attempts,
    };
    let step = state
        .store
        .record_step(RunId(id), body.lease_token, &report, Utc::now())
        .await?;
    Ok(Json(step))
}

/// `POST /v1/runs/{id}/complete` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompleteBody {
    lease_token: Uuid,
    #[serde(default)]
    output: Value,
}

/// Completes the run with its output.
pub(crate) async fn complete(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<CompleteBody>,
) -> Result<Json<Run>> {
    check_payload("output", &body.output, state.config.max_payload_bytes)?;
    let run = state
        .store
        .complete_run(RunId(id), body.lease_token, &body.output, Utc::now())
        .await?;
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/fail` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailBody {
    lease_token: Uuid,
    error: String,
    /// False for errors that a retry cannot fix; the run then fails at once.
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

/// Fails the current attempt; the run is retried with backoff while retries remain.
pub(crate) async fn fail(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<FailBody>,
) -> Result<Json<Run>> {
    check_payload("error", &body.error, state.config.max_payload_bytes)?;
    let run = state
        .store
        .fail_run(
            RunId(id),
            body.lease_token,
            &body.error,
            body.retryable,
            state.backoff(),
            Utc::now(),
        )
        .await?;
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/suspend` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SuspendBody {
    lease_token: Uuid,
    /// Wake at this time (a sleep's end, or a timeout for a signal or child).
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    /// Wake when a signal of this name arrives.
    #[serde(default)]
    signal: Option<String>,
    /// Wake when this child run ends.
    #[serde(default)]
    child: Option<RunId>,
}

/// Suspends the run (the worker lets go of it): it sleeps, or waits for a signal or a child.
/// When that already happened, the run is due again at once.
pub(crate) async fn suspend(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<SuspendBody>,
) -> Result<Json<Run>> {
    if body.until.is_none() && body.signal.is_none() && body.child.is_none() {
        return Err(ApiError::InvalidBody(
            "a suspension needs `until`, `signal` or `child`".to_owned(),
        ));
    }
    let suspend = Suspend {
        until: body.until,
        signal: body.signal,
        child: body.child,
    };
    let run = state
        .store
        .suspend_run(RunId(id), body.lease_token, &suspend, Utc::now())
        .await?;
    Ok(Json(run))
}

/// `POST /v1/runs/{id}/signals/{name}/receive` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiveBody {
    lease_token: Uuid,
    key: String,
    position: u32,
}

/// `POST /v1/runs/{id}/signals/{name}/receive` answer.
#[derive(Debug, Serialize)]
pub(crate) struct Received {
    /// The step the signal was recorded as (output `{"payload": ...}`); null when no signal
    /// of that name is waiting.
    step: Option<Step>,
}

/// Takes the oldest waiting signal of a name and records it as the step `key`.
pub(crate) async fn receive(
    State(state): State<AppState>,
    Path((id, name)): Path<(Uuid, String)>,
    Json(body): Json<ReceiveBody>,
) -> Result<Json<Received>> {
    let step = state
        .store
        .receive_signal(
            RunId(id),
            body.lease_token,
            &name,
            &body.key,
            body.position,
            Utc::now(),
        )
        .await?;
    Ok(Json(Received { step }))
}
