//! Repairing runs: retry one that failed or was cancelled, fork one from a step, delete one
//! that ended, and cancel or retry many by filter.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use kagzi_proto::{BulkOutcome, ForkRun, MAX_BULK, Problem, Run, RunFilter};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, check_payload};
use super::runs::{check_name, store_filter};
use crate::model::RunId;
use crate::state::AppState;
use crate::store::Fork;

/// The routes of this resource (`DELETE /v1/runs/{id}` is mounted with the run's own route).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(retry))
        .routes(routes!(fork))
        .routes(routes!(cancel_many))
        .routes(routes!(retry_many))
}

/// Retry a run.
///
/// Sends a failed or cancelled run back to `pending` as the same run. Its journal is kept, so
/// the steps that finished are replayed, not run again; its attempts count on, while its
/// retry policy counts again from this retry; a deadline it had is cleared. A worker still
/// holding an old attempt of it is refused (its lease ended with the run). Children that
/// ended stay ended: retry them first when the parent waits for them.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/retry",
    tag = "runs",
    operation_id = "retry_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses(
        (status = 200, description = "The run, pending again.", body = Run),
        (status = 409, description = "The run has not ended, or it completed (fork it instead).", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Run>> {
    let run = state.store.retry_run(RunId(id), Utc::now()).await?;
    tracing::info!(run_id = %run.id, "run retried");
    Ok(Json(run.into()))
}

/// Fork a run.
///
/// Starts a new run of the same workflow whose journal holds copies of the original's
/// completed steps before `from_step` (none when it is absent), so that it runs that step and
/// everything after it again; with the original's input and queue unless the body gives
/// others. The new run's `forked_from` names the original, which is not changed.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/fork",
    tag = "runs",
    operation_id = "fork_run",
    params(("id" = Uuid, Path, description = "The run to fork.")),
    request_body = ForkRun,
    responses(
        (status = 201, description = "The new run, pending.", body = Run),
        (status = 404, description = "No such run, or its journal holds no step `from_step`.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn fork(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Json(body): Json<ForkRun>,
) -> Result<(StatusCode, Json<Run>)> {
    if let Some(key) = &body.from_step {
        check_name("from_step", key)?;
    }
    if let Some(queue) = &body.queue {
        check_name("queue", queue)?;
    }
    if let Some(input) = &body.input {
        check_payload("input", input, state.config.max_payload_bytes)?;
    }
    let fork = Fork {
        from_step: body.from_step,
        input: body.input,
        queue: body.queue,
    };
    let run = state.store.fork_run(RunId(id), &fork, Utc::now()).await?;
    tracing::info!(run_id = %run.id, forked_from = %id, "run forked");
    Ok((StatusCode::CREATED, Json(run.into())))
}

/// Delete a run.
///
/// Deletes a run that ended, with its steps and signals. A run that has not ended, or that
/// has a child run that has not ended, is kept (409). The reaper deletes ended runs by itself
/// once they are older than their status's retention (`KAGZI_RETENTION_*`).
#[utoipa::path(
    delete,
    path = "/v1/runs/{id}",
    tag = "runs",
    operation_id = "delete_run",
    params(("id" = Uuid, Path, description = "The run's id.")),
    responses(
        (status = 204, description = "The run is deleted."),
        (status = 409, description = "The run has not ended, or a child of it has not.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.store.delete_run(RunId(id)).await?;
    tracing::info!(run_id = %id, "run deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Cancel runs by filter.
///
/// Cancels up to `limit` (default 100, at most 1000) runs that match the filter and have not
/// ended, newest first, each as `POST /v1/runs/{id}/cancel` would (children too). The filter
/// is `GET /v1/runs`'s, and must name at least one field. `more` says whether more may match:
/// call again; a repeated call changes nothing it already changed.
#[utoipa::path(
    post,
    path = "/v1/runs/cancel",
    tag = "runs",
    operation_id = "cancel_runs",
    request_body = RunFilter,
    responses((status = 200, description = "The runs cancelled.", body = BulkOutcome)),
)]
async fn cancel_many(
    State(state): State<AppState>,
    Json(filter): Json<RunFilter>,
) -> Result<Json<BulkOutcome>> {
    let filter = bulk_filter(filter)?;
    let outcome = state.store.cancel_runs(&filter, Utc::now()).await?;
    tracing::info!(runs = outcome.changed.len(), "runs cancelled by filter");
    Ok(Json(outcome))
}

/// Retry runs by filter.
///
/// Retries up to `limit` (default 100, at most 1000) failed or cancelled runs that match the
/// filter, newest first, each as `POST /v1/runs/{id}/retry` would. The filter is
/// `GET /v1/runs`'s, and must name at least one field. `more` says whether more may match:
/// call again; a repeated call changes nothing it already changed.
#[utoipa::path(
    post,
    path = "/v1/runs/retry",
    tag = "runs",
    operation_id = "retry_runs",
    request_body = RunFilter,
    responses((status = 200, description = "The runs retried.", body = BulkOutcome)),
)]
async fn retry_many(
    State(state): State<AppState>,
    Json(filter): Json<RunFilter>,
) -> Result<Json<BulkOutcome>> {
    let filter = bulk_filter(filter)?;
    let outcome = state.store.retry_runs(&filter, Utc::now()).await?;
    tracing::info!(runs = outcome.changed.len(), "runs retried by filter");
    Ok(Json(outcome))
}

/// The store's filter for a bulk action: at least one field, no cursor, a bounded limit.
fn bulk_filter(filter: RunFilter) -> Result<crate::store::RunFilter> {
    let limit = filter.limit.unwrap_or(100);
    if !(1..=MAX_BULK).contains(&limit) {
        return Err(ApiError::InvalidBody(format!(
            "limit must be between 1 and {MAX_BULK}, not {limit}"
        )));
    }
    if filter.cursor.is_some() {
        return Err(ApiError::InvalidBody(
            "cursor has no meaning in a bulk action: repeat the call for more".to_owned(),
        ));
    }
    let named = RunFilter {
        limit: None,
        ..filter.clone()
    };
    if named == RunFilter::default() {
        return Err(ApiError::InvalidBody(
            "name at least one filter (workflow, queue, status, ...): a bulk action never \
             applies to every run by default"
                .to_owned(),
        ));
    }
    store_filter(filter, limit).map_err(|e| match e {
        ApiError::BadRequest(detail) => ApiError::InvalidBody(detail),
        other => other,
    })
}
