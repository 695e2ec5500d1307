//! Many requests in one: a worker with many runs in flight sends the step outcomes and
//! completions that are ready at the same moment together, and a client the starts it makes
//! at the same moment, instead of one request each. Each item is checked, written and
//! answered exactly as its own endpoint would (`POST /v1/runs/{id}/steps`,
//! `POST /v1/runs/{id}/complete`, `POST /v1/runs`).

use std::borrow::Cow;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{
    AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr};
use uuid::Uuid;

use super::error::{ApiError, Problem, Result};
use super::extract::Json;
use super::reports::{CompleteBody, StepBody, completion, step_write};
use super::runs::{StartRun, Started, check_start, start_checked};
use crate::model::Step;
use crate::state::AppState;
use crate::store::{Completion, StepWrite};

/// The most reports one batch may hold.
const MAX_REPORTS: usize = 256;

/// The routes of this resource.
pub(crate) fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(reports))
        .routes(utoipa_axum::routes!(starts))
}

/// The most starts one batch may hold.
const MAX_STARTS: usize = 256;

/// `POST /v1/runs/batch` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"runs": [
    {"workflow": "greet", "input": {"name": "World"}},
    {"workflow": "greet", "input": {"name": "Kagzi"}, "idempotency_key": "greet-kagzi"}
]}))]
pub(crate) struct StartBatch {
    /// The starts, each as `POST /v1/runs` takes it.
    #[schema(min_items = 1, max_items = 256)]
    runs: Vec<StartRun>,
}

/// `POST /v1/runs/batch` answer: one result per start, in the order of the request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"results": [
    {"status": 201, "run": {"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "status": "pending"}},
    {"status": 422, "problem": {"type": "urn:kagzi:problem:invalid-body", "title": "Invalid request body", "status": 422, "detail": "workflow must not be empty"}}
]}))]
pub(crate) struct StartResults {
    /// The results, in the order of the starts.
    results: Vec<StartResult>,
}

/// How one start of a batch went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct StartResult {
    /// The status `POST /v1/runs` would have answered with: 201 for a new run, 200 for the
    /// run an earlier start with the same idempotency key made, 404 or 409 for a start
    /// refused (nothing was started for it), 503 when the database could not be reached.
    #[schema(example = 201)]
    status: u16,
    /// The run, for a start that was not refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<Started>,
    /// For a start that was refused: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<Problem>,
}

/// Starts many runs in one request.
///
/// Every start is checked first: one that `POST /v1/runs` would refuse as invalid (422) or
/// too large (413) refuses the whole batch, naming it (`runs[3]: ...`), and nothing is
/// started. Then each start is made and answered on its own, with the status and problem
/// `POST /v1/runs` would answer: one whose parent does not exist (404) or whose idempotency
/// key belongs to other work (409) is refused alone.
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

/// `POST /v1/reports` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reports": [
    {"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "step": {"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "key": "charge", "position": 0, "status": "completed", "output": 42}},
    {"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b", "complete": {"lease_token": "6c1f0e5d-2a3b-4c4d-9e8f-7a6b5c4d3e2f", "output": "done"}}
]}))]
pub(crate) struct ReportBatch {
    /// The reports, each on a run this worker holds under its lease.
    #[schema(min_items = 1, max_items = 256)]
    reports: Vec<BatchedReport>,
}

/// One report in a batch: exactly one of `step` and `complete`, on run `run_id`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchedReport {
    run_id: Uuid,
    #[serde(default)]
    step: Option<StepBody>,
    #[serde(default)]
    complete: Option<CompleteBody>,
}

impl utoipa::PartialSchema for BatchedReport {
    fn schema() -> RefOr<Schema> {
        let variant = |field: &str, body: &str, description: &str| {
            ObjectBuilder::new()
                .property(
                    "run_id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                        .description(Some("The run the report is on.")),
                )
                .required("run_id")
                .property(field, Ref::from_schema_name(body))
                .required(field)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .description(Some(description))
        };
        OneOfBuilder::new()
            .item(variant(
                "step",
                "StepBody",
                "A step's outcome on run `run_id`, as `POST /v1/runs/{id}/steps` takes it.",
            ))
            .item(variant(
                "complete",
                "CompleteBody",
                "The completion of run `run_id`, as `POST /v1/runs/{id}/complete` takes it.",
            ))
            .description(Some(
                "One report in a batch: a step's outcome (`step`) or a completion (`complete`) of run `run_id`.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for BatchedReport {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("BatchedReport")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((
            "StepBody".to_owned(),
            <StepBody as utoipa::PartialSchema>::schema(),
        ));
        <StepBody as utoipa::ToSchema>::schemas(schemas);
        schemas.push((
            "CompleteBody".to_owned(),
            <CompleteBody as utoipa::PartialSchema>::schema(),
        ));
        <CompleteBody as utoipa::ToSchema>::schemas(schemas);
    }
}

/// `POST /v1/reports` answer: one result per report, in the order of the request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"results": [
    {"status": 200, "step": {"key": "charge", "position": 0, "status": "completed", "output": 42, "error": null, "attempts": 1, "created_at": "2026-11-26T09:00:00Z", "finished_at": "2026-11-26T09:00:00Z"}},
    {"status": 409, "problem": {"type": "urn:kagzi:problem:lease-lost", "title": "Lease lost", "status": 409, "detail": "run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b is not held under this lease"}}
]}))]
pub(crate) struct ReportResults {
    /// The results, in the order of the reports.
    results: Vec<ReportResult>,
}

/// How one report of a batch went.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ReportResult {
    /// The status its own endpoint would have answered with: 200 when recorded; 409 when
    /// the run is not held under the report's lease (drop the run); 503 when the database
    /// could not be reached (send the report again).
    #[schema(example = 200)]
    status: u16,
    /// For a step report that was recorded: the step as recorded (for a key that was
    /// already completed, that earlier record: the first result wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<Step>,
    /// For a report that was refused: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<Problem>,
}

impl ReportResult {
    fn recorded(step: Option<Step>) -> Self {
        ReportResult {
            status: 200,
            step,
            problem: None,
        }
    }

    fn refused(error: &ApiError) -> Self {
        let problem = error.to_problem();
        ReportResult {
            status: problem.status,
            step: None,
            problem: Some(problem),
        }
    }
}

/// A checked report, ready to write.
enum Checked {
    Step(StepWrite, usize),
    Complete(Completion, usize),
}

/// Records step outcomes and completions of many runs in one request.
///
/// Every report is checked first: one that its own endpoint would refuse as invalid (422)
/// or too large (413) refuses the whole batch, naming it (`reports[3]: ...`), and nothing
/// is written. Then each report is written under its run's lease and answered on its own,
/// with the status and problem its own endpoint would answer: one whose lease is gone
/// (409) is refused alone.
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
                step_write(&state, report.run_id, step).map(|(w, b)| Checked::Step(w, b))
            }
            (None, Some(complete)) => {
                completion(&state, report.run_id, complete).map(|(c, b)| Checked::Complete(c, b))
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
                Ok(step) => ReportResult::recorded(Some(step)),
                Err(e) => ReportResult::refused(&e.into()),
            },
            Checked::Complete(completion, bytes) => {
                match state.reports.completions.submit(completion, bytes).await {
                    Ok(_) => ReportResult::recorded(None),
                    Err(e) => ReportResult::refused(&e.into()),
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
