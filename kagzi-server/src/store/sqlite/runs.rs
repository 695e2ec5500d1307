//! Runs on SQLite: starting one, reading and listing them, cancelling, and the reports
//! that end or park an attempt (complete, fail, suspend), plus the watchdog's deadline and
//! lease expiry.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{Note, SqliteStore};
use crate::model::{Run, RunId, RunStatus};
use crate::store::decide::{self, KeyHolder, Suspension};
use crate::store::filter::{self, Bound};
use crate::store::retry::{Attempt, Failure};
use crate::store::{
    Backoff, Created, Error, Fork, NewRun, Result, RunCounts, RunFilter, Store, Suspend,
};

pub(super) async fn create_run(
    store: &SqliteStore,
    new: &NewRun,
    now: DateTime<Utc>,
) -> Result<Created> {
    let mut conn = store.pool.acquire().await?;
    let created = insert_run(&mut conn, new, now).await?;
    if !created.existing && new.claim.is_none() {
        store.notify(Note::Queue(new.queue.clone()));
    }
    Ok(created)
}

pub(super) async fn get_run(store: &SqliteStore, id: RunId) -> Result<Run> {
    sqlx::query_as::<_, Run>(concat!(
        "select ",
        run_columns!(),
        r" from runs
          where id = ?1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .ok_or_else(|| decide::run_not_found(id))
}

pub(super) async fn list_runs(store: &SqliteStore, filter: &RunFilter) -> Result<Vec<Run>> {
    let mut query = QueryBuilder::<Sqlite>::new(concat!("select ", run_columns!(), " from runs"));
    push_conditions(&mut query, &filter::run_conditions(filter), " where ");
    query
        .push(" order by id desc limit ")
        .push_bind(i64::from(filter.limit));
    Ok(query.build_query_as::<Run>().fetch_all(&store.pool).await?)
}

pub(super) async fn count_runs(
    store: &SqliteStore,
    filter: &RunFilter,
    cap: u64,
) -> Result<RunCounts> {
    let counted = filter::for_counting(filter);
    let conditions = filter::run_conditions(&counted);
    let cap_bound = i64::try_from(cap).unwrap_or(i64::MAX);
    let mut query = QueryBuilder::<Sqlite>::new("select ");
    for (i, status) in RunStatus::ALL.into_iter().enumerate() {
        if i > 0 {
            query.push(", ");
        }
        // Each status reads at most `cap` entries of an index that fits the filter.
        query
            .push("(select count(*) from (select 1 from runs where status = ")
            .push_bind(status.as_str());
        push_conditions(&mut query, &conditions, " and ");
        query.push(" limit ").push_bind(cap_bound).push("))");
    }
    let row: (i64, i64, i64, i64, i64, i64, i64) =
        query.build_query_as().fetch_one(&store.pool).await?;
    let (a, b, c, d, e, f, g) = row;
    Ok(filter::counts([a, b, c, d, e, f, g], cap))
}

/// Writes `conditions` into `query`, the first after `first` (` where ` or ` and `).
fn push_conditions(
    query: &mut QueryBuilder<Sqlite>,
    conditions: &[filter::Condition<'_>],
    first: &str,
) {
    for (i, (sql, bound)) in conditions.iter().enumerate() {
        query.push(if i == 0 { first } else { " and " }).push(*sql);
        match bound {
            Bound::Text(text) => query.push_bind(text.to_string()),
            Bound::Run(id) => query.push_bind(*id),
            Bound::Schedule(id) => query.push_bind(*id),
            Bound::Time(at) => query.push_bind(*at),
        };
    }
}

pub(super) async fn cancel_run(store: &SqliteStore, id: RunId, now: DateTime<Utc>) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
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
        return Err(decide::already_ended(&store.get_run(id).await?));
    }
    let parent_queue = wake_parent(&mut tx, id, now).await?;
    tx.commit().await?;
    for run in cancelled {
        store.notify(Note::RunDone(run));
    }
    store.notify_queues(parent_queue.into_iter().collect());
    store.get_run(id).await
}

pub(super) async fn complete_run(
    store: &SqliteStore,
    run: RunId,
    lease_token: Uuid,
    output: &Value,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let (done, parent_queue) = finish_run(&mut tx, run, lease_token, output, now).await?;
    tx.commit().await?;
    store.notify(Note::RunDone(run));
    store.notify_queues(parent_queue.into_iter().collect());
    Ok(done)
}

pub(super) async fn fail_run(
    store: &SqliteStore,
    run: RunId,
    lease_token: Uuid,
    error: &str,
    retryable: bool,
    backoff: Backoff,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    SqliteStore::ensure_lease(&mut *tx, run, lease_token, now).await?;
    let attempt: Attempt =
        // A manual retry starts the retry policy's count again (`attempt_base`).
        sqlx::query_as(
            "select attempts - attempt_base as attempts, retries, retry_policy from runs where id = ?1",
        )
            .bind(run)
            .fetch_one(&mut *tx)
            .await?;
    let failure = Failure::of(&attempt, error, retryable, backoff, now, rand::random());
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
    .bind(failure.retry)
    .bind(failure.available_at)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let parent_queue = if failure.retry {
        None
    } else {
        wake_parent(&mut tx, run, now).await?
    };
    tx.commit().await?;
    if failure.retry {
        store.notify(Note::Queue(failed.queue.clone()));
    } else {
        store.notify(Note::RunDone(run));
        store.notify_queues(parent_queue.into_iter().collect());
    }
    Ok(failed)
}

pub(super) async fn suspend_run(
    store: &SqliteStore,
    run: RunId,
    lease_token: Uuid,
    suspend: &Suspend,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    SqliteStore::ensure_lease(&mut *tx, run, lease_token, now).await?;
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
    let parked = Suspension::of(suspend, signal_waiting, child_ended, now);
    let suspended = sqlx::query_as::<_, Run>(concat!(
        r"update runs
          set status = ?2, available_at = ?3, wake_at = ?4, waiting_for = ?5, updated_at = ?6,
              lease_token = null, lease_expires_at = null
          where id = ?1
          returning ",
        run_columns!()
    ))
    .bind(run)
    .bind(parked.status)
    .bind(parked.available_at)
    .bind(parked.wake_at)
    .bind(parked.waiting_for)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    store.notify(Note::Queue(suspended.queue.clone()));
    Ok(suspended)
}

pub(super) async fn expire_deadlines(store: &SqliteStore, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = store.pool.begin().await?;
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
        store.notify(Note::RunDone(*run));
    }
    store.notify_queues(queues);
    Ok(expired.len() as u64)
}

