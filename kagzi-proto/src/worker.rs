//! The worker protocol: register, heartbeat, long-poll for runs (each handed over as a
//! [`Task`] under a lease), and the [`Worker`] resource operators read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::id::{RunId, WorkerId};
use crate::step::JournalEntry;

/// The most workflows one worker may register.
pub const MAX_WORKFLOWS: usize = 1000;
/// The most runs one poll claims.
pub const MAX_POLL_BATCH: u32 = 1000;
/// The longest a poll or a result long-poll may ask to wait, in milliseconds.
pub const MAX_LONG_POLL_MS: u64 = 60_000;

/// `POST /v1/workers` body: what the worker polls and can run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"queue": "default", "workflows": ["greet"], "capacity": 10, "hostname": "box-1"}))
)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// The queue the worker polls.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "default"
        )
    )]
    pub queue: String,
    /// The workflows the worker can run; polls only claim runs of these.
    #[cfg_attr(feature = "utoipa", schema(min_items = 1, max_items = 1000, inline))]
    pub workflows: Vec<WorkflowName>,
    /// How many runs the worker executes at once.
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(
        feature = "utoipa",
        schema(minimum = 1, maximum = 2147483647, example = 10)
    )]
    pub capacity: u32,
    /// The host the worker runs on, for operators.
    #[serde(default)]
    #[cfg_attr(
        feature = "utoipa",
        schema(max_length = 255, pattern = r"^[^\u0000]*$", example = "box-1")
    )]
    pub hostname: Option<String>,
    /// The version of the worker's code (e.g. a git commit), recorded on the runs it first
    /// runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "3f2a9c1"
        )
    )]
    pub build_id: Option<String>,
    /// Workflows whose runs stay on this build: a run of one of them that this worker runs
    /// first is pinned, and only workers of the same build id claim it after (needs
    /// `build_id`; without one, or for a workflow not in `workflows`, a pin does nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "utoipa", schema(max_items = 1000, inline))]
    pub pinned_workflows: Vec<WorkflowName>,
}

/// A workflow name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(value_type = String, min_length = 1, max_length = 255, pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$", example = "greet")
)]
#[serde(transparent)]
pub struct WorkflowName(pub String);

impl WorkerStatus {
    /// The word used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

impl WorkflowName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for WorkflowName {
    fn from(name: String) -> Self {
        WorkflowName(name)
    }
}

impl From<&str> for WorkflowName {
    fn from(name: &str) -> Self {
        WorkflowName(name.to_owned())
    }
}

/// `POST /v1/workers` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b", "heartbeat_interval_ms": 10000, "lease_ms": 30000}))
)]
pub struct Registered {
    /// The worker's id, for its polls and heartbeats.
    pub id: WorkerId,
    /// Heartbeat this often.
    pub heartbeat_interval_ms: u64,
    /// A claim's lease lasts this long without a heartbeat.
    pub lease_ms: u64,
}

/// A run id and the lease token a worker holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
        "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e"
    }))
)]
pub struct Lease {
    /// The run.
    pub run_id: RunId,
    /// The fencing token from the claim.
    pub lease_token: Uuid,
}

/// `POST /v1/workers/{id}/heartbeat` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"runs": [{"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e"}]}))
)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The runs the worker is executing, with their lease tokens: their leases are extended.
    #[serde(default)]
    pub runs: Vec<Lease>,
}

/// `POST /v1/workers/{id}/heartbeat` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"lost": []}))
)]
pub struct HeartbeatAnswer {
    /// Runs the worker named but no longer holds (cancelled, reclaimed, ended): stop them.
    pub lost: Vec<RunId>,
}

/// `POST /v1/workers/{id}/poll` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"max": 10, "timeout_ms": 30000}))
)]
#[serde(deny_unknown_fields)]
pub struct PollBody {
    /// Claim at most this many runs (1 to 1000).
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 1000, example = 10))]
    pub max: u32,
    /// Wait at most this long for work, in milliseconds (default 30000, at most 60000).
    #[serde(default = "default_poll_ms", deserialize_with = "crate::whole::u63")]
    #[cfg_attr(
        feature = "utoipa",
        schema(default = 30000, maximum = 60000, example = 30000)
    )]
    pub timeout_ms: u64,
}

fn default_poll_ms() -> u64 {
    30_000
}

