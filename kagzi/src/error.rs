//! The SDK's error type: what can go wrong talking to the server or running a workflow.

use kagzi_proto::RunId;

/// The result type used throughout the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the Kagzi SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The HTTP request could not be sent or its response could not be read.
    #[error("http transport error: {0}")]
    Http(#[from] reqwest::Error),

    /// The server answered with an error (an `application/problem+json` body).
    #[error("server answered {status} {title}: {detail}")]
    Api {
        /// HTTP status code.
        status: u16,
        /// Short summary of the problem.
        title: String,
        /// Explanation specific to this occurrence.
        detail: String,
    },

    /// The server refused a payload (input, output, step result) as larger than its limit
    /// (`KAGZI_MAX_PAYLOAD_BYTES`, 2 MiB by default). Nothing was written.
    #[error("over the server's payload limit: {detail}")]
    PayloadTooLarge {
        /// The server's explanation: what was too large and the limit.
        detail: String,
    },

    /// A step's result is larger than the server's payload limit, so it cannot be recorded:
    /// the step fails. Retrying the run would only run the step again, so a run that fails
    /// with this error is not retried.
    #[error("step {key} failed: its result is over the server's payload limit ({detail})")]
    StepResultTooLarge {
        /// The step key.
        key: String,
        /// The server's explanation: what was too large and the limit.
        detail: String,
    },

    /// The worker no longer holds the lease on this run (it was cancelled, reclaimed or
    /// finished elsewhere); the run must be dropped without reporting anything more.
    #[error("lease lost on run {run_id}: the run was cancelled or reclaimed")]
    LeaseLost {
        /// The run whose lease was lost.
        run_id: RunId,
    },

    /// A payload could not be serialized or deserialized.
    #[error("json error: {0}")]
    Serde(#[from] serde_json::Error),

    /// The run ended in the `failed` state.
    #[error("run {run_id} failed: {message}")]
    RunFailed {
        /// The failed run.
        run_id: RunId,
        /// The error the run recorded.
        message: String,
    },

    /// The run was cancelled.
    #[error("run {run_id} was cancelled")]
    RunCancelled {
        /// The cancelled run.
        run_id: RunId,
    },

    /// A step returned an error (after all its attempts).
    #[error("step {key} failed: {message}")]
    StepFailed {
        /// The step key (`name`, `name#2`, ...).
        key: String,
        /// The step's error, formatted with its causes.
        message: String,
    },

    /// Replay found a recorded step where the workflow code now asks for a different one:
    /// the workflow code is not deterministic (or changed while runs were in flight).
    #[error(
        "non-deterministic workflow: step {position} was recorded as {recorded:?} but the code now asks for {requested:?}"
    )]
    NonDeterminism {
        /// 0-based step position in the run.
        position: u32,
        /// The step key recorded in the journal at that position.
        recorded: String,
        /// The step key the code asked for.
        requested: String,
    },

    /// The last attempt of a step did not finish within the step's per-attempt timeout.
    #[error("step {key} timed out after {timeout:?}")]
    StepTimedOut {
        /// The step key (`name`, `name#2`, ...).
        key: String,
        /// The per-attempt timeout.
        timeout: std::time::Duration,
    },

    /// The operation did not finish in the time allowed.
    #[error("timed out")]
    Timeout,

    /// Invalid configuration (bad URL, zero concurrency, no workflows registered, ...).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A step's result, reported after the workflow had moved on (see
    /// [`WorkflowContext::run`](crate::WorkflowContext::run)), could not be recorded; the run
    /// is not completed, and its next attempt runs the step again.
    #[error("{0}")]
    Unreported(String),
    /// A request sent together with others in one batch (a worker's report, a client's
    /// start) could not be delivered: the batch failed as a whole, e.g. because the server
    /// could not be reached. A start may or may not have been made.
    #[error("batched request failed: {0}")]
    BatchFailed(String),
}
