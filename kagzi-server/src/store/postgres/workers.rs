//! Workers on PostgreSQL: registration, heartbeats, deregistration and the watchdog's
//! offline marking, and the claim that hands a worker its due runs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{PgStore, QUEUE_CHANNEL, to_i32};
use crate::model::{Lease, RunId, Task, Worker, WorkerId};
use crate::store::decide::{self, JournalRow, QueueRow, QueueWorkersRow, WorkerInfoRow};
use crate::store::{NewWorker, QueueStats, Result, WorkerFilter, WorkerInfo};

/// Where a statement that looks for a worker's runs names its workflows: replaced by
/// [`worker_workflows`] before it runs.
const WORKER_WORKFLOWS: &str = "{worker_workflows}";

/// A worker's `count` workflows (bound as `$2`, distinct) as the rows `w.workflow`:
/// `(values (($2::text[])[1]), ..)`. Statements that look for a worker's runs take its
/// workflows one by one (a lateral subquery filtered by `runs_of_workflow!`), so each
/// workflow's due runs are read in due order from `runs_due_idx` and a backlog of another
/// workflow in the same queue is never read. A list of `count` rows (where `unnest` would be
/// estimated at 10) lets PostgreSQL's generic plan cost what each claim's own plan costs, so
/// it is reused rather than the statement planned again at every poll.
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

/// The runs of one of a worker's workflows (`w.workflow`, see [`worker_workflows`]) in its
/// queue (`$1`) that it may claim once due; `runs_due_idx` serves this filter in
/// `available_at, id` order.
macro_rules! runs_of_workflow {
    () => {
        " status in ('pending', 'sleeping', 'waiting') and queue = $1 and workflow = w.workflow "
    };
}

/// Whether the worker whose build id is parameter `$build` may claim a run: a pinned run
/// only goes to workers of its build.
macro_rules! build_may_claim {
    ($build:literal) => {
        concat!(" and (not pinned or build_id = ", $build, ") ")
    };
}

/// When the next run of one of a worker's workflows (`w.workflow`) that it may claim comes
/// due (its build id is parameter `$build`): the first such entry of that workflow in
/// `runs_due_idx`.
macro_rules! next_due_of_workflow {
    ($build:literal) => {
        concat!(
            " select available_at from kagzi.runs where",
            runs_of_workflow!(),
            build_may_claim!($build),
            "order by available_at limit 1 "
        )
    };
}

pub(super) async fn register_worker(
    store: &PgStore,
    new: &NewWorker,
    now: DateTime<Utc>,
) -> Result<WorkerId> {
    let id = WorkerId::new();
    sqlx::query(
        r"insert into kagzi.workers
              (id, queue, workflows, capacity, hostname, status, registered_at, last_heartbeat_at,
               build_id, pinned_workflows)
          values ($1, $2, $3, $4, $5, 'online', $6, $6, $7, $8)",
    )
    .bind(id)
    .bind(&new.queue)
    .bind(&new.workflows)
    .bind(to_i32(new.capacity))
    .bind(new.hostname.as_deref())
    .bind(now)
    .bind(new.build_id.as_deref())
    .bind(&new.pinned_workflows)
    .execute(&store.pool)
    .await?;
    Ok(id)
}

pub(super) async fn get_worker(store: &PgStore, id: WorkerId) -> Result<Worker> {
    sqlx::query_as::<_, Worker>(
        r"select id, queue, workflows, capacity, hostname, build_id, pinned_workflows
          from kagzi.workers
          where id = $1",
    )
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .ok_or_else(|| decide::worker_not_found(id))
}

pub(super) async fn heartbeat(
    store: &PgStore,
    worker: WorkerId,
    held: &[Lease],
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<RunId>> {
    let ids: Vec<Uuid> = held.iter().map(|l| l.run_id.0).collect();
    let tokens: Vec<Uuid> = held.iter().map(|l| l.lease_token).collect();
    let row: Option<(Vec<Uuid>,)> = sqlx::query_as(concat!(
        r"with w as (
              update kagzi.workers set last_heartbeat_at = $2, status = 'online'
              where id = $1 returning id
          ),
          extended as (
              update kagzi.runs r set lease_expires_at = $5, updated_at = $2
              from unnest($3::uuid[], $4::uuid[]) as h(id, token), w
              where r.id = h.id and r.worker_id = w.id and",
        lease_held!(r: "h.token", "$2"),
        r"returning r.id
          )
          select array(select id from extended) from w"
    ))
    .bind(worker)
    .bind(now)
    .bind(&ids)
    .bind(&tokens)
    .bind(lease_expires_at)
    .fetch_optional(&store.pool)
    .await?;
    let (extended,) = row.ok_or_else(|| decide::worker_not_found(worker))?;
    Ok(ids
        .into_iter()
        .filter(|id| !extended.contains(id))
        .map(RunId)
        .collect())
}

