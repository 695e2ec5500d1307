//! The data the server returns: run ids, runs, their statuses and their steps.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::schedule::ScheduleId;

/// The id of a workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RunId)
    }
}

impl From<Uuid> for RunId {
    fn from(id: Uuid) -> Self {
        RunId(id)
    }
}

impl From<RunId> for Uuid {
    fn from(id: RunId) -> Self {
        id.0
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunStatus {
    /// Waiting for a worker (new, retrying, or handed back).
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Suspended on a durable timer until `wake_at`.
    Sleeping,
    /// Suspended until a signal arrives or a child run ends (or `wake_at`, for a timeout).
    Waiting,
    /// Finished with an output.
    Completed,
    /// Finished with an error, no attempts left.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl RunStatus {
    /// True when the run has ended (completed, failed or cancelled) and will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// The status as it appears on the wire (`"pending"`, `"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Sleeping => "sleeping",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workflow run as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Run {
    /// The run's id.
    pub id: RunId,
    /// The workflow name.
    pub workflow: String,
    /// The queue the run was started on.
    pub queue: String,
    /// Current status.
    pub status: RunStatus,
    /// The input the run was started with.
    #[serde(default)]
    pub input: Value,
    /// The output, once completed.
    #[serde(default)]
    pub output: Option<Value>,
    /// The last error, if an attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// How many attempts have started.
    #[serde(default)]
    pub attempts: u32,
    /// How many retries the run is allowed after its first attempt.
    #[serde(default)]
    pub retries: u32,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When the first attempt started.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When a sleeping or waiting run wakes by itself (a timer, a signal timeout).
    #[serde(default)]
    pub wake_at: Option<DateTime<Utc>>,
    /// What a waiting run waits for: `signal:NAME` or `child:ID`.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// The run that started this one as its child.
    #[serde(default)]
    pub parent_id: Option<RunId>,
    /// The key that made the start idempotent.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// When the run times out, whatever it is doing.
    #[serde(default)]
    pub deadline_at: Option<DateTime<Utc>>,
    /// The schedule that started the run, if one did.
    #[serde(default)]
    pub schedule_id: Option<ScheduleId>,
    /// The schedule's due time this run is for.
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// How a recorded step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// The step finished with an output; replay uses it.
    Completed,
    /// The step's last attempt failed; replay runs it again.
    Failed,
}

/// A step of a run, as recorded in its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Step {
    /// The step key: the name for its first occurrence in the run, `name#2`, `name#3`, ... after.
    pub key: String,
    /// 0-based position of the step in the run, in call order.
    pub position: u32,
    /// How the step ended.
    pub status: StepStatus,
    /// The recorded output of a completed step.
    #[serde(default)]
    pub output: Option<Value>,
    /// The error of a failed step.
    #[serde(default)]
    pub error: Option<String>,
    /// How many attempts the step took.
    #[serde(default)]
    pub attempts: u32,
    /// When the step was first recorded.
    pub created_at: DateTime<Utc>,
    /// When the step finished.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

/// One page of runs from [`Client::list_runs`](crate::Client::list_runs), newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunPage {
    /// The runs on this page.
    pub runs: Vec<Run>,
    /// Pass this as [`RunFilter::cursor`] to get the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Which runs [`Client::list_runs`](crate::Client::list_runs) returns. Every field is
/// optional; `RunFilter::default()` lists all runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs on this queue.
    pub queue: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// At most this many runs (the server caps it).
    pub limit: Option<u32>,
    /// Continue after this cursor (from [`RunPage::next_cursor`]).
    pub cursor: Option<String>,
    /// Only the children of this run.
    pub parent_id: Option<RunId>,
}

impl RunFilter {
    /// Only runs of this workflow.
    pub fn workflow(mut self, workflow: impl Into<String>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }

    /// Only runs on this queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only runs in this status.
    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most this many runs.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only the children of this run.
    pub fn parent(mut self, parent: RunId) -> Self {
        self.parent_id = Some(parent);
        self
    }

    /// Continue after this cursor.
    pub fn cursor(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_status_serde_round_trips_lowercase() -> serde_json::Result<()> {
        for (status, text) in [
            (RunStatus::Pending, "\"pending\""),
            (RunStatus::Running, "\"running\""),
            (RunStatus::Completed, "\"completed\""),
            (RunStatus::Failed, "\"failed\""),
            (RunStatus::Cancelled, "\"cancelled\""),
        ] {
            assert_eq!(serde_json::to_string(&status)?, text);
            assert_eq!(serde_json::from_str::<RunStatus>(text)?, status);
            assert_eq!(format!("\"{status}\""), text);
        }
        assert!(serde_json::from_str::<RunStatus>("\"Running\"").is_err());
        Ok(())
    }

    #[test]
    fn only_ended_statuses_are_terminal() {
        assert!(!RunStatus::Pending.is_terminal());
        assert!(!RunStatus::Running.is_terminal());
        assert!(RunStatus::Completed.is_terminal());
        assert!(RunStatus::Failed.is_terminal());
        assert!(RunStatus::Cancelled.is_terminal());
    }

    #[test]
    fn run_id_parses_displays_and_serializes_as_a_plain_uuid()
    -> Result<(), Box<dyn std::error::Error>> {
        let id: RunId = "0190b5a0-0000-7000-8000-000000000001".parse()?;
        assert_eq!(id.to_string(), "0190b5a0-0000-7000-8000-000000000001");
        assert_eq!(
            serde_json::to_string(&id)?,
            "\"0190b5a0-0000-7000-8000-000000000001\""
        );
        assert!("not-a-uuid".parse::<RunId>().is_err());
        Ok(())
    }

    #[test]
    fn run_deserializes_from_the_wire_format() -> serde_json::Result<()> {
        let run: Run = serde_json::from_str(
            r#"{"id":"0190b5a0-0000-7000-8000-000000000001","workflow":"greet","queue":"default",
                "status":"completed","input":{"name":"World"},"output":{"message":"hi"},
                "error":null,"attempts":1,"retries":3,"created_at":"2025-01-01T00:00:00Z",
                "started_at":"2025-01-01T00:00:01Z","finished_at":null}"#,
        )?;
        assert_eq!(run.status, RunStatus::Completed);
        assert_eq!(run.retries, 3);
        assert_eq!(run.output, Some(serde_json::json!({"message": "hi"})));
        assert!(run.finished_at.is_none());
        Ok(())
    }
}
