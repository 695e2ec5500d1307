//! Worker reports on a run they hold: a step's outcome, completion, failure. Every report
//! carries the lease token from the claim and is refused with 409 when the lease is gone.

use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, check_payload};
use crate::model::{Run, RunId, Step, StepStatus};
use crate::state::AppState;
use crate::store::StepReport;

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
