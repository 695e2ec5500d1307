//! The PostgreSQL store. Every statement is here, in the `kagzi` schema.
//!
//! Wake-ups travel through `NOTIFY` in the same statement as the change they announce, so every
//! server replica on the database hears them once the change commits:
//! [`QUEUE_CHANNEL`] carries a queue name when a run on it may have become due, and
//! [`RUN_DONE_CHANNEL`] carries a run id when the run ended.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection};
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

/// The `NOTIFY` channel that says "a run on this queue may be due" (payload: the queue).
pub const QUEUE_CHANNEL: &str = "kagzi_queue";
/// The `NOTIFY` channel that says "this run ended" (payload: the run id).
pub const RUN_DONE_CHANNEL: &str = "kagzi_run_done";

/// A pooled connection idle this long is pinged before it is used again, so one the database
/// dropped meanwhile (a restart) is replaced instead of failing a request.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The columns of [`Run`], as a literal so statements stay literal SQL.
macro_rules! run_columns {
    () => {
        "id, workflow, queue, status, input, output, error, attempts, retries, created_at, \
         started_at, finished_at, wake_at, waiting_for, parent_id, idempotency_key, deadline_at, \
         schedule_id, scheduled_at"
    };
}

/// First write wins for a step: an insert into `kagzi.steps` that meets a recorded step
/// leaves it as it is, unless that record is a failed attempt, which the new one replaces
/// (its attempts added up).
macro_rules! step_first_write_wins {
    () => {
        " on conflict (run_id, key) do update \
             set position = excluded.position, status = excluded.status, \
                 output = excluded.output, error = excluded.error, \
                 attempts = kagzi.steps.attempts + excluded.attempts, \
                 finished_at = excluded.finished_at \
             where kagzi.steps.status = 'failed' "
    };
}

/// Where a statement that looks for a worker's runs names its workflows: replaced by
/// [`worker_workflows`] before it runs.
const WORKER_WORKFLOWS: &str = "{worker_workflows}";

/// A worker's `count` workflows (bound as `$2`, distinct) as the rows `w.workflow`:
/// `(values (($2::text[])[1]), ..)`. Statements that look for a worker's runs take its
/// workflows one by one (a lateral subquery filtered by `runs_of_workflow!`), so each
/// workflow's due runs are read in due order from `runs_due_idx` and a backlog of another
/// workflow in the same queue is never read. A list of `count` rows (where `unnest` would be
/// estimated at 10) lets PostgreSQL's generic plan cost what each claim's own plan costs, so
/// it is reused rather than the statement planned again at every poll (~1 ms each).
fn worker_workflows(count: usize) -> String {
    let rows: Vec<String> = (1..=count)
        .map(|n| format!("(($2::text[])[{n}])"))
        .collect();
    format!(" (values {}) w(workflow) ", rows.join(", "))
}

/// `statement` (with [`WORKER_WORKFLOWS`] in it) for a worker with `count` distinct
/// workflows.
fn for_workflows(statement: &'static str, count: usize) -> AssertSqlSafe<String> {
    AssertSqlSafe(statement.replace(WORKER_WORKFLOWS, &worker_workflows(count)))
}

/// Ten rows that match nothing, appended to the run ids of a batch statement that locks each
/// of its runs by id. PostgreSQL estimates an array parameter at ten elements in a statement's
/// generic plan, and a plan whose cost grows with the batch is otherwise planned anew for
/// every batch smaller than that (about 1 ms of planning each); with the padding each batch
/// costs at least what the generic plan does, so that plan is kept.
macro_rules! pad_batch {
    () => {
        "array_fill(null::uuid, array[10])"
    };
}

/// The runs of one of a worker's workflows (`w.workflow`, see [`worker_workflows`]) in its
/// queue (`$1`) that it may claim once due; `runs_due_idx` serves this filter in
/// `available_at, id` order.
macro_rules! runs_of_workflow {
    () => {
        " status in ('pending', 'sleeping', 'waiting') and queue = $1 and workflow = w.workflow "
    };
}

