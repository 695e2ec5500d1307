//! Workers on SQLite: registration, heartbeats, deregistration and the watchdog's offline
//! marking, and the claim that hands a worker its due runs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};
use uuid::Uuid;

use super::SqliteStore;
use crate::model::{Lease, RunId, Task, Worker, WorkerId};
use crate::store::decide::{self, JournalRow, JsonNames, QueueRow, QueueWorkersRow, WorkerInfoRow};
use crate::store::{NewWorker, QueueStats, Result, WorkerFilter, WorkerInfo};

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

/// A worker's row: id, queue, workflows (a JSON array), capacity, host, build id and pinned
/// workflows (a JSON array).
type WorkerRow = (
    WorkerId,
    String,
    Json<Vec<String>>,
    i32,
    Option<String>,
    Option<String>,
    Json<Vec<String>>,
);

/// A run the claim took, with the due time it was claimed at (the claim returns its runs in
/// no order; they are handed out oldest due first) and whether it has a journal.
type ClaimedAt = (RunId, String, Json<Value>, i32, Uuid, DateTime<Utc>, bool);

/// Whether the worker whose build id is parameter `build` may claim a run: a pinned run only
/// goes to workers of its build.
fn build_may_claim(build: &str) -> String {
    format!(" and (not pinned or build_id = {build}) ")
}

pub(super) async fn register_worker(
    store: &SqliteStore,
    new: &NewWorker,
    now: DateTime<Utc>,
) -> Result<WorkerId> {
    let id = WorkerId::new();
    sqlx::query(
        r"insert into workers
              (id, queue, workflows, capacity, hostname, status, registered_at, last_heartbeat_at,
               build_id, pinned_workflows)
          values (?1, ?2, ?3, ?4, ?5, 'online', ?6, ?6, ?7, ?8)",
    )
    .bind(id)
    .bind(&new.queue)
    .bind(Json(&new.workflows))
    .bind(i64::from(new.capacity))
    .bind(new.hostname.as_deref())
    .bind(now)
    .bind(new.build_id.as_deref())
    .bind(Json(&new.pinned_workflows))
    .execute(&store.pool)
    .await?;
    Ok(id)
}

pub(super) async fn get_worker(store: &SqliteStore, id: WorkerId) -> Result<Worker> {
    let row: Option<WorkerRow> = sqlx::query_as(
        r"select id, queue, workflows, capacity, hostname, build_id, pinned_workflows
          from workers
          where id = ?1",
    )
    .bind(id)
    .fetch_optional(&store.pool)
    .await?;
    let (id, queue, Json(workflows), capacity, hostname, build_id, Json(pinned_workflows)) =
        row.ok_or_else(|| decide::worker_not_found(id))?;
    Ok(Worker {
        id,
        queue,
        workflows,
        capacity,
        hostname,
        build_id,
        pinned_workflows,
    })
}

