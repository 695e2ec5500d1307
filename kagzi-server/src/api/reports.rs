//! Worker reports on a run they hold: a step's outcome, completion, failure. Every report
//! carries the lease token from the claim and is refused with 409 when the lease is gone.

use axum::extract::State;
use chrono::DateTime;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Problem, Result};
use super::extract::{Json, Path, check_payload, whole};
use crate::model::{Run, RunId, Step, StepStatus};
use crate::state::AppState;
use crate::store::{Completion, StepReport, StepWrite, Suspend};

/// `POST /v1/runs/{id}/steps` body: one step's outcome.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e",
    "key": "greet",
    "position": 0,
    "status": "completed",
    "output": "Hello, World!"
}))]
pub(crate) struct StepBody {
    /// The lease token from the poll that claimed the run.
    lease_token: Uuid,
    /// The step key: its name, plus `#n` for the n-th step of that name in the run.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        example = "greet"
    )]
    key: String,
    /// The step's 0-based position in the run, in call order.
    #[serde(deserialize_with = "whole::u31")]
    #[schema(maximum = 2147483647, example = 0)]
    position: u32,
    /// `completed` (with `output`) or `failed` (with `error`).
    status: StepStatus,
    /// The step's result, for a completed step (default `null`).
    #[serde(default)]
    output: Option<Value>,
    /// The step's error, for a failed step (default: a note that it gave none).
    #[serde(default)]
    #[schema(pattern = r"^[^\u0000]*$")]
    error: Option<String>,
    /// How many attempts the step took (default 1).
    #[serde(default = "one", deserialize_with = "whole::u31")]
    #[schema(default = 1, maximum = 2147483647, example = 1)]
    attempts: u32,
}

fn one() -> u32 {
    1
}

/// Records a step's outcome; answers with the journal entry as recorded. For a key that was
/// already completed, that earlier record: the first result wins, and the worker continues
/// with it.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/steps",
    tag = "reports",
    operation_id = "report_step",
    params(("id" = Uuid, Path, description = "The run's id.")),
    request_body = StepBody,
    responses(
        (status = 200, description = "The step as recorded.", body = Step),
        (status = 409, description = "The run is not held under this lease (cancelled, reclaimed, ended): drop it.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn step(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<StepBody>,
) -> Result<Json<Step>> {
    let (write, bytes) = step_write(&state, id, body)?;
    let step = state.reports.steps.submit(write, bytes).await?;
    Ok(Json(step))
}

/// Checks a step report and makes it a write; with the bytes it carries.
pub(super) fn step_write(state: &AppState, id: Uuid, body: StepBody) -> Result<(StepWrite, usize)> {
    super::runs::check_name("key", &body.key)?;
    let limit = state.config.max_payload_bytes;
    let (output, error, bytes) = match body.status {
        StepStatus::Completed => {
            let output = body.output.unwrap_or(Value::Null);
            let bytes = check_payload(&format!("the output of step {}", body.key), &output, limit)?;
            (Some(output), None, bytes)
        }
        _ => {
            let error = body
                .error
                .unwrap_or_else(|| "the step failed without an error message".to_owned());
            let bytes = check_payload(&format!("the error of step {}", body.key), &error, limit)?;
            (None, Some(error), bytes)
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
    let write = StepWrite {
        run: RunId(id),
        lease_token: body.lease_token,
        report,
    };
    Ok((write, bytes))
}

/// `POST /v1/runs/{id}/complete` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "output": {"message": "Hello, World!"}}))]
pub(crate) struct CompleteBody {
    /// The lease token from the poll that claimed the run.
    lease_token: Uuid,
    /// The workflow's output (default `null`).
    #[serde(default)]
    output: Value,
    /// Completed steps not reported yet (typically the last one, which finished just before
    /// the workflow returned): recorded, first write wins, before the run completes.
    #[serde(default)]
    #[schema(max_items = 128)]
    steps: Vec<CompletedStep>,
}

/// A completed step reported with the run's completion.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"key": "greet", "position": 0, "output": "Hello, World!"}))]
pub(crate) struct CompletedStep {
    /// The step key.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
        example = "greet"
    )]
    key: String,
    /// The step's 0-based position in the run.
    #[serde(deserialize_with = "whole::u31")]
    #[schema(maximum = 2147483647, example = 0)]
    position: u32,
    /// The step's result (default `null`).
    #[serde(default)]
    output: Value,
    /// How many attempts the step took (default 1).
    #[serde(default = "one", deserialize_with = "whole::u31")]
    #[schema(default = 1, maximum = 2147483647, example = 1)]
    attempts: u32,
}

/// The most steps one completion may carry.
const MAX_COMPLETED_STEPS: usize = 128;

/// Completes the run with the workflow's output.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/complete",
    tag = "reports",
    operation_id = "complete_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The run, now completed.", body = Run),
        (status = 409, description = "The run is not held under this lease (cancelled, reclaimed, ended).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn complete(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<CompleteBody>,
) -> Result<Json<Run>> {
    let (completion, bytes) = completion(&state, id, body)?;
    let run = state.reports.completions.submit(completion, bytes).await?;
    Ok(Json(run))
}

