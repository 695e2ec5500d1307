//! The SQLite store: the embedded, zero-setup default for one machine.
//!
//! One server owns the database file: it holds an exclusive lock on it while it runs, so a
//! second server on the same file refuses to start instead of racing the first. All access
//! goes through one connection (WAL mode, `synchronous = FULL`), so read-then-write
//! transactions never contend and a committed step survives a crash of the process. Wake-ups
//! are delivered in process once a change commits.

use std::fs::{File, TryLockError};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Backoff, Completion, Created, Error, FireOutcome, NewRun, NewSchedule, NewWorker, Result,
    RunFilter, ScheduleFilter, ScheduleFire, ScheduleKey, ScheduleUpdate, StepReport, StepWrite,
    Store, Suspend, far_future, retry_after,
};
use crate::engine::wakeup::Wakeups;
use crate::model::{Lease, RetryPolicy, Run, RunId, RunStatus, Step, Task, Worker, WorkerId};
use crate::schedule::{Overlap, Schedule, ScheduleId};

/// The columns of [`Run`], as a literal so statements stay literal SQL.
macro_rules! run_columns {
    () => {
        "id, workflow, queue, status, input, output, error, attempts, retries, created_at, \
         started_at, finished_at, wake_at, waiting_for, parent_id, idempotency_key, deadline_at, \
         schedule_id, scheduled_at"
    };
}

/// The columns of [`Step`].
macro_rules! step_columns {
    () => {
        "key, position, status, output, error, attempts, created_at, finished_at"
    };
}

/// The columns of [`Schedule`].
macro_rules! schedule_columns {
    () => {
        "id, name, workflow, queue, cron, time_zone, input, retries, overlap, catch_up_window_ms, \
         catch_up_max, paused, next_fire_at, last_fired_at, buffered_at, version, created_at, \
         updated_at"
    };
}

/// A wake-up, sent once the change it announces has committed.
#[derive(Debug, Clone)]
enum Note {
    /// A run on this queue may be due.
    Queue(String),
    /// This run ended.
    RunDone(RunId),
}

