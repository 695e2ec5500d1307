//! A worker's reports on a run it holds: a step's outcome, completion, failure, suspension,
//! taking a signal. Every report carries the lease token from the claim; the server refuses
//! one whose lease is gone with 409.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::id::RunId;
use crate::step::{Step, StepStatus};

/// The most completed steps one completion may carry.
pub const MAX_COMPLETED_STEPS: usize = 128;

/// `POST /v1/runs/{id}/steps` body: one step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e",
        "key": "greet",
        "position": 0,
        "status": "completed",
        "output": "Hello, World!"
    }))
)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// The lease token from the poll that claimed the run.
    pub lease_token: Uuid,
    /// The step key: its name, plus `#n` for the n-th step of that name in the run.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "greet"
        )
    )]
    pub key: String,
    /// The step's 0-based position in the run, in call order.
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(maximum = 2147483647, example = 0))]
    pub position: u32,
    /// `completed` (with `output`) or `failed` (with `error`).
    pub status: StepStatus,
    /// The step's result, for a completed step (default `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The step's error, for a failed step (default: a note that it gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(pattern = r"^[^\u0000]*$"))]
    pub error: Option<String>,
    /// How many attempts the step took (default 1).
    #[serde(default = "one", deserialize_with = "crate::whole::u31")]
    #[cfg_attr(
        feature = "utoipa",
        schema(default = 1, maximum = 2147483647, example = 1)
    )]
    pub attempts: u32,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// `POST /v1/runs/{id}/complete` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "output": {"message": "Hello, World!"}}))
)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The lease token from the poll that claimed the run.
    pub lease_token: Uuid,
    /// The workflow's output (default `null`).
    #[serde(default)]
    pub output: Value,
    /// Completed steps not reported yet (typically the last one, which finished just before
    /// the workflow returned): recorded, first write wins, before the run completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(max_items = 128))]
    pub steps: Vec<CompletedStep>,
}

/// A completed step reported with the run's completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"key": "greet", "position": 0, "output": "Hello, World!"}))
)]
#[serde(deny_unknown_fields)]
pub struct CompletedStep {
    /// The step key.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "greet"
        )
    )]
    pub key: String,
    /// The step's 0-based position in the run.
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(maximum = 2147483647, example = 0))]
    pub position: u32,
    /// The step's result (default `null`).
    #[serde(default)]
    pub output: Value,
    /// How many attempts the step took (default 1).
    #[serde(default = "one", deserialize_with = "crate::whole::u31")]
    #[cfg_attr(
        feature = "utoipa",
        schema(default = 1, maximum = 2147483647, example = 1)
    )]
    pub attempts: u32,
}

/// `POST /v1/runs/{id}/fail` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "error": "card declined", "retryable": true}))
)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The lease token from the poll that claimed the run.
    pub lease_token: Uuid,
    /// What went wrong.
    #[cfg_attr(
        feature = "utoipa",
        schema(pattern = r"^[^\u0000]*$", example = "card declined")
    )]
    pub error: String,
    /// False for errors that a retry cannot fix; the run then fails at once (default true).
    #[serde(default = "yes")]
    #[cfg_attr(feature = "utoipa", schema(default = true))]
    pub retryable: bool,
}

/// `POST /v1/runs/{id}/suspend` body: what the run waits for (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"lease_token": "5f0c2b1e-8d4a-4c3b-9e7f-1a2b3c4d5e6f", "until": "2026-11-26T09:00:00Z"}))
)]
#[serde(deny_unknown_fields)]
pub struct SuspendBody {
    /// The lease token from the poll that claimed the run.
    pub lease_token: Uuid,
    /// Wake at this time (a sleep's end, or a timeout for a signal or child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Wake when a signal of this name arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Wake when this child run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<RunId>,
}

/// `POST /v1/runs/{id}/signals/{name}/receive` body: the step the signal becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"lease_token": "5f0c2b1e-8d4a-4c3b-9e7f-1a2b3c4d5e6f", "key": "signal:approve", "position": 2}))
)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    /// The lease token from the poll that claimed the run.
    pub lease_token: Uuid,
    /// The step key the received signal is recorded under.
    pub key: String,
    /// The step's 0-based position in the run.
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(maximum = 2147483647, example = 2))]
    pub position: u32,
}

/// `POST /v1/runs/{id}/signals/{name}/receive` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"step": null}))
)]
pub struct Received {
    /// The step the signal was recorded as (output `{"payload": ...}`); null when no signal
    /// of that name is waiting.
    #[serde(default)]
    pub step: Option<Step>,
}
