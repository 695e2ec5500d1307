//! Runs: their statuses, the run resource, starting one, listing them, signalling one.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{RunId, ScheduleId};

/// The queue a start goes to when it names none.
pub const DEFAULT_QUEUE: &str = "default";

/// Where a run is in its life. The same lowercase words are used in JSON and in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "lowercase")
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
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
    /// Every status, in the order of a run's life.
    pub const ALL: [RunStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Sleeping,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Whether the run has ended (completed, failed or cancelled) and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The word used in JSON and SQL (`"pending"`, `"running"`, ...).
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

impl std::str::FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = Self::ALL.iter().map(|status| status.as_str()).collect();
                format!(
                    "unknown run status {s:?}; expected one of {}",
                    all.join(", ")
                )
            })
    }
}

/// One workflow run, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
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
    }))
)]
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
    #[serde(default)]
    pub output: Option<Value>,
    /// The last error, once an attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// How many times a worker claimed the run.
    pub attempts: u32,
    /// How many times a failed run is retried.
    pub retries: u32,
    /// When the run was started.
    pub created_at: DateTime<Utc>,
    /// When a worker first claimed the run.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    #[serde(default)]
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
    /// The run this one was forked from (`POST /v1/runs/{id}/fork`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<RunId>,
    /// The build id of the worker that first ran it, if that worker declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Whether only workers of `build_id` may run it (its workflow is pinned by the worker
    /// that first ran it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

/// How a failed run is retried, shaped like Temporal's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"max_attempts": 5, "initial_interval_ms": 1000, "backoff_coefficient": 2.0, "max_interval_ms": 60000, "non_retryable_errors": ["card declined"]}))
)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    #[serde(deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 2147483647))]
    pub max_attempts: u32,
    /// The delay before the first retry, in milliseconds.
    #[serde(
        default = "default_initial_interval_ms",
        deserialize_with = "crate::whole::u63"
    )]
    #[cfg_attr(feature = "utoipa", schema(maximum = 9223372036854775807_u64))]
    pub initial_interval_ms: u64,
    /// How much the delay grows with each retry.
    #[serde(default = "default_backoff_coefficient")]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1.0))]
    pub backoff_coefficient: f64,
    /// The longest delay, in milliseconds.
    #[serde(
        default = "default_max_interval_ms",
        deserialize_with = "crate::whole::u63"
    )]
    #[cfg_attr(feature = "utoipa", schema(maximum = 9223372036854775807_u64))]
    pub max_interval_ms: u64,
    /// A failure whose error message contains one of these is not retried.
    #[serde(default)]
    pub non_retryable_errors: Vec<String>,
}

impl RetryPolicy {
    /// `max_attempts` attempts in total with the default intervals (1 s, doubling, at most
    /// 5 minutes) and every error retryable.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            initial_interval_ms: default_initial_interval_ms(),
            backoff_coefficient: default_backoff_coefficient(),
            max_interval_ms: default_max_interval_ms(),
            non_retryable_errors: Vec::new(),
        }
    }
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

