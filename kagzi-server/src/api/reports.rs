//! Worker reports on a run they hold: a step's outcome, completion, failure. Every report
//! carries the lease token from the claim and is refused with 409 when the lease is gone.

use axum::extract::State;
use chrono::Utc;
use kagzi_proto::{
    CompleteBody, FailBody, MAX_COMPLETED_STEPS, Problem, ReceiveBody, Received, Run, Step,
    StepBody, StepStatus, SuspendBody,
};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, check_payload};
use crate::model::RunId;
use crate::state::AppState;
use crate::store::{Completion, StepReport, StepWrite, Suspend};

/// Record a step's outcome (worker).
///
/// Records the step under the worker's lease and answers with the journal entry as recorded.
/// For a key that was already completed it answers with that earlier record: the first result
/// wins, and the worker continues with it. Refused with 409 when the lease is gone.
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
    Ok(Json(step.into()))
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

/// Complete a run (worker).
///
/// Completes the run under the worker's lease with the workflow's output, recording first the
/// completed steps the body carries (first write wins). Refused with 409 when the lease is
/// gone.
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
    Ok(Json(run.into()))
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

/// Fail a run's attempt (worker).
///
/// Fails the current attempt under the worker's lease. The run is retried with backoff while
/// retries remain and the error is retryable, and fails for good otherwise. Refused with 409
/// when the lease is gone.
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
    Ok(Json(run.into()))
}

/// Suspend a run (worker).
///
/// The worker lets go of the run: it sleeps until a time, or waits for a signal or a child run
/// to end. When that already happened (or the body names nothing to wait for) the run is due
/// again at once. Refused with 409 when the lease is gone.
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
    Ok(Json(run.into()))
}

/// Take a waiting signal (worker).
///
/// Takes the oldest waiting signal of this name and records it as the step `key` under the
/// worker's lease; `step` is null when none is waiting. Refused with 409 when the lease is
/// gone.
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
    Ok(Json(Received {
        step: step.map(Into::into),
    }))
}