pub(super) async fn deregister_worker(
    store: &PgStore,
    worker: WorkerId,
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut tx = store.pool.begin().await?;
    let found = sqlx::query(
        r"update kagzi.workers set status = 'offline'
          where id = $1",
    )
    .bind(worker)
    .execute(&mut *tx)
    .await?;
    if found.rows_affected() == 0 {
        return Err(decide::worker_not_found(worker));
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

pub(super) async fn claim(
    store: &PgStore,
    worker: &Worker,
    max: u32,
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Task>> {
    let (tasks, _) = claim_or_next_due(store, worker, max, lease_expires_at, now).await?;
    Ok(tasks)
}

pub(super) async fn claim_or_next_due(
    store: &PgStore,
    worker: &Worker,
    max: u32,
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Vec<Task>, Option<DateTime<Utc>>)> {
    // The claimed runs, then one row with no run: when nothing was claimed, when the next
    // run of the worker's queue and workflows comes due (one statement for an empty poll).
    let workflows = decide::distinct_workflows(worker);
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
            build_may_claim!("$7"),
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
                  waiting_for = null, build_id = coalesce(r.build_id, $7),
                  pinned = r.pinned or ($7::text is not null and r.workflow = any($8))
              from due where r.id = due.id
              returning r.id, r.workflow, r.input, r.attempts, r.lease_token,
                        r.attempts > 1 or r.forked_from is not null as journaled
          )
          select id, workflow, input, attempts, lease_token, journaled,
                 null::timestamptz as next_due
          from claimed
          union all
          select null, null, null, null, null, null, min(n.available_at)
          from {worker_workflows} cross join lateral (",
            next_due_of_workflow!("$7"),
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
    .bind(worker.build_id.as_deref())
    .bind(&worker.pinned_workflows)
    .fetch_all(&store.pool)
    .await?;
    let mut next_due = None;
    let mut journaled = Vec::new();
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
                if row.journaled == Some(true) {
                    journaled.push(id);
                }
                claimed.push((id, workflow, input, attempts, token));
            }
            _ => next_due = row.next_due,
        }
    }
    if claimed.is_empty() {
        return Ok((Vec::new(), next_due));
    }
    // A run's first attempt has no journal yet (steps are only written under a lease), but
    // for a fork's, which starts with a copy.
    let ids = journaled;
    if ids.is_empty() {
        return Ok((decide::tasks(claimed, Vec::new(), lease_expires_at), None));
    }
    let journal: Vec<JournalRow> = sqlx::query_as(
        r"select run_id, key, position, output from kagzi.steps
          where run_id = any($1) and status = 'completed'
          order by run_id, position",
    )
    .bind(&ids)
    .fetch_all(&store.pool)
    .await?;
    Ok((decide::tasks(claimed, journal, lease_expires_at), None))
}

pub(super) async fn next_due(store: &PgStore, worker: &Worker) -> Result<Option<DateTime<Utc>>> {
    let workflows = decide::distinct_workflows(worker);
    if workflows.is_empty() {
        return Ok(None);
    }
    let next: Option<DateTime<Utc>> = sqlx::query_scalar(for_workflows(
        concat!(
            "select min(n.available_at) from {worker_workflows} cross join lateral (",
            next_due_of_workflow!("$3"),
            ") n"
        ),
        workflows.len(),
    ))
    .bind(&worker.queue)
    .bind(&workflows)
    .bind(worker.build_id.as_deref())
    .fetch_one(&store.pool)
    .await?;
    Ok(next)
}

pub(super) async fn mark_workers_offline(store: &PgStore, cutoff: DateTime<Utc>) -> Result<u64> {
    let done = sqlx::query(
        r"update kagzi.workers set status = 'offline'
          where status = 'online' and last_heartbeat_at < $1",
    )
    .bind(cutoff)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected())
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
    journaled: Option<bool>,
    next_due: Option<DateTime<Utc>>,
}

pub(super) async fn list_workers(
    store: &PgStore,
    filter: &WorkerFilter,
) -> Result<Vec<WorkerInfo>> {
    let mut query = QueryBuilder::<Postgres>::new(
        r"select w.id, w.queue, w.workflows, w.capacity, w.hostname, w.build_id,
                 w.pinned_workflows, w.status, w.registered_at, w.last_heartbeat_at,
                 (select count(*) from kagzi.runs r
                  where r.worker_id = w.id and r.status = 'running') as runs_held
          from kagzi.workers w
          where true",
    );
    if let Some(queue) = &filter.queue {
        query.push(" and w.queue = ").push_bind(queue.clone());
    }
    if let Some(status) = filter.status {
        query.push(" and w.status = ").push_bind(status.as_str());
    }
    if let Some(before) = filter.before {
        query.push(" and w.id < ").push_bind(before);
    }
    query
        .push(" order by w.id desc limit ")
        .push_bind(i64::from(filter.limit));
    let rows: Vec<WorkerInfoRow<Vec<String>>> =
        query.build_query_as().fetch_all(&store.pool).await?;
    Ok(rows.into_iter().map(WorkerInfo::from).collect())
}

pub(super) async fn queue_stats(store: &PgStore, now: DateTime<Utc>) -> Result<Vec<QueueStats>> {
    // Reads the runs in flight only (`runs_status_idx`), never the ended ones.
    let runs: Vec<QueueRow> = sqlx::query_as(
        r"select queue, workflow,
                 count(*) filter (where status = 'pending' and available_at <= $1),
                 count(*) filter (where status = 'pending' and available_at > $1),
                 count(*) filter (where status = 'running'),
                 count(*) filter (where status in ('sleeping', 'waiting')),
                 min(available_at) filter (where status = 'pending' and available_at <= $1)
          from kagzi.runs
          where status in ('pending', 'running', 'sleeping', 'waiting')
          group by queue, workflow",
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    let workers: Vec<QueueWorkersRow> = sqlx::query_as(
        r"select w.queue, f.workflow, count(*)
          from kagzi.workers w, unnest(w.workflows) f(workflow)
          where w.status = 'online'
          group by w.queue, f.workflow",
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(decide::queue_stats(runs, workers))
}