/// `POST /v1/runs` body: which workflow to run, on which queue, with what input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"workflow": "greet", "input": {"name": "World"}}))
)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The name the workflow function is registered under on the workers.
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "greet"
        )
    )]
    pub workflow: String,
    /// The queue the run waits on; workers poll one queue each.
    #[serde(default = "default_queue")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            default = "default",
            example = "default"
        )
    )]
    pub queue: String,
    /// The workflow's input: any JSON value (default `null`), at most the payload limit
    /// (2 MiB by default) as JSON.
    #[serde(default)]
    #[cfg_attr(feature = "utoipa", schema(example = json!({"name": "World"})))]
    pub input: Value,
    /// How many times a failed run is retried, with exponential backoff.
    #[serde(
        default,
        deserialize_with = "crate::whole::u31",
        skip_serializing_if = "is_zero_u32"
    )]
    #[cfg_attr(
        feature = "utoipa",
        schema(default = 0, maximum = 2147483647, example = 3)
    )]
    pub retries: u32,
    /// Start no earlier than this many milliseconds from now (at most ten years).
    #[serde(
        default,
        deserialize_with = "crate::whole::u63",
        skip_serializing_if = "is_zero_u64"
    )]
    #[cfg_attr(
        feature = "utoipa",
        schema(default = 0, maximum = 315360000000_u64, example = 0)
    )]
    pub delay_ms: u64,
    /// A start with a key that an earlier start used returns that run (200) instead of
    /// creating one; with a different workflow or input it is a 409. A key is kept for the
    /// server's idempotency window (`KAGZI_IDEMPOTENCY_WINDOW_MS`, default 24 hours) after
    /// the run it started was created; a child run's key for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(min_length = 1, max_length = 255, example = "order-7")
    )]
    pub idempotency_key: Option<String>,
    /// The run fails with a timeout once this many milliseconds passed since the start,
    /// whatever it is doing (at most ten years).
    #[serde(
        default,
        deserialize_with = "crate::whole::opt_u63",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "utoipa",
        schema(maximum = 315360000000_u64, example = 60000)
    )]
    pub timeout_ms: Option<u64>,
    /// How a failed run is retried; overrides `retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// The run starting this one as its child (set by workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<RunId>,
}

impl StartRun {
    /// A start of `workflow` on `queue` with `input` and no options set.
    pub fn new(workflow: impl Into<String>, queue: impl Into<String>, input: Value) -> Self {
        StartRun {
            workflow: workflow.into(),
            queue: queue.into(),
            input,
            retries: 0,
            delay_ms: 0,
            idempotency_key: None,
            timeout_ms: None,
            retry_policy: None,
            parent_id: None,
        }
    }
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// `POST /v1/runs` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "status": "pending"}))
)]
pub struct Started {
    /// The new run's id.
    pub id: RunId,
    /// `pending` for a new run that waits for a worker, `running` for one handed straight to
    /// a worker that was waiting for it; for the run an earlier start with the same
    /// idempotency key made, its status now.
    pub status: RunStatus,
}

/// `GET /v1/runs` query: which runs to list. Every field is optional;
/// `RunFilter::default()` lists all runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::IntoParams, utoipa::ToSchema),
    into_params(parameter_in = Query),
    schema(example = json!({"workflow": "greet", "status": "failed", "limit": 100}))
)]
#[serde(deny_unknown_fields)]
pub struct RunFilter {
    /// Only runs of this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(example = "greet"))]
    pub workflow: Option<String>,
    /// Only runs on this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(example = "default"))]
    pub queue: Option<String>,
    /// Only runs in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only runs started by this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub schedule_id: Option<ScheduleId>,
    /// At most this many runs (1 to 1000, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        param(minimum = 1, maximum = 1000, default = 50),
        schema(minimum = 1, maximum = 1000)
    )]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub cursor: Option<RunId>,
    /// Only the children of this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub parent_id: Option<RunId>,
    /// Only runs started with this idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(example = "order-7"))]
    pub idempotency_key: Option<String>,
    /// Only runs created at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Only runs created before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
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

    /// Only runs started by this schedule.
    pub fn schedule(mut self, schedule: ScheduleId) -> Self {
        self.schedule_id = Some(schedule);
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

    /// Only runs started with this idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Only runs created at or after `since`.
    pub fn created_after(mut self, since: DateTime<Utc>) -> Self {
        self.created_after = Some(since);
        self
    }

    /// Only runs created before `until`.
    pub fn created_before(mut self, until: DateTime<Utc>) -> Self {
        self.created_before = Some(until);
        self
    }

    /// Continue after this cursor (a page's [`RunPage::next_cursor`]).
    pub fn cursor(mut self, cursor: RunId) -> Self {
        self.cursor = Some(cursor);
        self
    }
}

/// `GET /v1/runs` answer: one page of runs, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"runs": [], "next_cursor": null}))
)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<Run>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[serde(default)]
    pub next_cursor: Option<RunId>,
}

