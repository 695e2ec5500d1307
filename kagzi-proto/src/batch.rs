//! Many requests in one: a worker's step outcomes and completions ready at the same moment
//! travel in one `POST /v1/reports`, a client's starts in one `POST /v1/runs/batch`. Each item
//! is answered as its own endpoint would answer it.

use serde::{Deserialize, Serialize};

use crate::id::RunId;
use crate::problem::Problem;
use crate::report::{CompleteBody, StepBody};
use crate::run::{StartRun, Started};
use crate::step::Step;

/// The most starts one `POST /v1/runs/batch` may hold.
pub const MAX_STARTS: usize = 256;
/// The most reports one `POST /v1/reports` may hold.
pub const MAX_REPORTS: usize = 256;

/// `POST /v1/runs/batch` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"runs": [
        {"workflow": "greet", "input": {"name": "World"}},
        {"workflow": "greet", "input": {"name": "Kagzi"}, "idempotency_key": "greet-kagzi"}
    ]}))
)]
#[serde(deny_unknown_fields)]
pub struct StartBatch {
    /// The starts, each as `POST /v1/runs` takes it.
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 256))]
    pub runs: Vec<StartRun>,
}

/// `POST /v1/runs/batch` answer: one result per start, in the order of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"results": [
        {"status": 201, "run": {"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "status": "pending"}},
        {"status": 422, "problem": {"type": "urn:kagzi:problem:invalid-body", "title": "Invalid request body", "status": 422, "detail": "workflow must not be empty"}}
    ]}))
)]
pub struct StartResults {
    /// The results, in the order of the starts.
    pub results: Vec<StartResult>,
}

/// How one start of a batch went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct StartResult {
    /// The status `POST /v1/runs` would have answered with: 201 for a new run, 200 for the
    /// run an earlier start with the same idempotency key made, 404 or 409 for a start
    /// refused (nothing was started for it), 503 when the database could not be reached.
    #[cfg_attr(feature = "utoipa", schema(example = 201))]
    pub status: u16,
    /// The run, for a start that was not refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Started>,
    /// For a start that was refused: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// `POST /v1/reports` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"reports": [
        {"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "step": {"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "key": "charge", "position": 0, "status": "completed", "output": 42}},
        {"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b", "complete": {"lease_token": "6c1f0e5d-2a3b-4c4d-9e8f-7a6b5c4d3e2f", "output": "done"}}
    ]}))
)]
#[serde(deny_unknown_fields)]
pub struct ReportBatch {
    /// The reports, each on a run this worker holds under its lease.
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 256))]
    pub reports: Vec<BatchedReport>,
}

/// One report in a batch: exactly one of `step` and `complete`, on run `run_id`. The
/// server refuses an item with both or neither (422, the whole batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchedReport {
    /// The run the report is on.
    pub run_id: RunId,
    /// A step's outcome, as `POST /v1/runs/{id}/steps` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepBody>,
    /// The run's completion, as `POST /v1/runs/{id}/complete` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<CompleteBody>,
}

/// `POST /v1/reports` answer: one result per report, in the order of the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"results": [
        {"status": 200, "step": {"key": "charge", "position": 0, "status": "completed", "output": 42, "error": null, "attempts": 1, "created_at": "2026-11-26T09:00:00Z", "finished_at": "2026-11-26T09:00:00Z"}},
        {"status": 409, "problem": {"type": "urn:kagzi:problem:lease-lost", "title": "Lease lost", "status": 409, "detail": "run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b is not held under this lease"}}
    ]}))
)]
pub struct ReportResults {
    /// The results, in the order of the reports.
    pub results: Vec<ReportResult>,
}

/// How one report of a batch went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct ReportResult {
    /// The status its own endpoint would have answered with: 200 when recorded; 409 when
    /// the run is not held under the report's lease (drop the run); 503 when the database
    /// could not be reached (send the report again).
    #[cfg_attr(feature = "utoipa", schema(example = 200))]
    pub status: u16,
    /// For a step report that was recorded: the step as recorded (for a key that was
    /// already completed, that earlier record: the first result wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// For a report that was refused: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

#[cfg(feature = "utoipa")]
mod schema {
    //! `BatchedReport`'s schema says "exactly one of": a `oneOf` of its two shapes.

    use std::borrow::Cow;

    use utoipa::openapi::schema::{
        AdditionalProperties, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type,
    };
    use utoipa::openapi::{Ref, RefOr};

    use super::BatchedReport;
    use crate::report::{CompleteBody, StepBody};

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
}
