//! Queues: what waits, runs and is suspended on each queue, per workflow, for operators.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The runs of one workflow on one queue, by state, and the workers that could take them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"queue": "default", "workflow": "greet", "due": 12, "scheduled": 3, "running": 4, "suspended": 1, "oldest_due_at": "2026-11-26T09:00:00Z", "workers": 2}))
)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// The workflow.
    pub workflow: String,
    /// Pending runs that are due now: the backlog.
    pub due: u64,
    /// Pending runs not due yet (a start delay, a retry's backoff).
    pub scheduled: u64,
    /// Runs held by a worker.
    pub running: u64,
    /// Runs sleeping or waiting.
    pub suspended: u64,
    /// When the oldest due run became due (its wait started); null without a backlog.
    #[serde(default)]
    pub oldest_due_at: Option<DateTime<Utc>>,
    /// Online workers of this queue that run this workflow.
    pub workers: u32,
}

/// `GET /v1/queues` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"now": "2026-11-26T09:00:05Z", "queues": [{"queue": "default", "workflow": "greet", "due": 12, "scheduled": 3, "running": 4, "suspended": 1, "oldest_due_at": "2026-11-26T09:00:00Z", "workers": 2}]}))
)]
pub struct QueueList {
    /// The server's time when it counted (ages are measured from it).
    pub now: DateTime<Utc>,
    /// Each queue and workflow that has runs not ended, or online workers, by queue then
    /// workflow.
    pub queues: Vec<QueueStats>,
}