/// A store in an SQLite database file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    notes: broadcast::Sender<Note>,
    /// Held for the store's lifetime: the exclusive lock on the database file.
    _lock: Option<Arc<File>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database `url` names: `sqlite://PATH` or
    /// `sqlite::memory:`.
    ///
    /// # Errors
    /// [`Error::Locked`] when another server holds the file; database errors otherwise.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let filename = options.get_filename().to_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let in_memory = url.contains(":memory:") || filename.as_os_str().is_empty();
        let lock = if in_memory {
            None
        } else {
            let file = File::open(&filename)
                .map_err(|e| Error::Config(format!("{}: {e}", filename.display())))?;
            match file.try_lock() {
                Ok(()) => Some(Arc::new(file)),
                Err(TryLockError::WouldBlock) => {
                    pool.close().await;
                    return Err(Error::Locked(filename.display().to_string()));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::Config(format!(
                        "cannot lock {}: {e}",
                        filename.display()
                    )));
                }
            }
        };
        let (notes, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            notes,
            _lock: lock,
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn notify(&self, note: Note) {
        // No receiver just means no server is listening (e.g. in store tests).
        let _ = self.notes.send(note);
    }

    fn notify_queues(&self, mut queues: Vec<String>) {
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            self.notify(Note::Queue(queue));
        }
    }

    /// Checks that `lease_token` is the run's current, unexpired lease.
    async fn ensure_lease<'e, E>(
        executor: E,
        run: RunId,
        lease_token: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Sqlite>,
    {
        let held: Option<bool> = sqlx::query_scalar(
            r"select status = 'running' and lease_token = ?2 and lease_expires_at > ?3
              from runs where id = ?1",
        )
        .bind(run)
        .bind(lease_token)
        .bind(now)
        .fetch_optional(executor)
        .await?;
        match held {
            None => Err(Error::NotFound(format!("run {run}"))),
            Some(false) => Err(Error::LeaseLost(run)),
            Some(true) => Ok(()),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn listen(&self, wakeups: Arc<Wakeups>, shutdown: CancellationToken) {
        let mut notes = self.notes.subscribe();
        loop {
            let note = tokio::select! {
                () = shutdown.cancelled() => return,
                note = notes.recv() => note,
            };
            match note {
                Ok(Note::Queue(queue)) => wakeups.queues.wake(&queue),
                Ok(Note::RunDone(run)) => wakeups.runs.wake(&run),
                Err(broadcast::error::RecvError::Lagged(_)) => wakeups.wake_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn create_run(&self, new: &NewRun, now: DateTime<Utc>) -> Result<Created> {
        let mut conn = self.pool.acquire().await?;
        let created = insert_run(&mut conn, new, now).await?;
        if !created.existing && new.claim.is_none() {
            self.notify(Note::Queue(new.queue.clone()));
        }
        Ok(created)
    }

    async fn create_runs(&self, runs: &[NewRun], now: DateTime<Utc>) -> Vec<Result<Created>> {
        let batch = async {
            let mut tx = self.pool.begin().await?;
            let mut results = Vec::with_capacity(runs.len());
            for new in runs {
                results.push(insert_run(&mut tx, new, now).await);
            }
            tx.commit().await?;
            Ok::<_, Error>(results)
        };
        match batch.await {
            Ok(results) => {
                let queues = runs
                    .iter()
                    .zip(&results)
                    .filter(|(new, r)| new.claim.is_none() && r.as_ref().is_ok_and(|c| !c.existing))
                    .map(|(new, _)| new.queue.clone())
                    .collect();
                self.notify_queues(queues);
                results
            }
            Err(_) => {
                let mut results = Vec::with_capacity(runs.len());
                for new in runs {
                    results.push(self.create_run(new, now).await);
                }
                results
            }
        }
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        sqlx::query_as::<_, Run>(concat!(
            "select ",
            run_columns!(),
            " from runs where id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("run {id}")))
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let runs = sqlx::query_as::<_, Run>(concat!(
            "select ",
            run_columns!(),
            r" from runs
              where (?1 is null or workflow = ?1)
                and (?2 is null or queue = ?2)
                and (?3 is null or status = ?3)
                and (?4 is null or id < ?4)
                and (?6 is null or parent_id = ?6)
                and (?7 is null or schedule_id = ?7)
              order by id desc
              limit ?5"
        ))
        .bind(filter.workflow.as_deref())
        .bind(filter.queue.as_deref())
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .bind(filter.parent_id)
        .bind(filter.schedule_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(runs)
    }

    async fn list_steps(&self, id: RunId) -> Result<Vec<Step>> {
        let steps = sqlx::query_as::<_, Step>(concat!(
            "select ",
            step_columns!(),
            " from steps where run_id = ?1 order by position, key"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        if steps.is_empty() {
            self.get_run(id).await?;
        }
        Ok(steps)
    }

    async fn cancel_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let cancelled: Vec<RunId> = sqlx::query_scalar(
            r"update runs
              set status = 'cancelled', finished_at = ?2, updated_at = ?2,
                  lease_token = null, lease_expires_at = null, wake_at = null, waiting_for = null
              where status in ('pending', 'running', 'sleeping', 'waiting')
                and id in (
                  with recursive tree(id) as (
                      select id from runs where id = ?1
                      union all
                      select r.id from runs r join tree t on r.parent_id = t.id
                  )
                  select id from tree
              )
              returning id",
        )
        .bind(id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        if !cancelled.contains(&id) {
            drop(tx);
            let run = self.get_run(id).await?;
            return Err(Error::Conflict(format!(
                "run {id} already ended as {}",
                run.status
            )));
        }
        let parent_queue = wake_parent(&mut tx, id, now).await?;
        tx.commit().await?;
        for run in cancelled {
            self.notify(Note::RunDone(run));
        }
        self.notify_queues(parent_queue.into_iter().collect());
        self.get_run(id).await
    }

    async fn register_worker(&self, new: &NewWorker, now: DateTime<Utc>) -> Result<WorkerId> {
        let id = WorkerId::new();
        sqlx::query(
            r"insert into workers
                  (id, queue, workflows, capacity, hostname, status, registered_at, last_heartbeat_at)
              values (?1, ?2, ?3, ?4, ?5, 'online', ?6, ?6)",
        )
        .bind(id)
        .bind(&new.queue)
        .bind(Json(&new.workflows))
        .bind(i64::from(new.capacity))
        .bind(new.hostname.as_deref())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    async fn get_worker(&self, id: WorkerId) -> Result<Worker> {
        let row: Option<(WorkerId, String, Json<Vec<String>>, i32, Option<String>)> =
            sqlx::query_as(
                "select id, queue, workflows, capacity, hostname from workers where id = ?1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let (id, queue, Json(workflows), capacity, hostname) =
            row.ok_or_else(|| Error::NotFound(format!("worker {id}")))?;
        Ok(Worker {
            id,
            queue,
            workflows,
            capacity,
            hostname,
        })
    }

    async fn heartbeat(
        &self,
        worker: WorkerId,
        held: &[Lease],
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query(
            "update workers set last_heartbeat_at = ?2, status = 'online' where id = ?1",
        )
        .bind(worker)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if found.rows_affected() == 0 {
            return Err(Error::NotFound(format!("worker {worker}")));
        }
        let mut lost = Vec::new();
        for lease in held {
            let extended = sqlx::query(
                r"update runs set lease_expires_at = ?4, updated_at = ?5
                  where id = ?1 and lease_token = ?2 and worker_id = ?3
                    and status = 'running' and lease_expires_at > ?5",
            )
            .bind(lease.run_id)
            .bind(lease.lease_token)
            .bind(worker)
            .bind(lease_expires_at)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if extended.rows_affected() == 0 {
                lost.push(lease.run_id);
            }
        }
        tx.commit().await?;
        Ok(lost)
    }

    async fn deregister_worker(&self, worker: WorkerId, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("update workers set status = 'offline' where id = ?1")
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Err(Error::NotFound(format!("worker {worker}")));
        }
        let queues: Vec<String> = sqlx::query_scalar(
            r"update runs
              set status = 'pending', lease_token = null, lease_expires_at = null,
                  available_at = ?2, updated_at = ?2
              where worker_id = ?1 and status = 'running'
              returning queue",
        )
        .bind(worker)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let released = queues.len() as u64;
        self.notify_queues(queues);
        Ok(released)
    }

    async fn claim(
        &self,
        worker: &Worker,
        max: u32,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>> {
        let workflows = super::distinct_workflows(worker);
        if workflows.is_empty() {
            return Ok(Vec::new());
        }
        // Parameters: ?1 queue, ?2 now, ?3 how many, ?4 lease expiry, ?5 worker, then the
        // workflows from ?6 on.
        let due = per_workflow(workflows.len(), 6, |workflow| {
            format!(
                "select * from (select id, available_at from runs where {RUNS_DUE} \
                 and workflow = {workflow} and available_at <= ?2 \
                 order by available_at, id limit ?3)"
            )
        });
        let statement = format!(
            "update runs \
             set status = 'running', attempts = attempts + 1, lease_token = randomblob(16), \
                 lease_expires_at = ?4, worker_id = ?5, started_at = coalesce(started_at, ?2), \
                 updated_at = ?2, wake_at = null, waiting_for = null \
             where id in (select id from ({due}) order by available_at, id limit ?3) \
             returning id, workflow, input, attempts, lease_token, available_at"
        );
        let mut tx = self.pool.begin().await?;
        let mut query = sqlx::query_as(AssertSqlSafe(statement))
            .bind(&worker.queue)
            .bind(now)
            .bind(i64::from(max))
            .bind(lease_expires_at)
            .bind(worker.id);
        for workflow in &workflows {
            query = query.bind(*workflow);
        }
        let mut claimed: Vec<(RunId, String, Json<Value>, i32, Uuid, DateTime<Utc>)> =
            query.fetch_all(&mut *tx).await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        claimed.sort_by_key(|run| (run.5, run.0));
        // A run's first attempt has no journal yet: steps are only written under a lease.
        let resumed: Vec<RunId> = claimed
            .iter()
            .filter(|run| run.3 > 1)
            .map(|run| run.0)
            .collect();
        let journal: Vec<(RunId, String, i32, Json<Value>)> = if resumed.is_empty() {
            Vec::new()
        } else {
            let mut journal_query = QueryBuilder::<Sqlite>::new(
                "select run_id, key, position, output from steps where status = 'completed' and run_id in (",
            );
            let mut ids = journal_query.separated(", ");
            for run in resumed {
                ids.push_bind(run);
            }
            journal_query.push(") order by run_id, position");
            journal_query.build_query_as().fetch_all(&mut *tx).await?
        };
        tx.commit().await?;
        let claimed = claimed
            .into_iter()
            .map(|(id, workflow, input, attempt, token, _)| (id, workflow, input, attempt, token))
            .collect();
        Ok(super::tasks(claimed, journal, lease_expires_at))
    }

    async fn next_due(&self, worker: &Worker) -> Result<Option<DateTime<Utc>>> {
        let workflows = super::distinct_workflows(worker);
        if workflows.is_empty() {
            return Ok(None);
        }
        // Parameters: ?1 queue, then the workflows from ?2 on.
        let firsts = per_workflow(workflows.len(), 2, |workflow| {
            format!(
                "select * from (select available_at from runs where {RUNS_DUE} \
                 and workflow = {workflow} order by available_at limit 1)"
            )
        });
        let mut query = sqlx::query_scalar(AssertSqlSafe(format!(
            "select min(available_at) from ({firsts})"
        )))
        .bind(&worker.queue);
        for workflow in &workflows {
            query = query.bind(*workflow);
        }
        let next: Option<DateTime<Utc>> = query.fetch_one(&self.pool).await?;
        Ok(next)
    }

    async fn record_step(
        &self,
        run: RunId,
        lease_token: Uuid,
        report: &StepReport,
        now: DateTime<Utc>,
    ) -> Result<Step> {
        let mut tx = self.pool.begin().await?;
        let step = write_step(&mut tx, run, lease_token, report, now).await?;
        tx.commit().await?;
        Ok(step)
    }

    async fn record_steps(&self, writes: &[StepWrite], now: DateTime<Utc>) -> Vec<Result<Step>> {
        let batch = async {
            let mut tx = self.pool.begin().await?;
            let mut results = Vec::with_capacity(writes.len());
            for w in writes {
                results.push(write_step(&mut tx, w.run, w.lease_token, &w.report, now).await);
            }
            tx.commit().await?;
            Ok::<_, Error>(results)
        };
        match batch.await {
            Ok(results) => results,
            Err(_) => {
                let mut results = Vec::with_capacity(writes.len());
                for w in writes {
                    results.push(self.record_step(w.run, w.lease_token, &w.report, now).await);
                }
                results
            }
        }
    }

    async fn complete_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        output: &Value,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let (done, parent_queue) = finish_run(&mut tx, run, lease_token, output, now).await?;
        tx.commit().await?;
        self.notify(Note::RunDone(run));
        self.notify_queues(parent_queue.into_iter().collect());
        Ok(done)
    }

    async fn complete_runs(
        &self,
        completions: &[Completion],
        now: DateTime<Utc>,
    ) -> Vec<Result<Run>> {
        let batch = async {
            let mut tx = self.pool.begin().await?;
            let mut results = Vec::with_capacity(completions.len());
            for c in completions {
                results.push(finish_with_steps(&mut tx, c, now).await);
            }
            tx.commit().await?;
            Ok::<_, Error>(results)
        };
        match batch.await {
            Ok(results) => {
                let mut queues = Vec::new();
                let results = results
                    .into_iter()
                    .map(|result| {
                        result.map(|(run, parent_queue)| {
                            self.notify(Note::RunDone(run.id));
                            queues.extend(parent_queue);
                            run
                        })
                    })
                    .collect();
                self.notify_queues(queues);
                results
            }
            Err(_) => {
                let mut results = Vec::with_capacity(completions.len());
                for c in completions {
                    results.push(super::complete_with_steps(self, c, now).await);
                }
                results
            }
        }
    }

    async fn fail_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        error: &str,
        retryable: bool,
        backoff: Backoff,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        Self::ensure_lease(&mut *tx, run, lease_token, now).await?;
        let (attempts, retries, policy): (i32, i32, Option<Json<RetryPolicy>>) =
            sqlx::query_as("select attempts, retries, retry_policy from runs where id = ?1")
                .bind(run)
                .fetch_one(&mut *tx)
                .await?;
        let retry = retry_after(
            attempts,
            retries,
            policy.as_ref().map(|p| &p.0),
            error,
            retryable,
            backoff,
        );
        let available_at = super::after(now, retry.unwrap_or_default());
        let failed = sqlx::query_as::<_, Run>(concat!(
            r"update runs
              set status = case when ?3 then 'pending' else 'failed' end,
                  available_at = ?4,
                  finished_at = case when ?3 then null else ?5 end,
                  error = ?2, updated_at = ?5, lease_token = null, lease_expires_at = null
              where id = ?1
              returning ",
            run_columns!()
        ))
        .bind(run)
        .bind(error)
        .bind(retry.is_some())
        .bind(available_at)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let parent_queue = if retry.is_some() {
            None
        } else {
            wake_parent(&mut tx, run, now).await?
        };
        tx.commit().await?;
        if retry.is_some() {
            self.notify(Note::Queue(failed.queue.clone()));
        } else {
            self.notify(Note::RunDone(run));
            self.notify_queues(parent_queue.into_iter().collect());
        }
        Ok(failed)
    }

    async fn suspend_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        suspend: &Suspend,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        Self::ensure_lease(&mut *tx, run, lease_token, now).await?;
        let signal_waiting = match &suspend.signal {
            Some(name) => {
                sqlx::query_scalar::<_, bool>(
                    r"select exists (select 1 from signals
                                 where run_id = ?1 and name = ?2 and consumed_key is null)",
                )
                .bind(run)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
            }
            None => false,
        };
        let child_ended = match suspend.child {
            Some(child) => sqlx::query_scalar::<_, bool>(
                "select status in ('completed', 'failed', 'cancelled') from runs where id = ?1",
            )
            .bind(child)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(true),
            None => false,
        };
        let timer_passed = suspend.until.is_some_and(|until| until <= now);
        let ready = signal_waiting || child_ended || timer_passed || suspend.yields();
        let (status, available_at) = if ready {
            (RunStatus::Pending, now)
        } else {
            (suspend.status(), suspend.until.unwrap_or_else(far_future))
        };
        let suspended = sqlx::query_as::<_, Run>(concat!(
            r"update runs
              set status = ?2, available_at = ?3, wake_at = ?4, waiting_for = ?5, updated_at = ?6,
                  lease_token = null, lease_expires_at = null
              where id = ?1
              returning ",
            run_columns!()
        ))
        .bind(run)
        .bind(status)
        .bind(available_at)
        .bind(if ready { None } else { suspend.until })
        .bind(if ready { None } else { suspend.waiting_for() })
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify(Note::Queue(suspended.queue.clone()));
        Ok(suspended)
    }

    async fn send_signal(
        &self,
        run: RunId,
        name: &str,
        payload: &Value,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let target: Option<(RunStatus, String)> =
            sqlx::query_as("select status, queue from runs where id = ?1")
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
        let (status, queue) = target.ok_or_else(|| Error::NotFound(format!("run {run}")))?;
        if status.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {run} already ended as {status}; only a run that has not ended takes signals"
            )));
        }
        sqlx::query(
            "insert into signals (run_id, name, payload, created_at) values (?1, ?2, ?3, ?4)",
        )
        .bind(run)
        .bind(name)
        .bind(Json(payload))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let woken = status == RunStatus::Waiting;
        if woken {
            sqlx::query(
                r"update runs
                  set status = 'pending', available_at = ?2, wake_at = null, waiting_for = null,
                      updated_at = ?2
                  where id = ?1",
            )
            .bind(run)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if woken {
            self.notify(Note::Queue(queue));
        }
        Ok(())
    }

    async fn receive_signal(
        &self,
        run: RunId,
        lease_token: Uuid,
        name: &str,
        key: &str,
        position: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Step>> {
        let mut tx = self.pool.begin().await?;
        Self::ensure_lease(&mut *tx, run, lease_token, now).await?;
        let next: Option<(i64, Json<Value>)> = sqlx::query_as(
            r"select id, payload from signals
              where run_id = ?1 and name = ?2 and consumed_key is null
              order by id limit 1",
        )
        .bind(run)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((signal, Json(payload))) = next else {
            return Ok(None);
        };
        sqlx::query("update signals set consumed_key = ?2 where id = ?1")
            .bind(signal)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let step = sqlx::query_as::<_, Step>(concat!(
            r"insert into steps
                  (run_id, key, position, status, output, attempts, created_at, finished_at)
              values (?1, ?2, ?3, 'completed', ?4, 1, ?5, ?5)
              on conflict (run_id, key) do update set status = 'completed',
                  output = excluded.output, finished_at = excluded.finished_at
              returning ",
            step_columns!()
        ))
        .bind(run)
        .bind(key)
        .bind(i64::from(position))
        .bind(Json(serde_json::json!({ "payload": payload })))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(step))
    }

    async fn expire_deadlines(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<RunId> = sqlx::query_scalar(
            r"update runs
              set status = 'failed', finished_at = ?1, updated_at = ?1,
                  error = 'run timed out: its deadline passed at ' || deadline_at,
                  lease_token = null, lease_expires_at = null, wake_at = null, waiting_for = null
              where deadline_at < ?1 and status in ('pending', 'running', 'sleeping', 'waiting')
              returning id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut queues = Vec::new();
        for run in &expired {
            queues.extend(wake_parent(&mut tx, *run, now).await?);
        }
        tx.commit().await?;
        for run in &expired {
            self.notify(Note::RunDone(*run));
        }
        self.notify_queues(queues);
        Ok(expired.len() as u64)
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<u64> {
        let queues: Vec<String> = sqlx::query_scalar(
            r"update runs
              set status = 'pending', lease_token = null, lease_expires_at = null,
                  available_at = ?1, updated_at = ?1
              where status = 'running' and lease_expires_at < ?1
              returning queue",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let requeued = queues.len() as u64;
        self.notify_queues(queues);
        Ok(requeued)
    }

    async fn mark_workers_offline(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "update workers set status = 'offline' where status = 'online' and last_heartbeat_at < ?1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn create_schedule(&self, new: &NewSchedule, now: DateTime<Utc>) -> Result<Schedule> {
        let spec = &new.spec;
        let created = sqlx::query_as::<_, Schedule>(concat!(
            r"insert into schedules
                  (id, name, workflow, queue, cron, time_zone, input, retries, overlap,
                   catch_up_window_ms, catch_up_max, paused, next_fire_at, version, created_at,
                   updated_at)
              values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1, ?14, ?14)
              on conflict do nothing
              returning ",
            schedule_columns!()
        ))
        .bind(new.id)
        .bind(new.name.as_deref())
        .bind(&spec.workflow)
        .bind(&spec.queue)
        .bind(&spec.cron)
        .bind(&spec.time_zone)
        .bind(Json(&spec.input))
        .bind(i64::from(spec.retries))
        .bind(spec.overlap)
        .bind(spec.catch_up.window_ms.map(to_i64))
        .bind(i64::from(spec.catch_up.max))
        .bind(new.paused)
        .bind(new.next_fire_at)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        created.ok_or_else(|| {
            Error::Conflict(match &new.name {
                Some(name) => format!("a schedule with id {} or name {name:?} exists", new.id),
                None => format!("a schedule with id {} exists", new.id),
            })
        })
    }

    async fn get_schedule(&self, key: &ScheduleKey) -> Result<Schedule> {
        let found = match key {
            ScheduleKey::Id(id) => {
                sqlx::query_as::<_, Schedule>(concat!(
                    "select ",
                    schedule_columns!(),
                    " from schedules where id = ?1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            ScheduleKey::Name(name) => {
                sqlx::query_as::<_, Schedule>(concat!(
                    "select ",
                    schedule_columns!(),
                    " from schedules where name = ?1"
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        found.ok_or_else(|| match key {
            ScheduleKey::Id(id) => schedule_not_found(id),
            ScheduleKey::Name(name) => schedule_not_found(format!("{name:?}")),
        })
    }

    async fn list_schedules(&self, filter: &ScheduleFilter) -> Result<Vec<Schedule>> {
        let schedules = sqlx::query_as::<_, Schedule>(concat!(
            "select ",
            schedule_columns!(),
            r" from schedules
              where (?1 is null or workflow = ?1)
                and (?2 is null or queue = ?2)
                and (?3 is null or paused = ?3)
                and (?4 is null or id < ?4)
              order by id desc
              limit ?5"
        ))
        .bind(filter.workflow.as_deref())
        .bind(filter.queue.as_deref())
        .bind(filter.paused)
        .bind(filter.before)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(schedules)
    }

    async fn update_schedule(
        &self,
        id: ScheduleId,
        version: i64,
        update: &ScheduleUpdate,
        now: DateTime<Utc>,
    ) -> Result<Schedule> {
        let spec = &update.spec;
        let updated = sqlx::query_as::<_, Schedule>(concat!(
            r"update schedules
              set workflow = ?3, queue = ?4, cron = ?5, time_zone = ?6, input = ?7, retries = ?8,
                  overlap = ?9, catch_up_window_ms = ?10, catch_up_max = ?11,
                  next_fire_at = ?12, version = version + 1, updated_at = ?13
              where id = ?1 and version = ?2
              returning ",
            schedule_columns!()
        ))
        .bind(id)
        .bind(version)
        .bind(&spec.workflow)
        .bind(&spec.queue)
        .bind(&spec.cron)
        .bind(&spec.time_zone)
        .bind(Json(&spec.input))
        .bind(i64::from(spec.retries))
        .bind(spec.overlap)
        .bind(spec.catch_up.window_ms.map(to_i64))
        .bind(i64::from(spec.catch_up.max))
        .bind(update.next_fire_at)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match updated {
            Some(schedule) => Ok(schedule),
            None => {
                self.get_schedule(&ScheduleKey::Id(id)).await?;
                Err(Error::Conflict(format!(
                    "schedule {id} changed while it was being updated; try again"
                )))
            }
        }
    }

    async fn set_schedule_paused(
        &self,
        id: ScheduleId,
        paused: bool,
        next_fire_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Schedule> {
        let changed = sqlx::query_as::<_, Schedule>(concat!(
            r"update schedules
              set paused = ?2, next_fire_at = ?3, version = version + 1, updated_at = ?4
              where id = ?1 and paused <> ?2
              returning ",
            schedule_columns!()
        ))
        .bind(id)
        .bind(paused)
        .bind(next_fire_at)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match changed {
            Some(schedule) => Ok(schedule),
            None => self.get_schedule(&ScheduleKey::Id(id)).await,
        }
    }

    async fn delete_schedule(&self, id: ScheduleId) -> Result<()> {
        let deleted = sqlx::query("delete from schedules where id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(schedule_not_found(id));
        }
        Ok(())
    }

    async fn trigger_schedule(&self, id: ScheduleId, now: DateTime<Utc>) -> Result<RunId> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String, Json<Value>, i32)> =
            sqlx::query_as("select workflow, queue, input, retries from schedules where id = ?1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let (workflow, queue, Json(input), retries) = row.ok_or_else(|| schedule_not_found(id))?;
        let run = (workflow.as_str(), queue.as_str(), &input, retries);
        let started = insert_scheduled_run(&mut tx, id, run, now, now).await?;
        tx.commit().await?;
        match started {
            Some(run) => {
                self.notify(Note::Queue(queue));
                Ok(run)
            }
            None => Err(Error::Conflict(format!(
                "schedule {id} already has a run for {now}"
            ))),
        }
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Schedule>> {
        let due = sqlx::query_as::<_, Schedule>(concat!(
            "select ",
            schedule_columns!(),
            r" from schedules
              where not paused and (next_fire_at <= ?1 or buffered_at is not null)
              order by next_fire_at
              limit ?2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(due)
    }

    async fn next_schedule_fire(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<DateTime<Utc>> =
            sqlx::query_scalar("select min(next_fire_at) from schedules where not paused")
                .fetch_one(&self.pool)
                .await?;
        Ok(next)
    }

    async fn fire_schedule(&self, fire: &ScheduleFire, now: DateTime<Utc>) -> Result<FireOutcome> {
        // One connection serializes every transaction, so the version check alone makes a
        // second fire from the same plan a no-op.
        let mut tx = self.pool.begin().await?;
        let row: Option<(
            String,
            String,
            Json<Value>,
            i32,
            Overlap,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(
            r"select workflow, queue, input, retries, overlap, buffered_at
                  from schedules
                  where id = ?1 and version = ?2 and not paused",
        )
        .bind(fire.id)
        .bind(fire.version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((workflow, queue, Json(input), retries, overlap, buffered)) = row else {
            return Ok(FireOutcome::default());
        };
        let active: Option<RunId> = sqlx::query_scalar(
            r"select id from runs
              where schedule_id = ?1 and status not in ('completed', 'failed', 'cancelled')
              order by id limit 1",
        )
        .bind(fire.id)
        .fetch_optional(&mut *tx)
        .await?;
        let resolution = overlap.resolve(buffered, &fire.due, active.is_some());
        let mut started = Vec::new();
        for &at in &resolution.start {
            let run = (workflow.as_str(), queue.as_str(), &input, retries);
            if let Some(id) = insert_scheduled_run(&mut tx, fire.id, run, at, now).await? {
                started.push((id, at));
            }
        }
        sqlx::query(
            r"update schedules
              set next_fire_at = ?2, buffered_at = ?3, last_fired_at = coalesce(?4, last_fired_at),
                  version = version + 1, updated_at = ?5
              where id = ?1",
        )
        .bind(fire.id)
        .bind(fire.next_fire_at)
        .bind(resolution.buffered)
        .bind(resolution.start.last().copied())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if !started.is_empty() {
            self.notify(Note::Queue(queue));
        }
        let blocked_by = resolution
            .buffered
            .and(active.or_else(|| started.last().map(|s| s.0)));
        Ok(FireOutcome {
            applied: true,
            started,
            skipped: resolution.skipped,
            buffered: resolution.buffered,
            blocked_by,
        })
    }
}

/// The run a scheduled fire (or trigger) starts; `None` when (schedule, due time) already
/// has one.
async fn insert_scheduled_run(
    conn: &mut sqlx::SqliteConnection,
    schedule: ScheduleId,
    (workflow, queue, input, retries): (&str, &str, &Value, i32),
    scheduled_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<RunId>> {
    let id: Option<RunId> = sqlx::query_scalar(
        r"insert into runs
              (id, workflow, queue, status, input, retries, available_at, created_at, updated_at,
               schedule_id, scheduled_at)
          values (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?6, ?6, ?7, ?8)
          on conflict (schedule_id, scheduled_at) where schedule_id is not null do nothing
          returning id",
    )
    .bind(RunId::new())
    .bind(workflow)
    .bind(queue)
    .bind(Json(input))
    .bind(retries)
    .bind(now)
    .bind(schedule)
    .bind(scheduled_at)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(id)
}

fn schedule_not_found(id: impl std::fmt::Display) -> Error {
    Error::NotFound(format!("schedule {id}"))
}

/// Durations the API accepts as `u64` milliseconds are stored as integers; larger saturate.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts a new run (or finds the run its idempotency key already started) on `conn`.
async fn insert_run(
    conn: &mut sqlx::SqliteConnection,
    new: &NewRun,
    now: DateTime<Utc>,
) -> Result<Created> {
    // At most twice: the second try follows the release of an expired key.
    for _ in 0..2 {
        let id = RunId::new();
        // A claimed start is held at once (and wakes no poll: see the callers).
        let claim = new.claim.as_ref();
        let inserted = sqlx::query(
            r"insert into runs
                  (id, workflow, queue, status, input, retries, available_at, created_at, updated_at,
                   parent_id, idempotency_key, deadline_at, retry_policy,
                   attempts, lease_token, lease_expires_at, worker_id, started_at)
              values (?1, ?2, ?3, case when ?12 is null then 'pending' else 'running' end,
                      ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11,
                      case when ?12 is null then 0 else 1 end, ?12, ?13, ?14,
                      case when ?12 is null then null else ?7 end)
              on conflict (idempotency_key) where idempotency_key is not null do nothing",
        )
        .bind(id)
        .bind(&new.workflow)
        .bind(&new.queue)
        .bind(Json(&new.input))
        .bind(i64::from(new.retries))
        .bind(new.available_at.max(now))
        .bind(now)
        .bind(new.parent_id)
        .bind(new.idempotency_key.as_deref())
        .bind(new.deadline_at)
        .bind(new.retry_policy.as_ref().map(Json))
        .bind(claim.map(|c| c.lease_token))
        .bind(claim.map(|c| c.lease_expires_at))
        .bind(claim.map(|c| c.worker))
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Created {
                id,
                existing: false,
                claimed: claim.is_some(),
            });
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let (existing, workflow, Json(input), created_at, parent_id): (
            RunId,
            String,
            Json<Value>,
            DateTime<Utc>,
            Option<RunId>,
        ) = sqlx::query_as(
            "select id, workflow, input, created_at, parent_id from runs where idempotency_key = ?1",
        )
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
        let expired = parent_id.is_none()
            && new
                .idempotency_cutoff
                .is_some_and(|cutoff| created_at < cutoff);
        if !expired {
            return super::same_start(key, existing, (&workflow, &input), new);
        }
        sqlx::query("update runs set idempotency_key = null where id = ?1")
            .bind(existing)
            .execute(&mut *conn)
            .await?;
    }
    Err(Error::Conflict(format!(
        "idempotency key {:?} could not be taken; try again",
        new.idempotency_key.as_deref().unwrap_or_default()
    )))
}

/// Records a step outcome under the run's lease on `conn` (first write wins).
async fn write_step(
    conn: &mut sqlx::SqliteConnection,
    run: RunId,
    lease_token: Uuid,
    report: &StepReport,
    now: DateTime<Utc>,
) -> Result<Step> {
    SqliteStore::ensure_lease(&mut *conn, run, lease_token, now).await?;
    let written = sqlx::query_as::<_, Step>(concat!(
        r"insert into steps
              (run_id, key, position, status, output, error, attempts, created_at, finished_at)
          values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
          on conflict (run_id, key) do update
              set position = excluded.position, status = excluded.status,
                  output = excluded.output, error = excluded.error,
                  attempts = steps.attempts + excluded.attempts,
                  finished_at = excluded.finished_at
              where steps.status = 'failed'
          returning ",
        step_columns!()
    ))
    .bind(run)
    .bind(&report.key)
    .bind(i64::from(report.position))
    .bind(report.status)
    .bind(report.output.as_ref().map(Json))
    .bind(report.error.as_deref())
    .bind(i64::from(report.attempts.max(1)))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let step = match written {
        Some(step) => step,
        None => {
            sqlx::query_as::<_, Step>(concat!(
                "select ",
                step_columns!(),
                " from steps where run_id = ?1 and key = ?2"
            ))
            .bind(run)
            .bind(&report.key)
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok(step)
}

/// Records the steps `c` carries, then completes its run, on `conn`.
async fn finish_with_steps(
    conn: &mut sqlx::SqliteConnection,
    c: &Completion,
    now: DateTime<Utc>,
) -> Result<(Run, Option<String>)> {
    for step in &c.steps {
        write_step(&mut *conn, c.run, c.lease_token, step, now).await?;
    }
    finish_run(conn, c.run, c.lease_token, &c.output, now).await
}

/// Completes a run under its lease on `conn` and wakes its waiting parent; returns the run
/// and the parent's queue if it was woken.
async fn finish_run(
    conn: &mut sqlx::SqliteConnection,
    run: RunId,
    lease_token: Uuid,
    output: &Value,
    now: DateTime<Utc>,
) -> Result<(Run, Option<String>)> {
    let done = sqlx::query_as::<_, Run>(concat!(
        r"update runs
          set status = 'completed', output = ?3, error = null, finished_at = ?4,
              updated_at = ?4, lease_token = null, lease_expires_at = null
          where id = ?1 and lease_token = ?2 and status = 'running' and lease_expires_at > ?4
          returning ",
        run_columns!()
    ))
    .bind(run)
    .bind(lease_token)
    .bind(Json(output))
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(done) = done else {
        let check = SqliteStore::ensure_lease(&mut *conn, run, lease_token, now).await;
        return Err(lease_error(check, run));
    };
    let parent_queue = wake_parent(conn, run, now).await?;
    Ok((done, parent_queue))
}

/// Makes the parent of `child` due again if it is waiting (a woken run that finds nothing to
/// continue with suspends again). Returns the parent's queue when it was woken.
async fn wake_parent(
    conn: &mut sqlx::SqliteConnection,
    child: RunId,
    now: DateTime<Utc>,
) -> Result<Option<String>> {
    let queue: Option<String> = sqlx::query_scalar(
        r"update runs
          set status = 'pending', available_at = ?2, wake_at = null, waiting_for = null,
              updated_at = ?2
          where status = 'waiting' and id = (select parent_id from runs where id = ?1)
          returning queue",
    )
    .bind(child)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(queue)
}

/// Explains why a fenced update matched no row, given the lease check that followed it.
fn lease_error(check: Result<()>, run: RunId) -> Error {
    match check {
        Err(e) => e,
        // The lease looks held now: it changed between the two statements.
        Ok(()) => Error::LeaseLost(run),
    }
}

/// The runs of a worker's queue (`?1`) that it may claim once due, but for the workflow:
/// `runs_due_idx` serves this filter, one workflow at a time, in `available_at, id` order.
const RUNS_DUE: &str = "status in ('pending', 'sleeping', 'waiting') and queue = ?1";

/// The most terms SQLite takes in one compound `select` (`SQLITE_MAX_COMPOUND_SELECT`).
const MAX_COMPOUND_SELECT: usize = 500;

/// `select_of(parameter)` for each of a worker's `count` workflows, bound from parameter
/// `?first` on, joined with `union all` (in nested groups of at most
/// [`MAX_COMPOUND_SELECT`], since a worker may name up to 1,000 workflows). Statements that
/// look for a worker's runs take its workflows one by one this way, so each workflow's due
/// runs are read in due order from `runs_due_idx` (each part stops at its limit) and a
/// backlog of another workflow in the same queue is never read.
fn per_workflow(count: usize, first: usize, select_of: impl Fn(String) -> String) -> String {
    let parts: Vec<String> = (0..count)
        .map(|n| select_of(format!("?{}", first + n)))
        .collect();
    parts
        .chunks(MAX_COMPOUND_SELECT)
        .map(|group| format!("select * from ({})", group.join(" union all ")))
        .collect::<Vec<_>>()
        .join(" union all ")
}
