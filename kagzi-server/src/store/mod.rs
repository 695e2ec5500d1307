//! Storage: the [`Store`] trait and its two implementations, PostgreSQL ([`PgStore`], for
//! production and many server replicas) and SQLite ([`SqliteStore`], the embedded single-node
//! default). Every SQL statement Kagzi runs lives below this module.
//!
//! Each dialect is a folder of the same files, one per resource (`runs`, `steps`, `workers`,
//! `signals`, `schedules`, `batch`), holding the same functions around its own SQL; the
//! `Store` impl of both is one table (`by_resource`). What does not depend on the dialect is
//! decided once, in pure functions: `decide` and `retry`.

#[macro_use]
mod by_resource;
#[macro_use]
mod columns;
mod decide;
mod filter;
mod postgres;
mod retry;
mod sqlite;

pub use decide::{after, far_future};
pub use postgres::{PgStore, QUEUE_CHANNEL, RUN_DONE_CHANNEL};
pub use retry::{retry_after, retry_delay};
pub use sqlite::SqliteStore;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::wakeup::Wakeups;
use crate::model::{
    Lease, RetryPolicy, Run, RunId, RunStatus, Step, StepStatus, Task, Worker, WorkerId,
};
use crate::schedule::{CatchUp, Overlap, Schedule, ScheduleId};
pub use kagzi_proto::{BulkOutcome, PatchUsage, QueueStats, RunCounts, Signal, WorkerStatus};