/// `POST /v1/workers/{id}/poll` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"runs": [{"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "workflow": "greet", "input": {"name": "World"}, "attempt": 1, "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e", "lease_expires_at": "2026-11-26T09:00:30Z", "journal": []}]}))
)]
pub struct PollAnswer {
    /// The runs claimed for the worker, each with its lease and journal; empty when no run
    /// came due before the timeout.
    pub runs: Vec<Task>,
}

/// A run handed to a worker by a poll: its lease and its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
        "workflow": "greet",
        "input": {"name": "World"},
        "attempt": 1,
        "lease_token": "5b0e9d4c-1f2a-4b3c-8d7e-6f5a4b3c2d1e",
        "lease_expires_at": "2026-11-26T09:00:30Z",
        "journal": []
    }))
)]
pub struct Task {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow to execute.
    pub workflow: String,
    /// The run's input.
    pub input: Value,
    /// Which attempt this is (1 for the first claim).
    pub attempt: u32,
    /// The fencing token every report must carry.
    pub lease_token: Uuid,
    /// When the lease runs out unless a heartbeat extends it.
    pub lease_expires_at: DateTime<Utc>,
    /// The steps that already completed, in position order.
    pub journal: Vec<JournalEntry>,
}

/// Whether a worker is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "lowercase")
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WorkerStatus {
    /// Registered and heartbeating.
    Online,
    /// Deregistered, or missed its heartbeats: its runs went back to their queue.
    Offline,
}

/// A registered worker, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0b", "queue": "default", "workflows": ["greet"], "capacity": 10, "hostname": "box-1", "status": "online", "registered_at": "2026-11-26T08:00:00Z", "last_heartbeat_at": "2026-11-26T09:00:00Z", "runs_held": 3}))
)]
pub struct Worker {
    /// The worker's id.
    pub id: WorkerId,
    /// The queue it polls.
    pub queue: String,
    /// The workflows it can run.
    pub workflows: Vec<String>,
    /// How many runs it executes at once.
    pub capacity: u32,
    /// The host it runs on, if it said.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The version of its code, if it said.
    #[serde(default)]
    pub build_id: Option<String>,
    /// The workflows whose runs it pins to its build.
    #[serde(default)]
    pub pinned_workflows: Vec<String>,
    /// Whether it is heartbeating.
    pub status: WorkerStatus,
    /// When it registered.
    pub registered_at: DateTime<Utc>,
    /// When it last heartbeat (or registered).
    pub last_heartbeat_at: DateTime<Utc>,
    /// How many runs it holds now (running under its lease).
    pub runs_held: u32,
}

/// `GET /v1/workers` query: which workers to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct WorkerFilter {
    /// Only workers of this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only workers in this status (default: both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<WorkerStatus>,
    /// At most this many (1 to 1000, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(minimum = 1, maximum = 1000, default = 50))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub cursor: Option<WorkerId>,
}

/// `GET /v1/workers` answer: one page of workers, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"workers": [], "next_cursor": null}))
)]
pub struct WorkerPage {
    /// The workers on this page.
    pub workers: Vec<Worker>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[serde(default)]
    pub next_cursor: Option<WorkerId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_deserializes_from_the_wire_format() -> serde_json::Result<()> {
        let answer: PollAnswer = serde_json::from_str(
            r#"{"runs":[{"run_id":"0190b5a0-0000-7000-8000-000000000001","workflow":"greet",
                "input":{"name":"World"},"attempt":1,
                "lease_token":"0190b5a0-0000-7000-8000-000000000002",
                "lease_expires_at":"2025-01-01T00:00:30Z",
                "journal":[{"key":"greet","position":0,"output":"Hello"}]}]}"#,
        )?;
        assert_eq!(answer.runs.len(), 1);
        assert_eq!(answer.runs[0].journal[0].key, "greet");
        Ok(())
    }

    #[test]
    fn registration_takes_whole_numbers_and_refuses_unknown_fields() {
        let body: RegisterBody =
            serde_json::from_str(r#"{"queue": "q", "workflows": ["a"], "capacity": 4.0}"#)
                .expect("a valid registration");
        assert_eq!((body.capacity, body.workflows[0].as_str()), (4, "a"));
        assert!(
            serde_json::from_str::<RegisterBody>(
                r#"{"queue": "q", "workflows": ["a"], "capacity": 4, "extra": 1}"#
            )
            .is_err()
        );
    }
}
