//! The server's domain types: ids, statuses, runs, steps and workers, as stored and as sent.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::schedule::ScheduleId;

/// Declares a UUID newtype id with the conversions every id needs.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[schema(value_type = String, format = Uuid, example = "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a")]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Identifies one workflow run.
    RunId
);
id_type!(
    /// Identifies one registered worker process.
    WorkerId
);

/// Where a run is in its life. The same lowercase words are used in JSON and in SQL.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Waiting to be claimed by a worker (possibly not yet due).
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Suspended on a durable timer until `wake_at`.
    Sleeping,
    /// Suspended until a signal arrives or a child run ends (or `wake_at`, for a timeout).
    Waiting,
    /// Finished with an output.
    Completed,
    /// Finished with an error, no retries left.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl RunStatus {
    /// Whether the run has ended and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The word used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Sleeping => "sleeping",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a journal entry holds a result or an error.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
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

/// One workflow run, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({
    "id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
    "workflow": "greet",
    "queue": "default",
    "status": "completed",
    "input": {"name": "World"},
    "output": {"message": "Hello, World!"},
    "error": null,
    "attempts": 1,
    "retries": 0,
    "created_at": "2026-11-26T09:00:00Z",
    "started_at": "2026-11-26T09:00:00.010Z",
    "finished_at": "2026-11-26T09:00:00.030Z"
}))]
pub struct Run {
    /// The run's id.
    pub id: RunId,
    /// The workflow name the run executes.
    pub workflow: String,
    /// The queue the run waits on.
    pub queue: String,
    /// Where the run is in its life.
    pub status: RunStatus,
    /// The input the run was started with.
    pub input: Value,
    /// The workflow's output, once completed.
    pub output: Option<Value>,
    /// The last error, once an attempt failed.
    pub error: Option<String>,
    /// How many times a worker claimed the run.
    pub attempts: i32,
    /// How many times a failed run is retried.
    pub retries: i32,
    /// When the run was started.
    pub created_at: DateTime<Utc>,
    /// When a worker first claimed the run.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// When a sleeping or waiting run wakes by itself (a timer, a signal timeout); absent
    /// otherwise, like the other optional fields below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
    /// What a waiting run waits for: `signal:NAME` or `child:ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The run that started this one as its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<RunId>,
    /// The key that made the start idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When the run times out, whatever it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<DateTime<Utc>>,
    /// The schedule that started the run, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<ScheduleId>,
    /// The due time of the schedule this run is for (the time it was scheduled at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// How a failed run is retried, shaped like Temporal's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"max_attempts": 5, "initial_interval_ms": 1000, "backoff_coefficient": 2.0, "max_interval_ms": 60000, "non_retryable_errors": ["card declined"]}))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    #[serde(deserialize_with = "crate::api::extract::whole::u31")]
    #[schema(minimum = 1, maximum = 2147483647)]
    pub max_attempts: u32,
    /// The delay before the first retry, in milliseconds.
    #[serde(
        default = "default_initial_interval_ms",
        deserialize_with = "crate::api::extract::whole::u63"
    )]
    #[schema(maximum = 9223372036854775807_u64)]
    pub initial_interval_ms: u64,
    /// How much the delay grows with each retry.
    #[serde(default = "default_backoff_coefficient")]
    #[schema(minimum = 1.0)]
    pub backoff_coefficient: f64,
    /// The longest delay, in milliseconds.
    #[serde(
        default = "default_max_interval_ms",
        deserialize_with = "crate::api::extract::whole::u63"
    )]
    #[schema(maximum = 9223372036854775807_u64)]
    pub max_interval_ms: u64,
    /// A failure whose error message contains one of these is not retried.
    #[serde(default)]
    pub non_retryable_errors: Vec<String>,
}

fn default_initial_interval_ms() -> u64 {
    1_000
}

fn default_backoff_coefficient() -> f64 {
    2.0
}

fn default_max_interval_ms() -> u64 {
    300_000
}

/// One journal entry: a step's recorded outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({
    "key": "greet",
    "position": 0,
    "status": "completed",
    "output": "Hello, World!",
    "error": null,
    "attempts": 1,
    "created_at": "2026-11-26T09:00:00.020Z",
    "finished_at": "2026-11-26T09:00:00.020Z"
}))]
pub struct Step {
    /// The step key: its name, plus `#n` for the n-th occurrence of that name in the run.
    pub key: String,
    /// The step's 0-based position in the run, in call order.
    pub position: i32,
    /// Whether the step completed or its last attempt failed.
    pub status: StepStatus,
    /// The recorded output of a completed step.
    pub output: Option<Value>,
    /// The error of a failed step.
    pub error: Option<String>,
    /// How many attempts the step took.
    pub attempts: i32,
    /// When the step was first recorded.
    pub created_at: DateTime<Utc>,
    /// When the step last finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A completed step as a worker replays it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"key": "greet", "position": 0, "output": "Hello, World!"}))]
pub struct JournalEntry {
    /// The step key.
    pub key: String,
    /// The step's position in the run.
    pub position: i32,
    /// The recorded output.
    pub output: Value,
}

/// A run handed to a worker by a poll: its lease and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
    "workflow": "greet",
    "input": {"name": "World"},
    "attempt": 1,
    "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e",
    "lease_expires_at": "2026-11-26T09:00:30Z",
    "journal": []
}))]
pub struct Task {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow to execute.
    pub workflow: String,
    /// The run's input.
    pub input: Value,
    /// Which attempt this is (1 for the first claim).
    pub attempt: i32,
    /// The fencing token every report must carry.
    pub lease_token: Uuid,
    /// When the lease runs out unless a heartbeat extends it.
    pub lease_expires_at: DateTime<Utc>,
    /// The steps that already completed, in position order.
    pub journal: Vec<JournalEntry>,
}

/// A run id and the lease token a worker holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
    "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e"
}))]
pub struct Lease {
    /// The run.
    pub run_id: RunId,
    /// The fencing token from the claim.
    pub lease_token: Uuid,
}

/// What a worker told the server when it registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Worker {
    /// The worker's id.
    pub id: WorkerId,
    /// The queue it polls.
    pub queue: String,
    /// The workflows it can run.
    pub workflows: Vec<String>,
    /// How many runs it executes at once.
    pub capacity: i32,
    /// The host it runs on, if it said.
    pub hostname: Option<String>,
}