/// Where runs, steps and workers are kept. Every method that depends on the time takes `now`,
/// so tests control the clock. Every change that makes work due or ends a run wakes the
/// waiters of every server on the same database (see [`Store::listen`]).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Applies the migrations this server ships.
    ///
    /// # Errors
    /// When a migration fails, or the database was migrated by a newer Kagzi.
    async fn migrate(&self) -> Result<()>;

    /// The database pool's connections now.
    fn pool_stats(&self) -> PoolStats;

    /// Checks that the database answers.
    ///
    /// # Errors
    /// When it does not.
    async fn ping(&self) -> Result<()>;

    /// Delivers the store's wake-ups (work may be due on a queue, a run ended) to `wakeups`
    /// until `shutdown`.
    async fn listen(&self, wakeups: Arc<Wakeups>, shutdown: CancellationToken);

    /// Inserts a pending run and wakes the pollers of its queue. With an idempotency key that
    /// an existing run already has, nothing is inserted and that run is returned instead.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key belongs to a run of another workflow or input.
    async fn create_run(&self, new: &NewRun, now: DateTime<Utc>) -> Result<Created>;

    /// Starts several runs at once, as [`create_run`](Self::create_run) would one by one:
    /// one result per run, in order. Stores that can insert them in one statement do; this
    /// default starts them one by one.
    async fn create_runs(&self, runs: &[NewRun], now: DateTime<Utc>) -> Vec<Result<Created>> {
        let mut results = Vec::with_capacity(runs.len());
        for new in runs {
            results.push(self.create_run(new, now).await);
        }
        results
    }

    /// One run.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id.
    async fn get_run(&self, id: RunId) -> Result<Run>;

    /// Runs matching `filter`, newest first.
    ///
    /// # Errors
    /// On a database failure.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;

    /// A run's journal, in position order.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run.
    async fn list_steps(&self, id: RunId) -> Result<Vec<Step>>;

    /// Cancels a run that has not ended, and all its descendants that have not ended; a lease
    /// on any of them stops being valid, and a parent waiting for the run is woken.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, [`Error::Conflict`] for one that already ended.
    async fn cancel_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run>;

    /// Registers a worker.
    ///
    /// # Errors
    /// On a database failure.
    async fn register_worker(&self, new: &NewWorker, now: DateTime<Utc>) -> Result<WorkerId>;

    /// A registered worker.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown worker.
    async fn get_worker(&self, id: WorkerId) -> Result<Worker>;

    /// Records a heartbeat: the worker is online, and the leases it still holds are extended
    /// to `lease_expires_at`. Returns the runs it named but no longer holds.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown worker.
    async fn heartbeat(
        &self,
        worker: WorkerId,
        held: &[Lease],
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>>;

    /// Marks a worker offline and hands the runs it holds back to `pending`. Returns how many.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown worker.
    async fn deregister_worker(&self, worker: WorkerId, now: DateTime<Utc>) -> Result<u64>;

    /// Claims up to `max` due runs of `worker`'s queue and workflows, oldest due first, each
    /// under a new lease until `lease_expires_at`, and returns them with their journals.
    /// Concurrent claims never hand out the same run.
    ///
    /// # Errors
    /// On a database failure.
    async fn claim(
        &self,
        worker: &Worker,
        max: u32,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>>;

    /// When the next pending run of `worker`'s queue and workflows becomes due, if any.
    ///
    /// # Errors
    /// On a database failure.
    async fn next_due(&self, worker: &Worker) -> Result<Option<DateTime<Utc>>>;

    /// Claims as [`claim`](Self::claim) does and, when that claims nothing, also answers
    /// [`next_due`](Self::next_due) (`None` when it claimed runs): what a poll asks before it
    /// waits. Stores that can do both in one statement do; this default makes both calls.
    ///
    /// # Errors
    /// On a database failure.
    async fn claim_or_next_due(
        &self,
        worker: &Worker,
        max: u32,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Task>, Option<DateTime<Utc>>)> {
        let tasks = self.claim(worker, max, lease_expires_at, now).await?;
        if !tasks.is_empty() {
            return Ok((tasks, None));
        }
        Ok((tasks, self.next_due(worker).await?))
    }

    /// Records a step outcome under the run's lease. A completed step is recorded once: a
    /// later report for the same key returns the recorded entry unchanged. A failed entry is
    /// replaced by the next report.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when `lease_token` is not the run's current, unexpired lease;
    /// [`Error::NotFound`] for an unknown run.
    async fn record_step(
        &self,
        run: RunId,
        lease_token: Uuid,
        report: &StepReport,
        now: DateTime<Utc>,
    ) -> Result<Step>;

    /// Records several step reports (of any runs) at once, as [`record_step`](Self::record_step)
    /// would one by one: one result per write, in order. Stores that can write them in one
    /// statement and one commit do; this default records them one by one.
    async fn record_steps(&self, writes: &[StepWrite], now: DateTime<Utc>) -> Vec<Result<Step>> {
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(
                self.record_step(write.run, write.lease_token, &write.report, now)
                    .await,
            );
        }
        results
    }

    /// Completes a run under its lease with `output`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease is not held; [`Error::NotFound`] for an unknown run.
    async fn complete_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        output: &Value,
        now: DateTime<Utc>,
    ) -> Result<Run>;

    /// Completes several runs (each under its lease) at once, as
    /// [`complete_run`](Self::complete_run) would one by one: one result per completion, in
    /// order. Stores that can write them in one transaction do; this default completes them
    /// one by one.
    async fn complete_runs(
        &self,
        completions: &[Completion],
        now: DateTime<Utc>,
    ) -> Vec<Result<Run>> {
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            results.push(complete_with_steps(self, c, now).await);
        }
        results
    }

    /// Fails the current attempt of a run under its lease. While retries remain (and the
    /// error is retryable) the run goes back to `pending`, due after `backoff`; otherwise it
    /// ends `failed`.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease is not held; [`Error::NotFound`] for an unknown run.
    async fn fail_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        error: &str,
        retryable: bool,
        backoff: Backoff,
        now: DateTime<Utc>,
    ) -> Result<Run>;

    /// Suspends a run under its lease: it sleeps until `suspend.until`, or waits for a signal or
    /// a child run (with `until` as a timeout). When what it waits for already happened, the
    /// run is made due at once instead. Either way the lease ends.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease is not held; [`Error::NotFound`] for an unknown run.
    async fn suspend_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        suspend: &Suspend,
        now: DateTime<Utc>,
    ) -> Result<Run>;

    /// Delivers a signal to a run that has not ended; a run waiting for a signal is woken.
    /// Signals are kept until received, in the order they arrived.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, [`Error::Conflict`] for one that ended.
    async fn send_signal(
        &self,
        run: RunId,
        name: &str,
        payload: &Value,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Under the run's lease, takes the oldest signal named `name` not yet received and
    /// records it as the completed step `key` with output `{"payload": ...}`, which it
    /// returns; `None` when no such signal is waiting.
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease is not held; [`Error::NotFound`] for an unknown run.
    async fn receive_signal(
        &self,
        run: RunId,
        lease_token: Uuid,
        name: &str,
        key: &str,
        position: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Step>>;

    /// Fails every run whose deadline passed before `now`, whatever it was doing. Returns how
    /// many.
    ///
    /// # Errors
    /// On a database failure.
    async fn expire_deadlines(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Returns every running run whose lease expired before `now` to `pending`, and wakes the
    /// pollers of their queues. Returns how many runs were re-queued.
    ///
    /// # Errors
    /// On a database failure.
    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<u64>;

    /// Marks online workers silent since `cutoff` as offline. Returns how many.
    ///
    /// # Errors
    /// On a database failure.
    async fn mark_workers_offline(&self, cutoff: DateTime<Utc>) -> Result<u64>;

    /// Stores a new schedule.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a schedule with the same id or name exists.
    async fn create_schedule(&self, new: &NewSchedule, now: DateTime<Utc>) -> Result<Schedule>;

    /// One schedule, by id or by name.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown schedule.
    async fn get_schedule(&self, key: &ScheduleKey) -> Result<Schedule>;

    /// Schedules matching `filter`, newest first.
    ///
    /// # Errors
    /// On a database failure.
    async fn list_schedules(&self, filter: &ScheduleFilter) -> Result<Vec<Schedule>>;

    /// Replaces a schedule's settings and next due time, if it is still at `version`
    /// (compare-and-set against the scheduler and other writers).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown schedule; [`Error::Conflict`] when it changed since
    /// `version`.
    async fn update_schedule(
        &self,
        id: ScheduleId,
        version: i64,
        update: &ScheduleUpdate,
        now: DateTime<Utc>,
    ) -> Result<Schedule>;

    /// Pauses a schedule (`next_fire_at` becomes null) or resumes it from `next_fire_at`.
    /// Pausing a paused schedule or resuming a running one changes nothing.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown schedule.
    async fn set_schedule_paused(
        &self,
        id: ScheduleId,
        paused: bool,
        next_fire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Schedule>;

    /// Deletes a schedule. Its runs stay, still naming it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown schedule.
    async fn delete_schedule(&self, id: ScheduleId) -> Result<()>;

    /// Starts a run of the schedule now, whatever its due times, pause and overlap policy,
    /// with `scheduled_at` = `now`; wakes the pollers of its queue.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown schedule.
    async fn trigger_schedule(&self, id: ScheduleId, now: DateTime<Utc>) -> Result<RunId>;

    /// Up to `limit` schedules that are not paused and have a due time at or before `now` or a
    /// buffered due time, oldest due first.
    ///
    /// # Errors
    /// On a database failure.
    async fn due_schedules(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Schedule>>;

    /// The earliest next due time of any schedule that is not paused.
    ///
    /// # Errors
    /// On a database failure.
    async fn next_schedule_fire(&self) -> Result<Option<DateTime<Utc>>>;

    /// Fires a schedule as the scheduler planned it, in one transaction: if the schedule is
    /// still at `fire.version` and not paused, applies its overlap policy (looking at its runs
    /// that have not ended), inserts one run per due time to start — never two for the same
    /// (schedule, due time) — moves `next_fire_at` on and wakes the pollers of its queue.
    /// When the schedule changed since the plan (another replica fired it, or it was updated,
    /// paused or deleted), changes nothing and says so.
    ///
    /// # Errors
    /// On a database failure.
    async fn fire_schedule(&self, fire: &ScheduleFire, now: DateTime<Utc>) -> Result<FireOutcome>;

    /// How many runs matching `filter` (its status, cursor and limit aside) are in each
    /// status, each count stopping at `cap`: the cost is bounded by `cap` per status, not by
    /// the size of the table.
    ///
    /// # Errors
    /// On a database failure.
    async fn count_runs(&self, filter: &RunFilter, cap: u64) -> Result<RunCounts>;

    /// The signals sent to run `run`, received or not, in the order they were sent.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run.
    async fn list_signals(&self, run: RunId) -> Result<Vec<Signal>>;

    /// Registered workers matching `filter`, newest first, each with the runs it holds.
    ///
    /// # Errors
    /// On a database failure.
    async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerInfo>>;

    /// Sends ended run `id` (failed or cancelled) back to `pending` as the same run: its
    /// journal is kept, so finished steps are replayed, not run again; its attempts count on,
    /// but its retry policy counts again from this retry; its deadline is cleared.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run; [`Error::Conflict`] for a run that has not
    /// ended or that completed.
    async fn retry_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run>;

    /// Starts a new run of run `id`'s workflow whose journal begins as a copy of the original's
    /// completed steps before `fork.from_step` (none when it names no step), linked to it by
    /// `forked_from`. The original is not changed.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run, or a `from_step` its journal does not hold.
    async fn fork_run(&self, id: RunId, fork: &Fork, now: DateTime<Utc>) -> Result<Run>;

    /// Deletes ended run `id` with its steps and signals.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown run; [`Error::Conflict`] for a run that has not
    /// ended, or that has a child that has not ended.
    async fn delete_run(&self, id: RunId) -> Result<()>;

    /// Deletes up to `limit` runs that ended in `status` before `cutoff` (their steps and
    /// signals with them), oldest first, skipping any with a child that has not ended and any
    /// another replica is deleting; answers how many it deleted.
    ///
    /// # Errors
    /// On a database failure.
    async fn reap_runs(&self, status: RunStatus, cutoff: DateTime<Utc>, limit: u32) -> Result<u64>;

    /// Whether runs of `workflow` that have not ended may still take the old branch of
    /// `ctx.patched(patch)`.
    ///
    /// # Errors
    /// On a database failure.
    async fn patch_usage(&self, workflow: &str, patch: &str) -> Result<PatchUsage>;

    /// Cancels, as [`cancel_run`](Self::cancel_run) does one by one, up to `filter.limit`
    /// runs that match `filter` and have not ended, newest first; answers the runs it
    /// cancelled and whether more may match.
    ///
    /// # Errors
    /// On a database failure.
    async fn cancel_runs(&self, filter: &RunFilter, now: DateTime<Utc>) -> Result<BulkOutcome> {
        let candidates = bulk_candidates(self, filter, &ACTIVE).await?;
        let mut changed = Vec::new();
        for id in candidates.ids {
            match self.cancel_run(id, now).await {
                Ok(_) => changed.push(id),
                // Ended (or cancelled with its parent) meanwhile: nothing to do.
                Err(Error::Conflict(_) | Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(BulkOutcome {
            changed,
            more: candidates.more,
        })
    }

    /// Retries, as [`retry_run`](Self::retry_run) does one by one, up to `filter.limit`
    /// failed or cancelled runs that match `filter`, newest first; answers the runs it sent
    /// back to `pending` and whether more may match.
    ///
    /// # Errors
    /// On a database failure.
    async fn retry_runs(&self, filter: &RunFilter, now: DateTime<Utc>) -> Result<BulkOutcome> {
        let candidates =
            bulk_candidates(self, filter, &[RunStatus::Failed, RunStatus::Cancelled]).await?;
        let mut changed = Vec::new();
        for id in candidates.ids {
            match self.retry_run(id, now).await {
                Ok(_) => changed.push(id),
                Err(Error::Conflict(_) | Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(BulkOutcome {
            changed,
            more: candidates.more,
        })
    }

    /// The runs that have not ended, by queue and workflow and state, with the online workers
    /// that could take them, as of `now`. The cost grows with the runs in flight, not with
    /// the runs that ended.
    ///
    /// # Errors
    /// On a database failure.
    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<Vec<QueueStats>>;
}

/// A database pool's connections at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle or in use).
    pub open: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

/// The default database: an SQLite file in the working directory.
pub const DEFAULT_DB_URL: &str = "sqlite://kagzi.db";

/// Opens the store `url` names: `postgres://` or `postgresql://` for PostgreSQL (a pool of at
/// most `max_connections`), `sqlite://PATH` (created if missing) or `sqlite::memory:` for
/// SQLite.
///
/// # Errors
/// [`Error::Config`] for another scheme, [`Error::Locked`] when another server holds the SQLite
/// file, and database errors when it cannot be reached.
pub async fn open(url: &str, max_connections: u32) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url, max_connections).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(Error::Config(format!(
            "unsupported database URL {:?}: use postgres://... or sqlite://PATH",
            redact(url)
        )))
    }
}

/// `scheme://user:password@host/...` with the password replaced by `<redacted>`, for
/// messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        _ => url.to_owned(),
    }
}

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
    /// The database URL or settings are unusable.
    #[error("{0}")]
    Config(String),
    /// Another server already uses this SQLite database file.
    #[error(
        "{0} is in use by another Kagzi server: SQLite is single-node; stop the other server, \
         or use PostgreSQL (KAGZI_DB_URL=postgres://...) to run several"
    )]
    Locked(String),
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The result of [`Store::create_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// The run's id.
    pub id: RunId,
    /// Whether an idempotency key matched a run that already existed.
    pub existing: bool,
    /// Whether the new run was written claimed, as [`NewRun::claim`] asked (it is `running`).
    pub claimed: bool,
}

/// What a suspended run waits for. With none of the three, the run is simply due again at
/// once (it yields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suspend {
    /// Wake at this time (the end of a sleep, or a timeout).
    pub until: Option<DateTime<Utc>>,
    /// Wake when a signal of this name arrives.
    pub signal: Option<String>,
    /// Wake when this child run ends.
    pub child: Option<RunId>,
}

impl Suspend {
    /// Whether it names nothing to wait for: the run is due again at once.
    pub fn yields(&self) -> bool {
        self.until.is_none() && self.signal.is_none() && self.child.is_none()
    }

    /// The status a run suspended this way shows.
    pub fn status(&self) -> RunStatus {
        if self.signal.is_some() || self.child.is_some() {
            RunStatus::Waiting
        } else {
            RunStatus::Sleeping
        }
    }

    /// What the run waits for, as shown in `waiting_for`.
    pub fn waiting_for(&self) -> Option<String> {
        match (&self.signal, self.child) {
            (Some(name), _) => Some(format!("signal:{name}")),
            (None, Some(child)) => Some(format!("child:{child}")),
            (None, None) => None,
        }
    }
}

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
    /// The run that starts this one as its child.
    pub parent_id: Option<RunId>,
    /// Makes the start idempotent: a second start with the same key returns the first run.
    pub idempotency_key: Option<String>,
    /// A run without a parent that took the key before this time no longer holds it: the
    /// start releases the key from it and starts a new run. `None`: keys are kept for good.
    pub idempotency_cutoff: Option<DateTime<Utc>>,
    /// When the run times out.
    pub deadline_at: Option<DateTime<Utc>>,
    /// How a failed run is retried (overrides `retries`).
    pub retry_policy: Option<RetryPolicy>,
    /// Start the run already claimed by a worker whose poll waits for it (direct dispatch,
    /// see [`crate::engine::dispatch`]); `None` starts it `pending`.
    pub claim: Option<Claim>,
}

/// A claim written with a run's start: the run starts `running` on its first attempt, held
/// by `worker` under `lease_token` until `lease_expires_at`, and no poll is woken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The worker that holds the run.
    pub worker: WorkerId,
    /// The worker's build id, recorded on the run.
    pub build_id: Option<String>,
    /// Whether the run is pinned to that build (the worker pins its workflow).
    pub pinned: bool,
    /// The lease's fencing token.
    pub lease_token: Uuid,
    /// When the lease runs out unless a heartbeat extends it.
    pub lease_expires_at: DateTime<Utc>,
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
    /// The version of its code.
    pub build_id: Option<String>,
    /// The workflows whose runs it pins to its build.
    pub pinned_workflows: Vec<String>,
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

/// One step report of a batch for [`Store::record_steps`].
#[derive(Debug, Clone)]
pub struct StepWrite {
    /// The run.
    pub run: RunId,
    /// The lease the report is made under.
    pub lease_token: Uuid,
    /// The report.
    pub report: StepReport,
}

/// Records the steps a completion carries, then completes the run, one by one.
///
/// # Errors
/// As [`Store::record_step`] and [`Store::complete_run`].
pub async fn complete_with_steps<S: Store + ?Sized>(
    store: &S,
    c: &Completion,
    now: DateTime<Utc>,
) -> Result<Run> {
    for step in &c.steps {
        store.record_step(c.run, c.lease_token, step, now).await?;
    }
    store
        .complete_run(c.run, c.lease_token, &c.output, now)
        .await
}

/// One completion of a batch for [`Store::complete_runs`].
#[derive(Debug, Clone)]
pub struct Completion {
    /// The run.
    pub run: RunId,
    /// The lease the run is held under.
    pub lease_token: Uuid,
    /// The workflow's output.
    pub output: Value,
    /// Completed steps reported with the completion: recorded (first write wins) before the
    /// run completes; if one cannot be, the run does not complete.
    pub steps: Vec<StepReport>,
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
    /// Only children of this run.
    pub parent_id: Option<RunId>,
    /// Only runs started by this schedule.
    pub schedule_id: Option<ScheduleId>,
    /// Only runs started with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only runs created at or after this time.
    pub created_after: Option<DateTime<Utc>>,
    /// Only runs created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Only runs older than this one (the cursor).
    pub before: Option<RunId>,
    /// At most this many runs.
    pub limit: u32,
}

/// What a fork of a run changes; see [`Store::fork_run`].
#[derive(Debug, Clone, Default)]
pub struct Fork {
    /// The step to run again (copy the steps before it); `None`: from the start.
    pub from_step: Option<String>,
    /// The new run's input; `None`: the original's.
    pub input: Option<Value>,
    /// The new run's queue; `None`: the original's.
    pub queue: Option<String>,
}

/// The statuses of runs that have not ended.
pub const ACTIVE: [RunStatus; 4] = [
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Sleeping,
    RunStatus::Waiting,
];

/// The runs a bulk action may change, newest first, and whether more may match.
struct Candidates {
    ids: Vec<RunId>,
    more: bool,
}

/// Up to `filter.limit` runs matching `filter` in one of `statuses` (or in the filter's own
/// status, when it is one of them), newest first: one listing per status, each served by
/// the status index.
async fn bulk_candidates<S: Store + ?Sized>(
    store: &S,
    filter: &RunFilter,
    statuses: &[RunStatus],
) -> Result<Candidates> {
    let wanted: Vec<RunStatus> = match filter.status {
        Some(status) => statuses.iter().copied().filter(|s| *s == status).collect(),
        None => statuses.to_vec(),
    };
    let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
    let mut found = Vec::new();
    for status in wanted {
        let listing = RunFilter {
            status: Some(status),
            limit: filter.limit.saturating_add(1),
            ..filter.clone()
        };
        found.extend(store.list_runs(&listing).await?.into_iter().map(|r| r.id));
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    let more = found.len() > limit;
    found.truncate(limit);
    Ok(Candidates { ids: found, more })
}

/// Which workers [`Store::list_workers`] returns.
#[derive(Debug, Clone, Default)]
pub struct WorkerFilter {
    /// Only workers of this queue.
    pub queue: Option<String>,
    /// Only workers in this status.
    pub status: Option<WorkerStatus>,
    /// Only workers registered before this one (the cursor).
    pub before: Option<WorkerId>,
    /// At most this many workers.
    pub limit: u32,
}

/// A registered worker as operators see it, with the runs it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// What it registered as.
    pub worker: Worker,
    /// Whether it is heartbeating.
    pub status: WorkerStatus,
    /// When it registered.
    pub registered_at: DateTime<Utc>,
    /// When it last heartbeat.
    pub last_heartbeat_at: DateTime<Utc>,
    /// How many runs it holds now.
    pub runs_held: u32,
}

impl From<WorkerInfo> for kagzi_proto::Worker {
    fn from(info: WorkerInfo) -> Self {
        kagzi_proto::Worker {
            id: info.worker.id,
            queue: info.worker.queue,
            workflows: info.worker.workflows,
            capacity: crate::model::count(info.worker.capacity),
            hostname: info.worker.hostname,
            build_id: info.worker.build_id,
            pinned_workflows: info.worker.pinned_workflows,
            status: info.status,
            registered_at: info.registered_at,
            last_heartbeat_at: info.last_heartbeat_at,
            runs_held: info.runs_held,
        }
    }
}

/// How a failed run is retried: exponential backoff with jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

/// A schedule's settings: what it starts, when, and its policies.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// The workflow each run executes.
    pub workflow: String,
    /// The queue the runs go to.
    pub queue: String,
    /// The cron expression (checked by the caller).
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub time_zone: String,
    /// The input of every run.
    pub input: Value,
    /// How many times a failed run is retried.
    pub retries: u32,
    /// What happens at a due time while the previous run is still going.
    pub overlap: Overlap,
    /// Which missed due times start after downtime.
    pub catch_up: CatchUp,
}

/// A schedule to create.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Its id.
    pub id: ScheduleId,
    /// Its unique name, if any.
    pub name: Option<String>,
    /// Its settings.
    pub spec: ScheduleSpec,
    /// Whether it starts paused.
    pub paused: bool,
    /// Its first due time (null when paused).
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// New settings for a schedule.
#[derive(Debug, Clone)]
pub struct ScheduleUpdate {
    /// The settings.
    pub spec: ScheduleSpec,
    /// The next due time under the new settings (null when paused).
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Names a schedule: by id or by its unique name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleKey {
    /// By id.
    Id(ScheduleId),
    /// By name.
    Name(String),
}

/// Filters and page position for listing schedules, newest first.
#[derive(Debug, Clone, Default)]
pub struct ScheduleFilter {
    /// Only schedules of this workflow.
    pub workflow: Option<String>,
    /// Only schedules on this queue.
    pub queue: Option<String>,
    /// Only paused (true) or only active (false) schedules.
    pub paused: Option<bool>,
    /// Only schedules older than this one (the cursor).
    pub before: Option<ScheduleId>,
    /// At most this many schedules.
    pub limit: u32,
}

/// One firing of a schedule, as the scheduler planned it from the schedule at `version`.
#[derive(Debug, Clone)]
pub struct ScheduleFire {
    /// The schedule.
    pub id: ScheduleId,
    /// The version the plan was made from; the fire applies only if it still holds.
    pub version: i64,
    /// The due times that came (after catch-up), oldest first.
    pub due: Vec<DateTime<Utc>>,
    /// The next due time after this fire.
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// What firing a schedule did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FireOutcome {
    /// False when the schedule had changed since the plan, and nothing was done.
    pub applied: bool,
    /// The runs started, with their due times.
    pub started: Vec<(RunId, DateTime<Utc>)>,
    /// Due times dropped by the overlap policy.
    pub skipped: usize,
    /// The due time left waiting for the running run to end (`buffer_one`).
    pub buffered: Option<DateTime<Utc>>,
    /// A run of the schedule that had not ended, which held back the buffered due time.
    pub blocked_by: Option<RunId>,
}
