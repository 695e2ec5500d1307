//! The server's domain types. The ids, statuses and wire bodies are the protocol's
//! (`kagzi-proto`, re-exported here); the rows below are how the stores read runs, steps and
//! workers, converted to the protocol's resources at the API.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use kagzi_proto::{
    JournalEntry, Lease, RetryPolicy, RunId, RunStatus, ScheduleId, StepStatus, Task, WorkerId,
};

/// One workflow run, as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    /// When a sleeping or waiting run wakes by itself (a timer, a signal timeout).
    pub wake_at: Option<DateTime<Utc>>,
    /// What a waiting run waits for: `signal:NAME` or `child:ID`.
    pub waiting_for: Option<String>,
    /// The run that started this one as its child.
    pub parent_id: Option<RunId>,
    /// The key that made the start idempotent.
    pub idempotency_key: Option<String>,
    /// When the run times out, whatever it is doing.
    pub deadline_at: Option<DateTime<Utc>>,
    /// The schedule that started the run, if one did.
    pub schedule_id: Option<ScheduleId>,
    /// The due time of the schedule this run is for (the time it was scheduled at).
    pub scheduled_at: Option<DateTime<Utc>>,
    /// The run this one was forked from.
    pub forked_from: Option<RunId>,
    /// The build id of the worker that first ran it.
    pub build_id: Option<String>,
    /// Whether only workers of `build_id` may claim it.
    pub pinned: bool,
}

impl From<Run> for kagzi_proto::Run {
    fn from(run: Run) -> Self {
        kagzi_proto::Run {
            id: run.id,
            workflow: run.workflow,
            queue: run.queue,
            status: run.status,
            input: run.input,
            output: run.output,
            error: run.error,
            attempts: count(run.attempts),
            retries: count(run.retries),
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
            wake_at: run.wake_at,
            waiting_for: run.waiting_for,
            parent_id: run.parent_id,
            idempotency_key: run.idempotency_key,
            deadline_at: run.deadline_at,
            schedule_id: run.schedule_id,
            scheduled_at: run.scheduled_at,
            forked_from: run.forked_from,
            build_id: run.build_id,
            pinned: run.pinned,
        }
    }
}

/// One journal entry, as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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

impl From<Step> for kagzi_proto::Step {
    fn from(step: Step) -> Self {
        kagzi_proto::Step {
            key: step.key,
            position: count(step.position),
            status: step.status,
            output: step.output,
            error: step.error,
            attempts: count(step.attempts),
            created_at: step.created_at,
            finished_at: step.finished_at,
        }
    }
}

/// What a worker told the server when it registered.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// The version of its code, if it said.
    pub build_id: Option<String>,
    /// The workflows whose runs it pins to its build.
    pub pinned_workflows: Vec<String>,
}

impl Worker {
    /// Whether a run of `workflow` that this worker runs first is pinned to its build.
    pub fn pins(&self, workflow: &str) -> bool {
        self.build_id.is_some() && self.pinned_workflows.iter().any(|w| w == workflow)
    }
}

/// A stored count (never negative: the stores only count up from 0) as the protocol's
/// unsigned number.
pub fn count(stored: i32) -> u32 {
    u32::try_from(stored).unwrap_or_default()
}
