//! Many requests in one: a worker with many runs in flight sends the step outcomes and
//! completions that are ready at the same moment together, and a client the starts it makes
//! at the same moment, instead of one request each. Each item is checked, written and
//! answered exactly as its own endpoint would (`POST /v1/runs/{id}/steps`,
//! `POST /v1/runs/{id}/complete`, `POST /v1/runs`).

use axum::extract::State;
use kagzi_proto::{
    MAX_REPORTS, MAX_STARTS, ReportBatch, ReportResult, ReportResults, StartBatch, StartResult,
    StartResults, Step,
};

use super::error::{ApiError, Result};
use super::extract::Json;
use super::reports::{completion, step_write};
use super::runs::{check_start, start_checked};
use crate::state::AppState;
use crate::store::{Completion, StepWrite};

/// The routes of this resource.
pub(crate) fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(reports))
        .routes(utoipa_axum::routes!(starts))
}

/// Start many runs at once.
///
/// Every start is checked first: one that `POST /v1/runs` would refuse as invalid (422) or too
/// large (413) refuses the whole batch, naming it (`runs[3]: ...`), and nothing is started.
/// Then each start is made and answered on its own, with the status and problem `POST /v1/runs`
/// would answer: one whose parent does not exist (404) or whose idempotency key belongs to
/// other work (409) is refused alone.
#[utoipa::path(
    post,
    path = "/v1/runs/batch",
    tag = "runs",
    operation_id = "start_runs",
    request_body = StartBatch,
    responses(
        (status = 200, description = "Each start's result, in order.", body = StartResults),
    ),
)]
pub(crate) async fn starts(
    State(state): State<AppState>,
    Json(body): Json<StartBatch>,
) -> Result<Json<StartResults>> {
    check_size("runs", "starts", body.runs.len(), MAX_STARTS)?;
    let mut checked = Vec::with_capacity(body.runs.len());
    for (i, req) in body.runs.into_iter().enumerate() {
        let bytes = check_start(&state, &req).map_err(|e| e.within(&format!("runs[{i}]")))?;
        checked.push((req, bytes));
    }
    let state = &state;
    let results = futures::future::join_all(checked.into_iter().map(|(req, bytes)| async move {
        match start_checked(state, req, bytes).await {
            Ok((status, run)) => StartResult {
                status: status.as_u16(),
                run: Some(run),
                problem: None,
            },
            Err(e) => {
                let problem = e.to_problem();
                StartResult {
                    status: problem.status,
                    run: None,
                    problem: Some(problem),
                }
            }
        }
    }))
    .await;
    Ok(Json(StartResults { results }))
}

/// The answer for a report that was recorded (a step report comes back as recorded).
fn recorded(step: Option<Step>) -> ReportResult {
    ReportResult {
        status: 200,
        step,
        problem: None,
    }
}

/// The answer for a report that was refused.
fn refused(error: &ApiError) -> ReportResult {
    let problem = error.to_problem();
    ReportResult {
        status: problem.status,
        step: None,
        problem: Some(problem),
    }
}

/// A checked report, ready to write.
enum Checked {
    Step(StepWrite, usize),
    Complete(Completion, usize),
}

/// Record many step reports and completions at once.
///
/// Every report is checked first: one that its own endpoint would refuse as invalid (422) or
/// too large (413) refuses the whole batch, naming it (`reports[3]: ...`), and nothing is
/// written. Then each report is written under its run's lease and answered on its own, with the
/// status and problem its own endpoint would answer: one whose lease is gone (409) is refused
/// alone.
#[utoipa::path(
    post,
    path = "/v1/reports",
    tag = "reports",
    operation_id = "report_batch",
    request_body = ReportBatch,
    responses(
        (status = 200, description = "Each report's result, in order.", body = ReportResults),
    ),
)]
pub(crate) async fn reports(
    State(state): State<AppState>,
    Json(body): Json<ReportBatch>,
) -> Result<Json<ReportResults>> {
    check_size("reports", "reports", body.reports.len(), MAX_REPORTS)?;
    let mut checked = Vec::with_capacity(body.reports.len());
    for (i, report) in body.reports.into_iter().enumerate() {
        let check = match (report.step, report.complete) {
            (Some(step), None) => {
                step_write(&state, report.run_id.0, step).map(|(w, b)| Checked::Step(w, b))
            }
            (None, Some(complete)) => {
                completion(&state, report.run_id.0, complete).map(|(c, b)| Checked::Complete(c, b))
            }
            _ => Err(ApiError::InvalidBody(
                "give exactly one of `step` and `complete`".to_owned(),
            )),
        };
        checked.push(check.map_err(|e| e.within(&format!("reports[{i}]")))?);
    }
    let results = futures::future::join_all(checked.into_iter().map(|report| async {
        match report {
            Checked::Step(write, bytes) => match state.reports.steps.submit(write, bytes).await {
                Ok(step) => recorded(Some(step.into())),
                Err(e) => refused(&e.into()),
            },
            Checked::Complete(completion, bytes) => {
                match state.reports.completions.submit(completion, bytes).await {
                    Ok(_) => recorded(None),
                    Err(e) => refused(&e.into()),
                }
            }
        }
    }))
    .await;
    Ok(Json(ReportResults { results }))
}

/// Refuses a batch whose list `field` holds no items or more than `max`.
fn check_size(field: &str, items: &str, count: usize, max: usize) -> Result<()> {
    if count == 0 || count > max {
        return Err(ApiError::InvalidBody(format!(
            "{field} must hold 1 to {max} {items}, not {count}"
        )));
    }
    Ok(())
}