/// When the next run of one of a worker's workflows (`w.workflow`) comes due: the first
/// entry of that workflow in `runs_due_idx`.
macro_rules! next_due_of_workflow {
    () => {
        concat!(
            " select available_at from kagzi.runs where",
            runs_of_workflow!(),
            "order by available_at limit 1 "
        )
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

/// A store backed by a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool of at most `max_connections` to `url`.
    ///
    /// # Errors
    /// [`Error::Config`] with the cause when the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        // One direct connection first, so an unreachable or misconfigured database is reported
        // with its cause rather than as a pool timeout.
        let probe = PgConnection::connect(url).await.map_err(|e| {
            Error::Config(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                super::redact(url)
            ))
        })?;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings a connection both as it returns to the pool and, by default, again
            // as it is taken: two extra round trips per statement, one of them in front of
            // it. Only a connection idle for a while is pinged before use; one used moments
            // ago passed its release ping then.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection listening on both channels.
    async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([QUEUE_CHANNEL, RUN_DONE_CHANNEL])
            .await?;
        Ok(listener)
    }

    /// Checks that `lease_token` is the run's current, unexpired lease.
    async fn ensure_lease(&self, run: RunId, lease_token: Uuid, now: DateTime<Utc>) -> Result<()> {
        let held: Option<bool> = sqlx::query_scalar(
            r"select status = 'running' and lease_token = $2 and lease_expires_at > $3
              from kagzi.runs where id = $1",
        )
        .bind(run)
        .bind(lease_token)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match held {
            None => Err(not_found(run)),
            Some(false) => Err(Error::LeaseLost(run)),
            Some(true) => Ok(()),
        }
    }

    /// Explains why a fenced update matched no row.
    async fn lease_error(&self, run: RunId, lease_token: Uuid, now: DateTime<Utc>) -> Error {
        match self.ensure_lease(run, lease_token, now).await {
            Err(e) => e,
            // The lease looks held now: it changed between the two statements.
            Ok(()) => Error::LeaseLost(run),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        let mut migrator = sqlx::migrate!("../migrations/postgres");
        migrator.create_schema("kagzi");
        migrator.dangerous_set_table_name("kagzi._sqlx_migrations");
        migrator.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn listen(&self, wakeups: Arc<Wakeups>, shutdown: CancellationToken) {
        loop {
            let mut listener = match self.listener().await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for notifications; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // Anything sent before LISTEN took effect is covered by waking everyone once.
            wakeups.wake_all();
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = listener.try_recv() => next,
                };
                match next {
                    Ok(Some(n)) if n.channel() == QUEUE_CHANNEL => {
                        wakeups.queues.wake(&n.payload().to_owned())
                    }
                    Ok(Some(n)) => {
                        if let Ok(id) = n.payload().parse::<Uuid>() {
                            wakeups.runs.wake(&RunId(id));
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("notification connection was lost and re-established");
                        wakeups.wake_all();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    async fn create_run(&self, new: &NewRun, now: DateTime<Utc>) -> Result<Created> {
        // At most twice: the second try follows the release of an expired key.
        for _ in 0..2 {
            let id = RunId::new();
            // A claimed start is held at once and wakes no poll.
            let claim = new.claim.as_ref();
            let inserted: Option<(RunId, Option<String>)> = sqlx::query_as(
                r"with inserted as (
                      insert into kagzi.runs
                          (id, workflow, queue, status, input, retries, available_at, created_at,
                           updated_at, parent_id, idempotency_key, deadline_at, retry_policy,
                           attempts, lease_token, lease_expires_at, worker_id, started_at)
                      values ($1, $2, $3,
                              case when $13::uuid is null then 'pending' else 'running' end,
                              $4, $5, $6, $7, $7, $9, $10, $11, $12,
                              case when $13::uuid is null then 0 else 1 end, $13, $14, $15,
                              case when $13::uuid is null then null else $7 end)
                      on conflict (idempotency_key) where idempotency_key is not null do nothing
                      returning id, queue, lease_token
                  )
                  select id,
                         case when lease_token is null then pg_notify($8, queue)::text end
                  from inserted",
            )
            .bind(id)
            .bind(&new.workflow)
            .bind(&new.queue)
            .bind(Json(&new.input))
            .bind(to_i32(new.retries))
            .bind(new.available_at.max(now))
            .bind(now)
            .bind(QUEUE_CHANNEL)
            .bind(new.parent_id)
            .bind(new.idempotency_key.as_deref())
            .bind(new.deadline_at)
            .bind(new.retry_policy.as_ref().map(Json))
            .bind(claim.map(|c| c.lease_token))
            .bind(claim.map(|c| c.lease_expires_at))
            .bind(claim.map(|c| c.worker))
            .fetch_optional(&self.pool)
            .await?;
            if inserted.is_some() {
                return Ok(Created {
                    id,
                    existing: false,
                    claimed: claim.is_some(),
                });
            }
            let key = new.idempotency_key.as_deref().unwrap_or_default();
            let holder: Option<KeyHolder> = sqlx::query_as(
                r"select id, workflow, input, created_at, parent_id from kagzi.runs
                  where idempotency_key = $1",
            )
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            // Gone between the two statements (released by a concurrent start): try again.
            let Some(holder) = holder else { continue };
            if !holder.expired(new) {
                return super::same_start(key, holder.id, (&holder.workflow, &holder.input.0), new);
            }
            sqlx::query(
                "update kagzi.runs set idempotency_key = null where id = $1 and idempotency_key = $2",
            )
            .bind(holder.id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        }
        Err(Error::Conflict(format!(
            "idempotency key {:?} is being taken by concurrent starts; try again",
            new.idempotency_key.as_deref().unwrap_or_default()
        )))
    }

    async fn create_runs(&self, runs: &[NewRun], now: DateTime<Utc>) -> Vec<Result<Created>> {
        // One statement for the batch; a run it did not insert (its idempotency key is
        // taken) and a failed statement fall back to `create_run`, which answers the existing
        // run or says why not.
        let mut placed: Vec<Option<RunId>> = vec![None; runs.len()];
        if runs.len() > 1 {
            match self.insert_runs(runs, now).await {
                Ok(inserted) => {
                    let whole: Vec<usize> = (0..runs.len()).collect();
                    scatter(&mut placed, &whole, inserted);
                }
                Err(error) => {
                    tracing::warn!(%error, runs = runs.len(), "a start batch failed; starting its runs one by one");
                }
            }
        }
        let mut results = Vec::with_capacity(runs.len());
        for (new, id) in runs.iter().zip(placed) {
            results.push(match id {
                Some(id) => Ok(Created {
                    id,
                    existing: false,
                    claimed: new.claim.is_some(),
                }),
                None => self.create_run(new, now).await,
            });
        }
        results
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        sqlx::query_as::<_, Run>(concat!(
            "select ",
            run_columns!(),
            " from kagzi.runs where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found(id))
    }

    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let runs = sqlx::query_as::<_, Run>(concat!(
            "select ",
            run_columns!(),
            r" from kagzi.runs
              where ($1::text is null or workflow = $1)
                and ($2::text is null or queue = $2)
                and ($3::text is null or status = $3)
                and ($4::uuid is null or id < $4)
                and ($6::uuid is null or parent_id = $6)
                and ($7::uuid is null or schedule_id = $7)
              order by id desc
              limit $5"
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
        let steps = sqlx::query_as::<_, Step>(
            r"select key, position, status, output, error, attempts, created_at, finished_at
              from kagzi.steps where run_id = $1 order by position, key",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        if steps.is_empty() {
            // Tell an unknown run from one with no steps yet.
            self.get_run(id).await?;
        }
        Ok(steps)
    }

    async fn cancel_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let cancelled: Vec<(RunId,)> = sqlx::query_as(
            r"with recursive tree as (
                  select id from kagzi.runs where id = $1
                  union all
                  select r.id from kagzi.runs r join tree t on r.parent_id = t.id
              ),
              cancelled as (
                  update kagzi.runs
                  set status = 'cancelled', finished_at = $2, updated_at = $2,
                      lease_token = null, lease_expires_at = null, wake_at = null,
                      waiting_for = null
                  where id in (select id from tree)
                    and status in ('pending', 'running', 'sleeping', 'waiting')
                  returning id
              )
              select id from cancelled, pg_notify($3, id::text)",
        )
        .bind(id)
        .bind(now)
        .bind(RUN_DONE_CHANNEL)
        .fetch_all(&mut *tx)
        .await?;
        if !cancelled.iter().any(|(c,)| *c == id) {
            drop(tx);
            let run = self.get_run(id).await?;
            return Err(Error::Conflict(format!(
                "run {id} already ended as {}",
                run.status
            )));
        }
        wake_parent(&mut tx, id, now).await?;
        tx.commit().await?;
        self.get_run(id).await
    }

    async fn register_worker(&self, new: &NewWorker, now: DateTime<Utc>) -> Result<WorkerId> {
        let id = WorkerId::new();
        sqlx::query(
            r"insert into kagzi.workers
                  (id, queue, workflows, capacity, hostname, status, registered_at, last_heartbeat_at)
              values ($1, $2, $3, $4, $5, 'online', $6, $6)",
        )
        .bind(id)
        .bind(&new.queue)
        .bind(&new.workflows)
        .bind(to_i32(new.capacity))
        .bind(new.hostname.as_deref())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    async fn get_worker(&self, id: WorkerId) -> Result<Worker> {
        sqlx::query_as::<_, Worker>(
            "select id, queue, workflows, capacity, hostname from kagzi.workers where id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| Error::NotFound(format!("worker {id}")))
    }

    async fn heartbeat(
        &self,
        worker: WorkerId,
        held: &[Lease],
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        let ids: Vec<Uuid> = held.iter().map(|l| l.run_id.0).collect();
        let tokens: Vec<Uuid> = held.iter().map(|l| l.lease_token).collect();
        let row: Option<(Vec<Uuid>,)> = sqlx::query_as(
            r"with w as (
                  update kagzi.workers set last_heartbeat_at = $2, status = 'online'
                  where id = $1 returning id
              ),
              extended as (
                  update kagzi.runs r set lease_expires_at = $5, updated_at = $2
                  from unnest($3::uuid[], $4::uuid[]) as h(id, token), w
                  where r.id = h.id and r.lease_token = h.token and r.worker_id = w.id
                    and r.status = 'running' and r.lease_expires_at > $2
                  returning r.id
              )
              select array(select id from extended) from w",
        )
        .bind(worker)
        .bind(now)
        .bind(&ids)
        .bind(&tokens)
        .bind(lease_expires_at)
        .fetch_optional(&self.pool)
        .await?;
        let (extended,) = row.ok_or_else(|| Error::NotFound(format!("worker {worker}")))?;
        Ok(ids
            .into_iter()
            .filter(|id| !extended.contains(id))
            .map(RunId)
            .collect())
    }

    async fn deregister_worker(&self, worker: WorkerId, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let found = sqlx::query("update kagzi.workers set status = 'offline' where id = $1")
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        if found.rows_affected() == 0 {
            return Err(Error::NotFound(format!("worker {worker}")));
        }
        let released = sqlx::query(
            r"with released as (
                  update kagzi.runs
                  set status = 'pending', lease_token = null, lease_expires_at = null,
                      available_at = $2, updated_at = $2
                  where worker_id = $1 and status = 'running'
                  returning queue
              )
              select pg_notify($3, queue) from (select distinct queue from released) q",
        )
        .bind(worker)
        .bind(now)
        .bind(QUEUE_CHANNEL)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(released.len() as u64)
    }

    async fn claim(
        &self,
        worker: &Worker,
        max: u32,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Task>> {
        let (tasks, _) = self
            .claim_or_next_due(worker, max, lease_expires_at, now)
            .await?;
        Ok(tasks)
    }

    async fn claim_or_next_due(
        &self,
        worker: &Worker,
        max: u32,
        lease_expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<Task>, Option<DateTime<Utc>>)> {
        // The claimed runs, then one row with no run: when nothing was claimed, when the next
        // run of the worker's queue and workflows comes due (one statement for an empty poll).
        let workflows = super::distinct_workflows(worker);
        if workflows.is_empty() {
            return Ok((Vec::new(), None));
        }
        let rows: Vec<ClaimRow> = sqlx::query_as(for_workflows(
            concat!(
                r"with due as (
                  select c.id from {worker_workflows} cross join lateral (
                      select id, available_at from kagzi.runs
                      where",
                runs_of_workflow!(),
                r"and available_at <= $3
                      order by available_at, id
                      limit $4
                      for update skip locked
                  ) c
                  order by c.available_at, c.id
                  limit $4
              ),
              claimed as (
                  update kagzi.runs r
                  set status = 'running', attempts = r.attempts + 1,
                      lease_token = gen_random_uuid(), lease_expires_at = $5, worker_id = $6,
                      started_at = coalesce(r.started_at, $3), updated_at = $3, wake_at = null,
                      waiting_for = null
                  from due where r.id = due.id
                  returning r.id, r.workflow, r.input, r.attempts, r.lease_token
              )
              select id, workflow, input, attempts, lease_token, null::timestamptz as next_due
              from claimed
              union all
              select null, null, null, null, null, min(n.available_at)
              from {worker_workflows} cross join lateral (",
                next_due_of_workflow!(),
                r") n
              where not exists (select 1 from claimed)"
            ),
            workflows.len(),
        ))
        .bind(&worker.queue)
        .bind(&workflows)
        .bind(now)
        .bind(i64::from(max))
        .bind(lease_expires_at)
        .bind(worker.id)
        .fetch_all(&self.pool)
        .await?;
        let mut next_due = None;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            match (
                row.id,
                row.workflow,
                row.input,
                row.attempts,
                row.lease_token,
            ) {
                (Some(id), Some(workflow), Some(input), Some(attempts), Some(token)) => {
                    claimed.push((id, workflow, input, attempts, token));
                }
                _ => next_due = row.next_due,
            }
        }
        if claimed.is_empty() {
            return Ok((Vec::new(), next_due));
        }
        // A run's first attempt has no journal yet: steps are only written under a lease.
        let ids: Vec<RunId> = claimed.iter().filter(|c| c.3 > 1).map(|c| c.0).collect();
        if ids.is_empty() {
            return Ok((super::tasks(claimed, Vec::new(), lease_expires_at), None));
        }
        let journal: Vec<(RunId, String, i32, Json<Value>)> = sqlx::query_as(
            r"select run_id, key, position, output from kagzi.steps
              where run_id = any($1) and status = 'completed'
              order by run_id, position",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok((super::tasks(claimed, journal, lease_expires_at), None))
    }

    async fn next_due(&self, worker: &Worker) -> Result<Option<DateTime<Utc>>> {
        let workflows = super::distinct_workflows(worker);
        if workflows.is_empty() {
            return Ok(None);
        }
        let next: Option<DateTime<Utc>> = sqlx::query_scalar(for_workflows(
            concat!(
                "select min(n.available_at) from {worker_workflows} cross join lateral (",
                next_due_of_workflow!(),
                ") n"
            ),
            workflows.len(),
        ))
        .bind(&worker.queue)
        .bind(&workflows)
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    async fn record_step(
        &self,
        run: RunId,
        lease_token: Uuid,
        report: &StepReport,
        now: DateTime<Utc>,
    ) -> Result<Step> {
        let step = sqlx::query_as::<_, Step>(concat!(
            r"with lease as (
                  select id from kagzi.runs
                  where id = $1 and lease_token = $2 and status = 'running'
                    and lease_expires_at > $3
                  for share
              ),
              written as (
                  insert into kagzi.steps
                      (run_id, key, position, status, output, error, attempts, created_at, finished_at)
                  select id, $4, $5, $6, $7, $8, $9, $3, $3 from lease",
            step_first_write_wins!(),
            r"returning key, position, status, output, error, attempts, created_at, finished_at
              )
              select * from written
              union all
              select s.key, s.position, s.status, s.output, s.error, s.attempts, s.created_at,
                     s.finished_at
              from kagzi.steps s, lease
              where s.run_id = $1 and s.key = $4 and not exists (select 1 from written)"
        ))
        .bind(run)
        .bind(lease_token)
        .bind(now)
        .bind(&report.key)
        .bind(to_i32(report.position))
        .bind(report.status)
        .bind(report.output.as_ref().map(Json))
        .bind(report.error.as_deref())
        .bind(to_i32(report.attempts.max(1)))
        .fetch_optional(&self.pool)
        .await?;
        match step {
            Some(step) => Ok(step),
            None => {
                // Either the lease is gone, or a concurrent report for the same key won the
                // race after this statement's snapshot: look again with a fresh snapshot.
                self.ensure_lease(run, lease_token, now).await?;
                sqlx::query_as::<_, Step>(
                    r"select key, position, status, output, error, attempts, created_at, finished_at
                      from kagzi.steps where run_id = $1 and key = $2",
                )
                .bind(run)
                .bind(&report.key)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(|| Error::NotFound(format!("step {} of run {run}", report.key)))
            }
        }
    }

    async fn record_steps(&self, writes: &[StepWrite], now: DateTime<Utc>) -> Vec<Result<Step>> {
        // One statement for the batch; a report it could not place goes to `record_step`,
        // which says precisely why.
        let placed = if writes.len() > 1 {
            self.record_steps_batch(writes, now).await
        } else {
            vec![None; writes.len()]
        };
        let mut results = Vec::with_capacity(writes.len());
        for (write, step) in writes.iter().zip(placed) {
            results.push(match step {
                Some(step) => Ok(step),
                None => {
                    self.record_step(write.run, write.lease_token, &write.report, now)
                        .await
                }
            });
        }
        results
    }

    async fn complete_run(
        &self,
        run: RunId,
        lease_token: Uuid,
        output: &Value,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query_as::<_, Run>(concat!(
            r"with done as (
                  update kagzi.runs
                  set status = 'completed', output = $3, error = null, finished_at = $4,
                      updated_at = $4, lease_token = null, lease_expires_at = null
                  where id = $1 and lease_token = $2 and status = 'running'
                    and lease_expires_at > $4
                  returning *
              )
              select ",
            run_columns!(),
            r", pg_notify($5, id::text)::text as notified from done"
        ))
        .bind(run)
        .bind(lease_token)
        .bind(Json(output))
        .bind(now)
        .bind(RUN_DONE_CHANNEL)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(done) = done else {
            drop(tx);
            return Err(self.lease_error(run, lease_token, now).await);
        };
        wake_parent(&mut tx, run, now).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn complete_runs(
        &self,
        completions: &[Completion],
        now: DateTime<Utc>,
    ) -> Vec<Result<Run>> {
        // One statement (and commit) for the first completion of each run without a parent,
        // with the steps it carries; a child run (its parent may need waking in the same
        // transaction), a repeated run or step key in the batch, a completion the batch could
        // not place (lease lost, a carried step it could not record) and a failed batch fall
        // back to `complete_with_steps`, which says precisely why.
        let mut seen = HashSet::with_capacity(completions.len());
        let firsts: Vec<usize> = (0..completions.len())
            .filter(|&i| {
                let c = &completions[i];
                let mut keys = HashSet::with_capacity(c.steps.len());
                seen.insert(c.run) && c.steps.iter().all(|s| keys.insert(s.key.as_str()))
            })
            .collect();
        let mut placed: Vec<Option<Run>> = vec![None; completions.len()];
        if !firsts.is_empty() {
            let batch: Vec<&Completion> = firsts.iter().map(|&i| &completions[i]).collect();
            match self.complete_batch(&batch, now).await {
                Ok(done) => scatter(&mut placed, &firsts, done),
                Err(error) => {
                    tracing::warn!(%error, completions = batch.len(), "a completion batch failed; completing its runs one by one");
                }
            }
        }
        let mut results = Vec::with_capacity(completions.len());
        for (c, run) in completions.iter().zip(placed) {
            results.push(match run {
                Some(run) => Ok(run),
                None => super::complete_with_steps(self, c, now).await,
            });
        }
        results
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
        let Some(Held {
            attempts,
            retries,
            retry_policy: policy,
            ..
        }) = lock_held(&mut tx, run, lease_token, now).await?
        else {
            drop(tx);
            return Err(self.lease_error(run, lease_token, now).await);
        };
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
            r"update kagzi.runs
              set status = case when $3 then 'pending' else 'failed' end,
                  available_at = $4,
                  finished_at = case when $3 then null else $5 end,
                  error = $2, updated_at = $5, lease_token = null, lease_expires_at = null
              where id = $1
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
        if retry.is_some() {
            notify(&mut tx, QUEUE_CHANNEL, &failed.queue).await?;
        } else {
            notify(&mut tx, RUN_DONE_CHANNEL, &run.to_string()).await?;
            wake_parent(&mut tx, run, now).await?;
        }
        tx.commit().await?;
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
        let Some(Held { queue, .. }) = lock_held(&mut tx, run, lease_token, now).await? else {
            drop(tx);
            return Err(self.lease_error(run, lease_token, now).await);
        };
        let signal_waiting = match &suspend.signal {
            Some(name) => {
                sqlx::query_scalar::<_, bool>(
                    r"select exists (select 1 from kagzi.signals
                                 where run_id = $1 and name = $2 and consumed_key is null)",
                )
                .bind(run)
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
            }
            None => false,
        };
        // `for share` waits for a concurrent end of the child and reads its outcome; without
        // it the child's wake-up (which only wakes a `waiting` parent) and this check could
        // both miss each other, leaving the parent waiting forever.
        let child_ended = match suspend.child {
            Some(child) => sqlx::query_scalar::<_, bool>(
                r"select status in ('completed', 'failed', 'cancelled') from kagzi.runs
                  where id = $1 for share",
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
            r"update kagzi.runs
              set status = $2, available_at = $3, wake_at = $4, waiting_for = $5, updated_at = $6,
                  lease_token = null, lease_expires_at = null
              where id = $1
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
        // Pollers recompute when to wake; a due run is claimed at once.
        notify(&mut tx, QUEUE_CHANNEL, &queue).await?;
        tx.commit().await?;
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
            sqlx::query_as("select status, queue from kagzi.runs where id = $1 for update")
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
        let (status, queue) = target.ok_or_else(|| not_found(run))?;
        if status.is_terminal() {
            return Err(Error::Conflict(format!(
                "run {run} already ended as {status}; only a run that has not ended takes signals"
            )));
        }
        sqlx::query(
            "insert into kagzi.signals (run_id, name, payload, created_at) values ($1, $2, $3, $4)",
        )
        .bind(run)
        .bind(name)
        .bind(Json(payload))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if status == RunStatus::Waiting {
            sqlx::query(
                r"update kagzi.runs
                  set status = 'pending', available_at = $2, wake_at = null, waiting_for = null,
                      updated_at = $2
                  where id = $1",
            )
            .bind(run)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, QUEUE_CHANNEL, &queue).await?;
        }
        tx.commit().await?;
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
        if lock_held(&mut tx, run, lease_token, now).await?.is_none() {
            drop(tx);
            return Err(self.lease_error(run, lease_token, now).await);
        }
        let step = sqlx::query_as::<_, Step>(
            r"with next as (
                  select id, payload from kagzi.signals
                  where run_id = $1 and name = $2 and consumed_key is null
                  order by id limit 1
                  for update
              ),
              consumed as (
                  update kagzi.signals s set consumed_key = $3 from next
                  where s.id = next.id
                  returning s.payload
              )
              insert into kagzi.steps
                  (run_id, key, position, status, output, attempts, created_at, finished_at)
              select $1, $3, $4, 'completed', jsonb_build_object('payload', payload), 1, $5, $5
              from consumed
              on conflict (run_id, key) do update set status = 'completed',
                  output = excluded.output, finished_at = excluded.finished_at
              returning key, position, status, output, error, attempts, created_at, finished_at",
        )
        .bind(run)
        .bind(name)
        .bind(key)
        .bind(to_i32(position))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(step)
    }

    async fn expire_deadlines(&self, now: DateTime<Utc>) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(RunId, Option<RunId>)> = sqlx::query_as(
            r"with expired as (
                  select id from kagzi.runs
                  where deadline_at < $1
                    and status in ('pending', 'running', 'sleeping', 'waiting')
                  for update skip locked
              )
              update kagzi.runs r
              set status = 'failed', finished_at = $1, updated_at = $1,
                  error = 'run timed out: its deadline passed at ' || r.deadline_at::text,
                  lease_token = null, lease_expires_at = null, wake_at = null, waiting_for = null
              from expired where r.id = expired.id
              returning r.id, r.parent_id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (run, _) in &expired {
            notify(&mut tx, RUN_DONE_CHANNEL, &run.to_string()).await?;
            wake_parent(&mut tx, *run, now).await?;
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }

    async fn expire_leases(&self, now: DateTime<Utc>) -> Result<u64> {
        let requeued: Vec<(i64,)> = sqlx::query_as(
            r"with expired as (
                  select id from kagzi.runs
                  where status = 'running' and lease_expires_at < $1
                  for update skip locked
              ),
              requeued as (
                  update kagzi.runs r
                  set status = 'pending', lease_token = null, lease_expires_at = null,
                      available_at = $1, updated_at = $1
                  from expired where r.id = expired.id
                  returning r.queue
              )
              select count(*) from requeued, pg_notify($2, queue) group by queue",
        )
        .bind(now)
        .bind(QUEUE_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(requeued.iter().map(|(n,)| *n as u64).sum())
    }

    async fn mark_workers_offline(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            r"update kagzi.workers set status = 'offline'
              where status = 'online' and last_heartbeat_at < $1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn create_schedule(&self, new: &NewSchedule, now: DateTime<Utc>) -> Result<Schedule> {
        let spec = &new.spec;
        let created = sqlx::query_as::<_, Schedule>(concat!(
            r"insert into kagzi.schedules
                  (id, name, workflow, queue, cron, time_zone, input, retries, overlap,
                   catch_up_window_ms, catch_up_max, paused, next_fire_at, version, created_at,
                   updated_at)
              values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14, $14)
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
        .bind(to_i32(spec.retries))
        .bind(spec.overlap)
        .bind(spec.catch_up.window_ms.map(to_i64))
        .bind(to_i32(spec.catch_up.max))
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
                    " from kagzi.schedules where id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
            ScheduleKey::Name(name) => {
                sqlx::query_as::<_, Schedule>(concat!(
                    "select ",
                    schedule_columns!(),
                    " from kagzi.schedules where name = $1"
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
            r" from kagzi.schedules
              where ($1::text is null or workflow = $1)
                and ($2::text is null or queue = $2)
                and ($3::boolean is null or paused = $3)
                and ($4::uuid is null or id < $4)
              order by id desc
              limit $5"
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
            r"update kagzi.schedules
              set workflow = $3, queue = $4, cron = $5, time_zone = $6, input = $7, retries = $8,
                  overlap = $9, catch_up_window_ms = $10, catch_up_max = $11,
                  next_fire_at = $12, version = version + 1, updated_at = $13
              where id = $1 and version = $2
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
        .bind(to_i32(spec.retries))
        .bind(spec.overlap)
        .bind(spec.catch_up.window_ms.map(to_i64))
        .bind(to_i32(spec.catch_up.max))
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
            r"update kagzi.schedules
              set paused = $2, next_fire_at = $3, version = version + 1, updated_at = $4
              where id = $1 and paused <> $2
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
        let deleted = sqlx::query("delete from kagzi.schedules where id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(schedule_not_found(id));
        }
        Ok(())
    }

    async fn trigger_schedule(&self, id: ScheduleId, now: DateTime<Utc>) -> Result<RunId> {
        let run = RunId::new();
        let started: Option<(RunId,)> = sqlx::query_as(
            r"with inserted as (
                  insert into kagzi.runs
                      (id, workflow, queue, status, input, retries, available_at, created_at,
                       updated_at, schedule_id, scheduled_at)
                  select $2, workflow, queue, 'pending', input, retries, $3, $3, $3, id, $3
                  from kagzi.schedules where id = $1
                  on conflict (schedule_id, scheduled_at) where schedule_id is not null do nothing
                  returning id, queue
              )
              select id from inserted, pg_notify($4, queue)",
        )
        .bind(id)
        .bind(run)
        .bind(now)
        .bind(QUEUE_CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        match started {
            Some((run,)) => Ok(run),
            None => {
                self.get_schedule(&ScheduleKey::Id(id)).await?;
                Err(Error::Conflict(format!(
                    "schedule {id} already has a run for {now}"
                )))
            }
        }
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Schedule>> {
        let due = sqlx::query_as::<_, Schedule>(concat!(
            "select ",
            schedule_columns!(),
            r" from kagzi.schedules
              where not paused and (next_fire_at <= $1 or buffered_at is not null)
              order by next_fire_at
              limit $2"
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(due)
    }

    async fn next_schedule_fire(&self) -> Result<Option<DateTime<Utc>>> {
        let next: Option<DateTime<Utc>> =
            sqlx::query_scalar("select min(next_fire_at) from kagzi.schedules where not paused")
                .fetch_one(&self.pool)
                .await?;
        Ok(next)
    }

    async fn fire_schedule(&self, fire: &ScheduleFire, now: DateTime<Utc>) -> Result<FireOutcome> {
        let mut tx = self.pool.begin().await?;
        // The row lock makes concurrent fires of one schedule take turns; the version check
        // makes every turn but the first find the schedule already moved on.
        let row: Option<(
            String,
            String,
            Json<Value>,
            i32,
            Overlap,
            Option<DateTime<Utc>>,
        )> = sqlx::query_as(
            r"select workflow, queue, input, retries, overlap, buffered_at
                  from kagzi.schedules
                  where id = $1 and version = $2 and not paused
                  for update",
        )
        .bind(fire.id)
        .bind(fire.version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((workflow, queue, Json(input), retries, overlap, buffered)) = row else {
            return Ok(FireOutcome::default());
        };
        let active: Option<RunId> = sqlx::query_scalar(
            r"select id from kagzi.runs
              where schedule_id = $1 and status not in ('completed', 'failed', 'cancelled')
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
            r"update kagzi.schedules
              set next_fire_at = $2, buffered_at = $3, last_fired_at = coalesce($4, last_fired_at),
                  version = version + 1, updated_at = $5
              where id = $1",
        )
        .bind(fire.id)
        .bind(fire.next_fire_at)
        .bind(resolution.buffered)
        .bind(resolution.start.last().copied())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if !started.is_empty() {
            sqlx::query("select pg_notify($1, $2)")
                .bind(QUEUE_CHANNEL)
                .bind(&queue)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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

/// The run a scheduled fire starts; `None` when (schedule, due time) already has one.
async fn insert_scheduled_run(
    tx: &mut PgConnection,
    schedule: ScheduleId,
    (workflow, queue, input, retries): (&str, &str, &Value, i32),
    scheduled_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Option<RunId>> {
    let id: Option<RunId> = sqlx::query_scalar(
        r"insert into kagzi.runs
              (id, workflow, queue, status, input, retries, available_at, created_at, updated_at,
               schedule_id, scheduled_at)
          values ($1, $2, $3, 'pending', $4, $5, $6, $6, $6, $7, $8)
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
    .fetch_optional(&mut *tx)
    .await?;
    Ok(id)
}

fn schedule_not_found(id: impl std::fmt::Display) -> Error {
    Error::NotFound(format!("schedule {id}"))
}

/// The parts of a run's row the fenced reports need.
#[derive(sqlx::FromRow)]
struct Held {
    attempts: i32,
    retries: i32,
    retry_policy: Option<Json<RetryPolicy>>,
    queue: String,
}

/// Locks the run's row for the rest of the transaction when `lease_token` is its current,
/// unexpired lease; `None` otherwise (see [`PgStore::lease_error`] for why).
async fn lock_held(
    conn: &mut PgConnection,
    run: RunId,
    lease_token: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Held>> {
    let held = sqlx::query_as::<_, Held>(
        r"select attempts, retries, retry_policy, queue from kagzi.runs
          where id = $1 and lease_token = $2 and status = 'running' and lease_expires_at > $3
          for update",
    )
    .bind(run)
    .bind(lease_token)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(held)
}

impl PgStore {
    /// Writes the first report of each (run, key) of `writes` in one statement; `None` for
    /// a report it did not place (a repeated key, a lost lease, a concurrent writer, a failed
    /// statement).
    async fn record_steps_batch(
        &self,
        writes: &[StepWrite],
        now: DateTime<Utc>,
    ) -> Vec<Option<Step>> {
        let mut seen = HashSet::with_capacity(writes.len());
        let firsts: Vec<usize> = (0..writes.len())
            .filter(|&i| seen.insert((writes[i].run, writes[i].report.key.as_str())))
            .collect();
        let mut placed: Vec<Option<Step>> = vec![None; writes.len()];
        let batch: Vec<&StepWrite> = firsts.iter().map(|&i| &writes[i]).collect();
        match self.write_steps(&batch, now).await {
            Ok(written) => scatter(&mut placed, &firsts, written),
            Err(error) => {
                tracing::warn!(%error, reports = batch.len(), "a step batch failed; writing its reports one by one");
            }
        }
        placed
    }

    /// Writes a batch of step reports with distinct (run, key) in one statement, each under
    /// its run's lease and first-write-wins, and returns `(1-based position in the batch,
    /// recorded step)` for each report it could place: written, or already recorded.
    ///
    /// Each run is locked by a lookup of its id (a lateral subquery), in id order so that
    /// concurrent batches lock in one order, and its lease is checked on the locked row. A
    /// plain join was planned, on small or unanalyzed tables, as a scan of every running run
    /// (`runs_lease_idx`) hashed against the batch: work that grew with the runs in flight,
    /// not with the batch. The lookup names only the id, behind `offset 0` (which keeps
    /// PostgreSQL from pushing the lease conditions into it), so the primary key is the only
    /// index it can use, whatever the statistics were when a plan was cached. A run whose
    /// lease is not held is locked for the statement's moment too, and left as it is.
    async fn write_steps(
        &self,
        batch: &[&StepWrite],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, Step)>> {
        let rows: Vec<Placed> = sqlx::query_as(concat!(
            r"with input as (
                  select * from unnest($1::uuid[] || ",
            pad_batch!(),
            r", $2::uuid[], $3::text[], $4::int4[], $5::text[],
                                       $6::jsonb[], $7::text[], $8::int4[])
                      with ordinality
                      as i(run_id, lease_token, key, position, status, output, error, attempts, ord)
              ),
              lease as (
                  select i.ord from (select * from input order by run_id) i
                  cross join lateral (
                      select r.lease_token, r.status, r.lease_expires_at from kagzi.runs r
                      where r.id = i.run_id
                      for share offset 0
                  ) r
                  where r.lease_token = i.lease_token and r.status = 'running'
                    and r.lease_expires_at > $9
              ),
              written as (
                  insert into kagzi.steps
                      (run_id, key, position, status, output, error, attempts, created_at, finished_at)
                  select i.run_id, i.key, i.position, i.status, i.output, i.error, i.attempts, $9, $9
                  from input i join lease l on l.ord = i.ord",
            step_first_write_wins!(),
            r"returning run_id, key, position, status, output, error, attempts, created_at,
                            finished_at
              )
              select i.ord, w.key, w.position, w.status, w.output, w.error, w.attempts,
                     w.created_at, w.finished_at
              from written w join input i on i.run_id = w.run_id and i.key = w.key
              union all
              select i.ord, s.key, s.position, s.status, s.output, s.error, s.attempts,
                     s.created_at, s.finished_at
              from input i
              join lease l on l.ord = i.ord
              join kagzi.steps s on s.run_id = i.run_id and s.key = i.key
              where not exists (select 1 from written w where w.run_id = i.run_id and w.key = i.key)"
        ))
        .bind(batch.iter().map(|w| w.run).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.lease_token).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.report.key.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| to_i32(w.report.position)).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.report.status.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.report.output.as_ref().map(Json)).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.report.error.as_deref()).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| to_i32(w.report.attempts.max(1))).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| (row.ord, row.step)).collect())
    }

    /// Completes a batch of distinct runs that have no parent, each under its lease, with the
    /// steps each carries (distinct keys per run; first write wins), in one statement, and
    /// notifies their result waiters. Returns `(1-based position in the batch, completed
    /// run)` for each run it completed.
    ///
    /// A run completes only with every step it carries recorded: the statement locks each
    /// held run first, and once its insert (or its conflict with an earlier record, which it
    /// waits for if that is still being written) is done, every carried key of a held run has
    /// its record. Anything else fails the whole statement, and nothing is written. Runs
    /// are locked as in `write_steps`: by id, one lookup each, in id order. Each is then
    /// updated at the row version it locked (its `ctid`, which cannot change while the lock
    /// is held): a join by id again could be planned, while the table was small, as a scan of
    /// every run, and that plan kept once the table had grown.
    async fn complete_batch(
        &self,
        batch: &[&Completion],
        now: DateTime<Utc>,
    ) -> Result<Vec<(i64, Run)>> {
        let carried: Vec<(RunId, &StepReport)> = batch
            .iter()
            .flat_map(|c| c.steps.iter().map(|step| (c.run, step)))
            .collect();
        let done: Vec<Ended> = sqlx::query_as(concat!(
            r"with input as (
                  select * from unnest($1::uuid[] || ",
            pad_batch!(),
            r", $2::uuid[], $3::jsonb[])
                      with ordinality as i(id, lease_token, output, ord)
              ),
              carried as (
                  select * from unnest($4::uuid[], $5::text[], $6::int4[], $7::text[],
                                       $8::jsonb[], $9::text[], $10::int4[])
                      as c(run_id, key, position, status, output, error, attempts)
              ),
              held as (
                  select i.id, r.row from (select * from input order by id) i
                  cross join lateral (
                      select r.ctid as row, r.lease_token, r.status, r.lease_expires_at,
                             r.parent_id
                      from kagzi.runs r
                      where r.id = i.id
                      for no key update offset 0
                  ) r
                  where r.lease_token = i.lease_token and r.status = 'running'
                    and r.lease_expires_at > $11 and r.parent_id is null
              ),
              written as (
                  insert into kagzi.steps
                      (run_id, key, position, status, output, error, attempts, created_at, finished_at)
                  select c.run_id, c.key, c.position, c.status, c.output, c.error, c.attempts,
                         $11, $11
                  from carried c join held h on h.id = c.run_id",
            step_first_write_wins!(),
            r"),
              done as (
                  update kagzi.runs r
                  set status = 'completed', output = i.output, error = null, finished_at = $11,
                      updated_at = $11, lease_token = null, lease_expires_at = null
                  from input i join held h on h.id = i.id
                  where r.ctid = h.row
                  returning r.*, i.ord
              )
              select ord, ",
            run_columns!(),
            r", pg_notify($12, id::text)::text as notified from done"
        ))
        .bind(batch.iter().map(|c| c.run).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| c.lease_token).collect::<Vec<_>>())
        .bind(batch.iter().map(|c| Json(&c.output)).collect::<Vec<_>>())
        .bind(carried.iter().map(|(run, _)| *run).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| s.key.as_str()).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| to_i32(s.position)).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| s.status.as_str()).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| s.output.as_ref().map(Json)).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| s.error.as_deref()).collect::<Vec<_>>())
        .bind(carried.iter().map(|(_, s)| to_i32(s.attempts.max(1))).collect::<Vec<_>>())
        .bind(now)
        .bind(RUN_DONE_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        Ok(done.into_iter().map(|d| (d.ord, d.run)).collect())
    }

    /// Inserts a batch of new runs in one statement, skipping those whose idempotency key is
    /// taken, and notifies their queues. Returns `(1-based position in the batch, run id)`
    /// for each run it inserted.
    async fn insert_runs(&self, runs: &[NewRun], now: DateTime<Utc>) -> Result<Vec<(i64, RunId)>> {
        let ids: Vec<RunId> = runs.iter().map(|_| RunId::new()).collect();
        let inserted: Vec<(i64, RunId)> = sqlx::query_as(
            r"with input as (
                  select * from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[],
                                       $6::timestamptz[], $7::uuid[], $8::text[],
                                       $9::timestamptz[], $10::jsonb[], $13::uuid[],
                                       $14::timestamptz[], $15::uuid[])
                      with ordinality
                      as i(id, workflow, queue, input, retries, available_at, parent_id,
                           idempotency_key, deadline_at, retry_policy, lease_token,
                           lease_expires_at, worker_id, ord)
              ),
              inserted as (
                  insert into kagzi.runs
                      (id, workflow, queue, status, input, retries, available_at, created_at,
                       updated_at, parent_id, idempotency_key, deadline_at, retry_policy,
                       attempts, lease_token, lease_expires_at, worker_id, started_at)
                  select id, workflow, queue,
                         case when lease_token is null then 'pending' else 'running' end,
                         input, retries, available_at, $11, $11,
                         parent_id, idempotency_key, deadline_at, retry_policy,
                         case when lease_token is null then 0 else 1 end,
                         lease_token, lease_expires_at, worker_id,
                         case when lease_token is null then null else $11 end
                  from input order by ord
                  on conflict (idempotency_key) where idempotency_key is not null do nothing
                  returning id, queue, lease_token
              )
              select i.ord, i.id,
                     (select count(pg_notify($12, q.queue))
                      from (select distinct queue from inserted
                            where lease_token is null) q) as notified
              from inserted n join input i on i.id = n.id",
        )
        .bind(&ids)
        .bind(runs.iter().map(|r| r.workflow.as_str()).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| r.queue.as_str()).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| Json(&r.input)).collect::<Vec<_>>())
        .bind(runs.iter().map(|r| to_i32(r.retries)).collect::<Vec<_>>())
        .bind(
            runs.iter()
                .map(|r| r.available_at.max(now))
                .collect::<Vec<_>>(),
        )
        .bind(runs.iter().map(|r| r.parent_id).collect::<Vec<_>>())
        .bind(
            runs.iter()
                .map(|r| r.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(runs.iter().map(|r| r.deadline_at).collect::<Vec<_>>())
        .bind(
            runs.iter()
                .map(|r| r.retry_policy.as_ref().map(Json))
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(QUEUE_CHANNEL)
        .bind(
            runs.iter()
                .map(|r| r.claim.map(|c| c.lease_token))
                .collect::<Vec<_>>(),
        )
        .bind(
            runs.iter()
                .map(|r| r.claim.map(|c| c.lease_expires_at))
                .collect::<Vec<_>>(),
        )
        .bind(
            runs.iter()
                .map(|r| r.claim.map(|c| c.worker))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(inserted)
    }
}

/// A row of the claim statement: a claimed run, or (all run columns null) when the next run
/// comes due.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: Option<RunId>,
    workflow: Option<String>,
    input: Option<Json<Value>>,
    attempts: Option<i32>,
    lease_token: Option<Uuid>,
    next_due: Option<DateTime<Utc>>,
}

/// The run holding an idempotency key.
#[derive(sqlx::FromRow)]
struct KeyHolder {
    id: RunId,
    workflow: String,
    input: Json<Value>,
    created_at: DateTime<Utc>,
    parent_id: Option<RunId>,
}

impl KeyHolder {
    /// Whether the key's retention window has passed (never for a child run's key).
    fn expired(&self, new: &NewRun) -> bool {
        self.parent_id.is_none()
            && new
                .idempotency_cutoff
                .is_some_and(|cutoff| self.created_at < cutoff)
    }
}

/// A row of [`PgStore::complete_batch`]: a batch position and its completed run.
#[derive(sqlx::FromRow)]
struct Ended {
    ord: i64,
    #[sqlx(flatten)]
    run: Run,
}

/// A row of [`PgStore::write_steps`]: a batch position and its recorded step.
#[derive(sqlx::FromRow)]
struct Placed {
    ord: i64,
    #[sqlx(flatten)]
    step: Step,
}

/// Puts the rows of a batch statement where they belong: each `(1-based position in the
/// batch, row)` goes to `placed[batch_of[position - 1]]`; what the statement did not return
/// stays `None`.
fn scatter<T>(placed: &mut [Option<T>], batch_of: &[usize], rows: Vec<(i64, T)>) {
    for (ord, row) in rows {
        let slot = usize::try_from(ord - 1).ok().and_then(|k| batch_of.get(k));
        if let Some(target) = slot.and_then(|&i| placed.get_mut(i)) {
            *target = Some(row);
        }
    }
}

/// Sends a notification on `channel`, delivered when the transaction commits.
async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes the parent of `child` due again if it is waiting (for this child or anything else:
/// a woken run that finds nothing to continue with suspends again).
async fn wake_parent(conn: &mut PgConnection, child: RunId, now: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        r"with woken as (
              update kagzi.runs p
              set status = 'pending', available_at = $2, wake_at = null, waiting_for = null,
                  updated_at = $2
              from kagzi.runs c
              where c.id = $1 and p.id = c.parent_id and p.status = 'waiting'
              returning p.queue
          )
          select pg_notify($3, queue) from woken",
    )
    .bind(child)
    .bind(now)
    .bind(QUEUE_CHANNEL)
    .execute(conn)
    .await?;
    Ok(())
}

fn not_found(id: RunId) -> Error {
    Error::NotFound(format!("run {id}"))
}

/// Counts and sizes the API accepts as `u32` are stored as `integer`; larger values saturate.
fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Durations the API accepts as `u64` milliseconds are stored as `bigint`; larger saturate.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
