//! The Kagzi wire protocol: every id, status, resource, request and answer body, and the
//! problem document that the server, the SDK and the command line exchange over
//! HTTP/JSON. Defined once here, so the three cannot disagree.
//!
//! - Ids: [`RunId`], [`WorkerId`], [`ScheduleId`] — UUIDs, written as plain strings.
//! - Resources: [`Run`], [`Step`], [`Schedule`], [`Worker`], and their statuses.
//! - Requests and answers, named after the route that takes them: [`StartRun`] for
//!   `POST /v1/runs`, [`StepBody`] for `POST /v1/runs/{id}/steps`, [`PollBody`] and
//!   [`PollAnswer`] for `POST /v1/workers/{id}/poll`, and so on.
//! - Errors: every 4xx and 5xx answer is a [`Problem`] (RFC 9457,
//!   `application/problem+json`).
//!
//! Features: `utoipa` derives the OpenAPI schemas the server's document is built from;
//! `sqlx` lets a store bind and decode ids and statuses directly. Neither is needed to
//! speak the protocol.

pub mod batch;
pub mod health;
pub mod id;
pub mod problem;
pub mod queue;
pub mod repair;
pub mod report;
pub mod run;
pub mod schedule;
pub mod signal;
pub mod step;
pub mod whole;
pub mod worker;

pub use batch::{
    BatchedReport, MAX_REPORTS, MAX_STARTS, ReportBatch, ReportResult, ReportResults, StartBatch,
    StartResult, StartResults,
};
pub use health::Health;
pub use id::{RunId, ScheduleId, WorkerId};
pub use problem::{PROBLEM_JSON, Problem};
pub use queue::{QueueList, QueueStats};
pub use repair::{BulkOutcome, ForkRun, MAX_BULK, PatchUsage};
pub use report::{
    CompleteBody, CompletedStep, FailBody, MAX_COMPLETED_STEPS, ReceiveBody, Received, StepBody,
    SuspendBody,
};
pub use run::{
    DEFAULT_QUEUE, ResultQuery, RetryPolicy, Run, RunCounts, RunFilter, RunPage, RunStatus,
    StartRun, Started,
};
pub use schedule::{
    CreateSchedule, Overlap, Schedule, ScheduleFilter, SchedulePage, ScheduleRunsQuery, Triggered,
    UpdateSchedule,
};
pub use signal::{Signal, SignalList, SignalSent};
pub use step::{JournalEntry, Step, StepList, StepStatus};
pub use worker::{
    HeartbeatAnswer, HeartbeatBody, Lease, MAX_LONG_POLL_MS, MAX_POLL_BATCH, MAX_WORKFLOWS,
    PollAnswer, PollBody, RegisterBody, Registered, Task, Worker, WorkerFilter, WorkerPage,
    WorkerStatus, WorkflowName,
};
