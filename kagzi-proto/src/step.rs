//! Steps: a run's journal as clients read it ([`Step`]) and as workers replay it
//! ([`JournalEntry`]).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether a journal entry holds a result or an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "lowercase")
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// The step finished; its output is recorded and replayed.
    Completed,
    /// The step's last attempt failed; a later attempt of the run runs it again.
    Failed,
}

impl StepStatus {
    /// The word used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One journal entry: a step's recorded outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "key": "greet",
        "position": 0,
        "status": "completed",
        "output": "Hello, World!",
        "error": null,
        "attempts": 1,
        "created_at": "2026-11-26T09:00:00.020Z",
        "finished_at": "2026-11-26T09:00:00.020Z"
    }))
)]
pub struct Step {
    /// The step key: its name, plus `#n` for the n-th occurrence of that name in the run.
    pub key: String,
    /// The step's 0-based position in the run, in call order.
    pub position: u32,
    /// Whether the step completed or its last attempt failed.
    pub status: StepStatus,
    /// The recorded output of a completed step.
    #[serde(default)]
    pub output: Option<Value>,
    /// The error of a failed step.
    #[serde(default)]
    pub error: Option<String>,
    /// How many attempts the step took.
    pub attempts: u32,
    /// When the step was first recorded.
    pub created_at: DateTime<Utc>,
    /// When the step last finished.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// A completed step as a worker replays it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"key": "greet", "position": 0, "output": "Hello, World!"}))
)]
pub struct JournalEntry {
    /// The step key.
    pub key: String,
    /// The step's position in the run.
    pub position: u32,
    /// The recorded output.
    pub output: Value,
}

/// `GET /v1/runs/{id}/steps` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"steps": [{"key": "greet", "position": 0, "status": "completed", "output": "Hello, World!", "error": null, "attempts": 1, "created_at": "2026-11-26T09:00:00.020Z", "finished_at": "2026-11-26T09:00:00.020Z"}]}))
)]
pub struct StepList {
    /// The run's journal, in position order.
    pub steps: Vec<Step>,
}