/// Checks a completion and its carried steps; with the bytes it carries.
pub(super) fn completion(
    state: &AppState,
    id: Uuid,
    body: CompleteBody,
) -> Result<(Completion, usize)> {
    let limit = state.config.max_payload_bytes;
    let mut bytes = check_payload("output", &body.output, limit)?;
    if body.steps.len() > MAX_COMPLETED_STEPS {
        return Err(ApiError::InvalidBody(format!(
            "steps may hold at most {MAX_COMPLETED_STEPS} steps, not {}",
            body.steps.len()
        )));
    }
    let mut steps = Vec::with_capacity(body.steps.len());
    for step in body.steps {
        super::runs::check_name("key", &step.key)?;
        bytes += check_payload(
            &format!("the output of step {}", step.key),
            &step.output,
            limit,
        )?;
        steps.push(StepReport {
            key: step.key,
            position: step.position,
            status: StepStatus::Completed,
            output: Some(step.output),
            error: None,
            attempts: step.attempts,
        });
    }
    // The carried steps are recorded (first write wins) before the run completes, in the
    // same batch.
    let completion = Completion {
        run: RunId(id),
        lease_token: body.lease_token,
        output: body.output,
        steps,
    };
    Ok((completion, bytes))
}

/// `POST /v1/runs/{id}/fail` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "error": "card declined", "retryable": true}))]
pub(crate) struct FailBody {
    /// The lease token from the poll that claimed the run.
    lease_token: Uuid,
    /// What went wrong.
    #[schema(pattern = r"^[^\u0000]*$", example = "card declined")]
    error: String,
    /// False for errors that a retry cannot fix; the run then fails at once (default true).
    #[serde(default = "yes")]
    #[schema(default = true)]
    retryable: bool,
}

fn yes() -> bool {
    true
}

/// Fails the current attempt; the run is retried with backoff while retries remain (and
/// the error is retryable), and fails for good otherwise.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/fail",
    tag = "reports",
    operation_id = "fail_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    request_body = FailBody,
    responses(
        (status = 200, description = "The run: `pending` again for a retry, or `failed`.", body = Run),
        (status = 409, description = "The run is not held under this lease (cancelled, reclaimed, ended).", body = Problem, content_type = "application/problem+json"),
    ),
)]
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

/// `POST /v1/runs/{id}/suspend` body: what the run waits for (at least one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"lease_token": "5f0c2b1e-8d4a-4c3b-9e7f-1a2b3c4d5e6f", "until": "2026-11-26T09:00:00Z"}))]
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
/// When that already happened — or the body names nothing to wait for — the run is due again
/// at once.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/suspend",
    tag = "reports",
    operation_id = "suspend_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    request_body = SuspendBody,
    responses(
        (status = 200, description = "The run, now sleeping or waiting (or pending, when what it waits for already happened).", body = Run),
        (status = 409, description = "The run is not held under this lease (cancelled, reclaimed, ended).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn suspend(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<SuspendBody>,
) -> Result<Json<Run>> {
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

/// `POST /v1/runs/{id}/signals/{name}/receive` body: the step the signal becomes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"lease_token": "5f0c2b1e-8d4a-4c3b-9e7f-1a2b3c4d5e6f", "key": "signal:approve", "position": 2}))]
#[serde(deny_unknown_fields)]
pub(crate) struct ReceiveBody {
    lease_token: Uuid,
    key: String,
    #[serde(deserialize_with = "whole::u31")]
    #[schema(maximum = 2147483647, example = 2)]
    position: u32,
}

/// `POST /v1/runs/{id}/signals/{name}/receive` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"step": null}))]
pub(crate) struct Received {
    /// The step the signal was recorded as (output `{"payload": ...}`); null when no signal
    /// of that name is waiting.
    step: Option<Step>,
}

/// Takes the oldest waiting signal of a name and records it as the step `key`.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/signals/{name}/receive",
    tag = "reports",
    operation_id = "receive_signal",
    params(
        ("id" = Uuid, Path, description = "The run's id."),
        ("name" = String, Path, description = "The signal's name."),
    ),
    request_body = ReceiveBody,
    responses(
        (status = 200, description = "The signal as recorded, or `step: null` when none is waiting.", body = Received),
        (status = 409, description = "The run is not held under this lease (cancelled, reclaimed, ended).", body = Problem, content_type = "application/problem+json"),
    ),
)]
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
