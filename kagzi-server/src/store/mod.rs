//! Storage: every SQL statement Kagzi runs lives below this module.

mod postgres;

pub use postgres::{PgStore, QUEUE_CHANNEL, RUN_DONE_CHANNEL};

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::{RunId, RunStatus, StepStatus};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request contradicts the current state (e.g. cancelling a finished run).
    #[error("{0}")]
    Conflict(String),
    /// The report's lease expired, was reclaimed, or the run is no longer running.
    #[error("run {0} is not held under this lease (it expired, was reclaimed, or the run ended)")]
    LeaseLost(RunId),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrating the database failed (or it is newer than this server).
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The workflow name.
    pub workflow: String,
    /// The queue.
    pub queue: String,
    /// The JSON input.
    pub input: Value,
    /// How many times a failed run is retried.
    pub retries: u32,
    /// When the run becomes due.
    pub available_at: DateTime<Utc>,
}

/// A worker to register.
#[derive(Debug, Clone)]
pub struct NewWorker {
    /// The queue it polls.
    pub queue: String,
    /// The workflows it can run.
    pub workflows: Vec<String>,
    /// How many runs it executes at once.
    pub capacity: u32,
    /// The host it runs on.
    pub hostname: Option<String>,
}

/// A step outcome reported by a worker.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step key.
    pub key: String,
    /// The step's position in the run.
    pub position: u32,
    /// Completed or failed.
    pub status: StepStatus,
    /// The output of a completed step.
    pub output: Option<Value>,
    /// The error of a failed step.
    pub error: Option<String>,
    /// How many attempts this report covers.
    pub attempts: u32,
}

/// Filters and page position for listing runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs on this queue.
    pub queue: Option<String>,
    /// Only runs in this status.
    pub status: Option<RunStatus>,
    /// Only runs older than this one (the cursor).
    pub before: Option<RunId>,
    /// At most this many runs.
    pub limit: u32,
}

/// How a failed run is retried: exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}
