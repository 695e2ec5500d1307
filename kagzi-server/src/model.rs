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
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Waiting to be claimed by a worker (possibly not yet due).
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// The step finished; its output is recorded and replayed.
    Completed,
    /// The step's last attempt failed; a later attempt of the run runs it again.
    Failed,
}

/// One workflow run, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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
    /// The schedule that started the run, if one did.
    pub schedule_id: Option<ScheduleId>,
    /// The due time of the schedule this run is for (the time it was scheduled at).
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// One journal entry: a step's recorded outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The step key.
    pub key: String,
    /// The step's position in the run.
    pub position: i32,
    /// The recorded output.
    pub output: Value,
}

/// A run handed to a worker by a poll: its lease and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