/// `GET /v1/runs/{id}/result` query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ResultQuery {
    /// How long to wait for the run to end, in milliseconds (default 30000, at most 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        param(default = 30000, maximum = 60000, example = 5000)
    )]
    pub timeout_ms: Option<u64>,
}

/// `GET /v1/runs/counts` answer: how many runs are in each status, among those the filter
/// matches (its `status`, `cursor` and `limit` are ignored). Each count stops at `cap`, so
/// that counting stays fast on a table of millions of runs: a count equal to `cap` means
/// "`cap` or more".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"pending": 3, "running": 2, "sleeping": 0, "waiting": 1, "completed": 10000, "failed": 4, "cancelled": 0, "total": 10010, "cap": 10000, "capped": true}))
)]
pub struct RunCounts {
    /// Runs waiting for a worker (due or not yet due).
    pub pending: u64,
    /// Runs held by a worker.
    pub running: u64,
    /// Runs suspended on a timer.
    pub sleeping: u64,
    /// Runs suspended until a signal or a child.
    pub waiting: u64,
    /// Runs that completed.
    pub completed: u64,
    /// Runs that failed for good.
    pub failed: u64,
    /// Runs that were cancelled.
    pub cancelled: u64,
    /// All of them (a lower bound when `capped`).
    pub total: u64,
    /// The most any one count counts to.
    pub cap: u64,
    /// True when some count reached `cap`: it, and `total`, are lower bounds.
    pub capped: bool,
}

impl RunCounts {
    /// Whether the count of `status` reached the cap (so it is a lower bound).
    pub fn is_capped(&self, status: RunStatus) -> bool {
        self.cap > 0 && self.get(status) >= self.cap
    }

    /// The count of `status`.
    pub fn get(&self, status: RunStatus) -> u64 {
        match status {
            RunStatus::Pending => self.pending,
            RunStatus::Running => self.running,
            RunStatus::Sleeping => self.sleeping,
            RunStatus::Waiting => self.waiting,
            RunStatus::Completed => self.completed,
            RunStatus::Failed => self.failed,
            RunStatus::Cancelled => self.cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_status_serde_round_trips_lowercase() -> serde_json::Result<()> {
        for status in RunStatus::ALL {
            let text = format!("\"{status}\"");
            assert_eq!(serde_json::to_string(&status)?, text);
            assert_eq!(serde_json::from_str::<RunStatus>(&text)?, status);
            assert_eq!(status.as_str().parse::<RunStatus>(), Ok(status));
        }
        assert!(serde_json::from_str::<RunStatus>("\"Running\"").is_err());
        let unknown = "paused".parse::<RunStatus>().expect_err("not a status");
        assert!(unknown.contains("pending, running"), "{unknown}");
        Ok(())
    }

    #[test]
    fn only_ended_statuses_are_terminal() {
        let ended: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            ended,
            [
                RunStatus::Completed,
                RunStatus::Failed,
                RunStatus::Cancelled
            ]
        );
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
        assert!(run.finished_at.is_none() && run.wake_at.is_none());
        let json = serde_json::to_value(&run)?;
        assert!(json.get("finished_at").is_some(), "always sent, as null");
        assert!(json.get("wake_at").is_none(), "sent only when set");
        Ok(())
    }

    #[test]
    fn a_start_sends_only_the_options_it_sets() -> serde_json::Result<()> {
        let start = StartRun::new("greet", DEFAULT_QUEUE, serde_json::json!({"name": "Ada"}));
        assert_eq!(
            serde_json::to_value(&start)?,
            serde_json::json!({"workflow": "greet", "queue": "default", "input": {"name": "Ada"}})
        );
        let parsed: StartRun = serde_json::from_str(r#"{"workflow": "greet", "retries": 2.0}"#)?;
        assert_eq!((parsed.queue.as_str(), parsed.retries), ("default", 2));
        assert!(serde_json::from_str::<StartRun>(r#"{"workflow": "greet", "nope": 1}"#).is_err());
        Ok(())
    }
}