pub(super) async fn heartbeat(
    store: &SqliteStore,
    worker: WorkerId,
    held: &[Lease],
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<RunId>> {
    let mut tx = store.pool.begin().await?;
    let found =
        sqlx::query("update workers set last_heartbeat_at = ?2, status = 'online' where id = ?1")
            .bind(worker)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    if found.rows_affected() == 0 {
        return Err(decide::worker_not_found(worker));
    }
    let mut lost = Vec::new();
    for lease in held {
        let extended = sqlx::query(concat!(
            r"update runs set lease_expires_at = ?4, updated_at = ?5
              where id = ?1 and worker_id = ?3 and",
            lease_held!("?2", "?5")
        ))
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

pub(super) async fn deregister_worker(
    store: &SqliteStore,
    worker: WorkerId,
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut tx = store.pool.begin().await?;
    let found = sqlx::query(
        r"update workers set status = 'offline'
          where id = ?1",
    )
    .bind(worker)
    .execute(&mut *tx)
    .await?;
    if found.rows_affected() == 0 {
        return Err(decide::worker_not_found(worker));
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
    store.notify_queues(queues);
    Ok(released)
}

pub(super) async fn claim(
    store: &SqliteStore,
    worker: &Worker,
    max: u32,
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Task>> {
    let workflows = decide::distinct_workflows(worker);
    if workflows.is_empty() {
        return Ok(Vec::new());
    }
    // Parameters: ?1 queue, ?2 now, ?3 how many, ?4 lease expiry, ?5 worker, ?6 its build
    // id, ?7 its pinned workflows (a JSON array), then the workflows from ?8 on.
    let pin = build_may_claim("?6");
    let due = per_workflow(workflows.len(), 8, |workflow| {
        format!(
            "select * from (select id, available_at from runs where {RUNS_DUE} \
             and workflow = {workflow} and available_at <= ?2 {pin} \
             order by available_at, id limit ?3)"
        )
    });
    let statement = format!(
        "update runs \
         set status = 'running', attempts = attempts + 1, lease_token = randomblob(16), \
             lease_expires_at = ?4, worker_id = ?5, started_at = coalesce(started_at, ?2), \
             updated_at = ?2, wake_at = null, waiting_for = null, \
             build_id = coalesce(build_id, ?6), \
             pinned = pinned or (?6 is not null and workflow in (select value from json_each(?7))) \
         where id in (select id from ({due}) order by available_at, id limit ?3) \
         returning id, workflow, input, attempts, lease_token, available_at, \
             attempts > 1 or forked_from is not null"
    );
    let mut tx = store.pool.begin().await?;
    let mut query = sqlx::query_as(AssertSqlSafe(statement))
        .bind(&worker.queue)
        .bind(now)
        .bind(i64::from(max))
        .bind(lease_expires_at)
        .bind(worker.id)
        .bind(worker.build_id.as_deref())
        .bind(Json(&worker.pinned_workflows));
    for workflow in &workflows {
        query = query.bind(*workflow);
    }
    let mut claimed: Vec<ClaimedAt> = query.fetch_all(&mut *tx).await?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    claimed.sort_by_key(|run| (run.5, run.0));
    // A run's first attempt has no journal yet (steps are only written under a lease), but
    // for a fork's, which starts with a copy.
    let resumed: Vec<RunId> = claimed
        .iter()
        .filter(|run| run.6)
        .map(|run| run.0)
        .collect();
    let journal: Vec<JournalRow> = if resumed.is_empty() {
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
        .map(|(id, workflow, input, attempt, token, _, _)| (id, workflow, input, attempt, token))
        .collect();
    Ok(decide::tasks(claimed, journal, lease_expires_at))
}

pub(super) async fn next_due(
    store: &SqliteStore,
    worker: &Worker,
) -> Result<Option<DateTime<Utc>>> {
    let workflows = decide::distinct_workflows(worker);
    if workflows.is_empty() {
        return Ok(None);
    }
    // Parameters: ?1 queue, ?2 the worker's build id, then the workflows from ?3 on.
    let pin = build_may_claim("?2");
    let firsts = per_workflow(workflows.len(), 3, |workflow| {
        format!(
            "select * from (select available_at from runs where {RUNS_DUE} \
             and workflow = {workflow} {pin} order by available_at limit 1)"
        )
    });
    let mut query = sqlx::query_scalar(AssertSqlSafe(format!(
        "select min(available_at) from ({firsts})"
    )))
    .bind(&worker.queue)
    .bind(worker.build_id.as_deref());
    for workflow in &workflows {
        query = query.bind(*workflow);
    }
    let next: Option<DateTime<Utc>> = query.fetch_one(&store.pool).await?;
    Ok(next)
}

/// Claims, and when that claims nothing also says when the next run comes due: the two
/// statements one after the other, as the one connection would run them anyway.
pub(super) async fn claim_or_next_due(
    store: &SqliteStore,
    worker: &Worker,
    max: u32,
    lease_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Vec<Task>, Option<DateTime<Utc>>)> {
    let tasks = claim(store, worker, max, lease_expires_at, now).await?;
    if !tasks.is_empty() {
        return Ok((tasks, None));
    }
    Ok((tasks, next_due(store, worker).await?))
}

pub(super) async fn mark_workers_offline(
    store: &SqliteStore,
    cutoff: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "update workers set status = 'offline' where status = 'online' and last_heartbeat_at < ?1",
    )
    .bind(cutoff)
    .execute(&store.pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn list_workers(
    store: &SqliteStore,
    filter: &WorkerFilter,
) -> Result<Vec<WorkerInfo>> {
    let mut query = QueryBuilder::<Sqlite>::new(
        r"select w.id, w.queue, w.workflows, w.capacity, w.hostname, w.build_id,
                 w.pinned_workflows, w.status, w.registered_at, w.last_heartbeat_at,
                 (select count(*) from runs r
                  where r.worker_id = w.id and r.status = 'running') as runs_held
          from workers w
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
    let rows: Vec<WorkerInfoRow<JsonNames>> = query.build_query_as().fetch_all(&store.pool).await?;
    Ok(rows.into_iter().map(WorkerInfo::from).collect())
}

pub(super) async fn queue_stats(
    store: &SqliteStore,
    now: DateTime<Utc>,
) -> Result<Vec<QueueStats>> {
    // Reads the runs in flight only (`runs_status_idx`), never the ended ones.
    let runs: Vec<QueueRow> = sqlx::query_as(
        r"select queue, workflow,
                 count(*) filter (where status = 'pending' and available_at <= ?1),
                 count(*) filter (where status = 'pending' and available_at > ?1),
                 count(*) filter (where status = 'running'),
                 count(*) filter (where status in ('sleeping', 'waiting')),
                 min(available_at) filter (where status = 'pending' and available_at <= ?1)
          from runs
          where status in ('pending', 'running', 'sleeping', 'waiting')
          group by queue, workflow",
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    let workers: Vec<QueueWorkersRow> = sqlx::query_as(
        r"select w.queue, f.value, count(*)
          from workers w, json_each(w.workflows) f
          where w.status = 'online'
          group by w.queue, f.value",
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(decide::queue_stats(runs, workers))
}