pub(super) async fn expire_leases(store: &SqliteStore, now: DateTime<Utc>) -> Result<u64> {
    let queues: Vec<String> = sqlx::query_scalar(
        r"update runs
          set status = 'pending', lease_token = null, lease_expires_at = null,
              available_at = ?1, updated_at = ?1
          where status = 'running' and lease_expires_at < ?1
          returning queue",
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    let requeued = queues.len() as u64;
    store.notify_queues(queues);
    Ok(requeued)
}

/// Inserts a new run (or finds the run its idempotency key already started) on `conn`.
pub(super) async fn insert_run(
    conn: &mut SqliteConnection,
    new: &NewRun,
    now: DateTime<Utc>,
) -> Result<Created> {
    // At most twice: the second try follows the release of an expired key.
    for _ in 0..2 {
        let id = RunId::at(now);
        // A claimed start is held at once (and wakes no poll: see the callers).
        let claim = new.claim.as_ref();
        let inserted = sqlx::query(
            r"insert into runs
                  (id, workflow, queue, status, input, retries, available_at, created_at, updated_at,
                   parent_id, idempotency_key, deadline_at, retry_policy,
                   attempts, lease_token, lease_expires_at, worker_id, started_at,
                   build_id, pinned)
              values (?1, ?2, ?3, case when ?12 is null then 'pending' else 'running' end,
                      ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11,
                      case when ?12 is null then 0 else 1 end, ?12, ?13, ?14,
                      case when ?12 is null then null else ?7 end, ?15, ?16)
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
        .bind(claim.and_then(|c| c.build_id.as_deref()))
        .bind(claim.is_some_and(|c| c.pinned))
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(decide::started(id, new));
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let holder: KeyHolder = sqlx::query_as(
            "select id, workflow, input, created_at, parent_id from runs where idempotency_key = ?1",
        )
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
        if !holder.expired(new) {
            return holder.same_start(key, new);
        }
        sqlx::query("update runs set idempotency_key = null where id = ?1")
            .bind(holder.id)
            .execute(&mut *conn)
            .await?;
    }
    Err(Error::Conflict(format!(
        "idempotency key {:?} could not be taken; try again",
        new.idempotency_key.as_deref().unwrap_or_default()
    )))
}

/// Completes a run under its lease on `conn` and wakes its waiting parent; returns the run
/// and the parent's queue if it was woken.
pub(super) async fn finish_run(
    conn: &mut SqliteConnection,
    run: RunId,
    lease_token: Uuid,
    output: &Value,
    now: DateTime<Utc>,
) -> Result<(Run, Option<String>)> {
    let done = sqlx::query_as::<_, Run>(concat!(
        r"update runs
          set status = 'completed', output = ?3, error = null, finished_at = ?4,
              updated_at = ?4, lease_token = null, lease_expires_at = null
          where id = ?1 and",
        lease_held!("?2", "?4"),
        "returning ",
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
        return Err(decide::lease_lost(run, check));
    };
    let parent_queue = wake_parent(conn, run, now).await?;
    Ok((done, parent_queue))
}

/// Makes the parent of `child` due again if it is waiting (a woken run that finds nothing to
/// continue with suspends again). Returns the parent's queue when it was woken.
async fn wake_parent(
    conn: &mut SqliteConnection,
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

pub(super) async fn retry_run(store: &SqliteStore, id: RunId, now: DateTime<Utc>) -> Result<Run> {
    let retried = sqlx::query_as::<_, Run>(concat!(
        r"update runs
          set status = 'pending', available_at = ?2, updated_at = ?2, finished_at = null,
              output = null, deadline_at = null, wake_at = null, waiting_for = null,
              lease_token = null, lease_expires_at = null, worker_id = null,
              attempt_base = attempts
          where id = ?1 and status in ('failed', 'cancelled')
          returning ",
        run_columns!()
    ))
    .bind(id)
    .bind(now)
    .fetch_optional(&store.pool)
    .await?;
    let Some(run) = retried else {
        return Err(decide::not_retryable(&store.get_run(id).await?));
    };
    store.notify_queues(vec![run.queue.clone()]);
    Ok(run)
}

pub(super) async fn fork_run(
    store: &SqliteStore,
    id: RunId,
    fork: &Fork,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let from: Option<i64> = match &fork.from_step {
        None => None,
        Some(key) => Some(
            sqlx::query_scalar(
                r"select position from steps
                  where run_id = ?1 and key = ?2",
            )
            .bind(id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| decide::step_not_found(id, key))?,
        ),
    };
    let forked = RunId::at(now);
    let run = sqlx::query_as::<_, Run>(concat!(
        r"insert into runs
              (id, workflow, queue, status, input, retries, retry_policy, available_at,
               created_at, updated_at, forked_from)
          select ?2, workflow, coalesce(?3, queue), 'pending', coalesce(?4, input), retries,
                 retry_policy, ?5, ?5, ?5, id
          from runs
          where id = ?1
          returning ",
        run_columns!()
    ))
    .bind(id)
    .bind(forked)
    .bind(fork.queue.as_deref())
    .bind(fork.input.as_ref().map(Json))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| decide::run_not_found(id))?;
    if let Some(before) = from {
        sqlx::query(
            r"insert into steps
                  (run_id, key, position, status, output, error, attempts, created_at, finished_at)
              select ?2, key, position, status, output, error, attempts, created_at, finished_at
              from steps
              where run_id = ?1 and status = 'completed' and position < ?3",
        )
        .bind(id)
        .bind(forked)
        .bind(before)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    store.notify_queues(vec![run.queue.clone()]);
    Ok(run)
}

pub(super) async fn delete_run(store: &SqliteStore, id: RunId) -> Result<()> {
    let deleted = sqlx::query(
        r"delete from runs
          where id = ?1 and status in ('completed', 'failed', 'cancelled')
            and not exists (
                select 1 from runs c
                where c.parent_id = ?1
                  and c.status in ('pending', 'running', 'sleeping', 'waiting'))",
    )
    .bind(id)
    .execute(&store.pool)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(decide::not_deletable(&store.get_run(id).await?));
    }
    Ok(())
}

pub(super) async fn reap_runs(
    store: &SqliteStore,
    status: RunStatus,
    cutoff: DateTime<Utc>,
    limit: u32,
) -> Result<u64> {
    // `runs_ended_idx` serves the oldest first; one small batch at a time, so the single
    // writer is never held long.
    let deleted = sqlx::query(
        r"delete from runs
          where id in (
              select r.id from runs r
              where r.status = ?1 and r.finished_at < ?2
                and not exists (
                    select 1 from runs c
                    where c.parent_id = r.id
                      and c.status in ('pending', 'running', 'sleeping', 'waiting'))
              order by r.finished_at
              limit ?3)",
    )
    .bind(status.as_str())
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(&store.pool)
    .await?;
    Ok(deleted.rows_affected())
}
