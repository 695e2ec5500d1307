//! Runs on PostgreSQL: starting one, reading and listing them, cancelling, and the reports
//! that end or park an attempt (complete, fail, suspend), plus the watchdog's deadline and
//! lease expiry.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

use sqlx::{Postgres, QueryBuilder};

use super::{Held, PgStore, QUEUE_CHANNEL, RUN_DONE_CHANNEL, lock_held, notify, to_i32};
use crate::model::{Run, RunId, RunStatus};
use crate::store::decide::{self, KeyHolder, Suspension};
use crate::store::filter::{self, Bound};
use crate::store::retry::Failure;
use crate::store::{
    Backoff, Created, Error, Fork, NewRun, Result, RunCounts, RunFilter, Store, Suspend,
};

pub(super) async fn create_run(
    store: &PgStore,
    new: &NewRun,
    now: DateTime<Utc>,
) -> Result<Created> {
    // At most twice: the second try follows the release of an expired key.
    for _ in 0..2 {
        let id = RunId::at(now);
        // A claimed start is held at once and wakes no poll.
        let claim = new.claim.as_ref();
        let inserted: Option<(RunId, Option<String>)> = sqlx::query_as(
            r"with inserted as (
                  insert into kagzi.runs
                      (id, workflow, queue, status, input, retries, available_at, created_at,
                       updated_at, parent_id, idempotency_key, deadline_at, retry_policy,
                       attempts, lease_token, lease_expires_at, worker_id, started_at,
                       build_id, pinned)
                  values ($1, $2, $3,
                          case when $13::uuid is null then 'pending' else 'running' end,
                          $4, $5, $6, $7, $7, $9, $10, $11, $12,
                          case when $13::uuid is null then 0 else 1 end, $13, $14, $15,
                          case when $13::uuid is null then null else $7 end, $16, $17)
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
        .bind(claim.and_then(|c| c.build_id.as_deref()))
        .bind(claim.is_some_and(|c| c.pinned))
        .fetch_optional(&store.pool)
        .await?;
        if inserted.is_some() {
            return Ok(decide::started(id, new));
        }
        let key = new.idempotency_key.as_deref().unwrap_or_default();
        let holder: Option<KeyHolder> = sqlx::query_as(
            r"select id, workflow, input, created_at, parent_id from kagzi.runs
              where idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&store.pool)
        .await?;
        // Gone between the two statements (released by a concurrent start): try again.
        let Some(holder) = holder else { continue };
        if !holder.expired(new) {
            return holder.same_start(key, new);
        }
        sqlx::query(
            "update kagzi.runs set idempotency_key = null where id = $1 and idempotency_key = $2",
        )
        .bind(holder.id)
        .bind(key)
        .execute(&store.pool)
        .await?;
    }
    Err(Error::Conflict(format!(
        "idempotency key {:?} is being taken by concurrent starts; try again",
        new.idempotency_key.as_deref().unwrap_or_default()
    )))
}

pub(super) async fn get_run(store: &PgStore, id: RunId) -> Result<Run> {
    sqlx::query_as::<_, Run>(concat!(
        "select ",
        run_columns!(),
        r" from kagzi.runs
          where id = $1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?
    .ok_or_else(|| decide::run_not_found(id))
}

pub(super) async fn list_runs(store: &PgStore, filter: &RunFilter) -> Result<Vec<Run>> {
    let mut query =
        QueryBuilder::<Postgres>::new(concat!("select ", run_columns!(), " from kagzi.runs"));
    push_conditions(&mut query, &filter::run_conditions(filter), " where ");
    query
        .push(" order by id desc limit ")
        .push_bind(i64::from(filter.limit));
    Ok(query.build_query_as::<Run>().fetch_all(&store.pool).await?)
}

pub(super) async fn count_runs(store: &PgStore, filter: &RunFilter, cap: u64) -> Result<RunCounts> {
    let counted = filter::for_counting(filter);
    let conditions = filter::run_conditions(&counted);
    let cap_bound = i64::try_from(cap).unwrap_or(i64::MAX);
    let mut query = QueryBuilder::<Postgres>::new("select ");
    for (i, status) in RunStatus::ALL.into_iter().enumerate() {
        if i > 0 {
            query.push(", ");
        }
        // Each status reads at most `cap` entries of an index that fits the filter.
        query
            .push("(select count(*) from (select 1 from kagzi.runs where status = ")
            .push_bind(status.as_str());
        push_conditions(&mut query, &conditions, " and ");
        query.push(" limit ").push_bind(cap_bound).push(") c)");
    }
    let row: (i64, i64, i64, i64, i64, i64, i64) =
        query.build_query_as().fetch_one(&store.pool).await?;
    let (a, b, c, d, e, f, g) = row;
    Ok(filter::counts([a, b, c, d, e, f, g], cap))
}

/// Writes `conditions` into `query`, the first after `first` (` where ` or ` and `).
fn push_conditions(
    query: &mut QueryBuilder<Postgres>,
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

pub(super) async fn cancel_run(store: &PgStore, id: RunId, now: DateTime<Utc>) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
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
        return Err(decide::already_ended(&store.get_run(id).await?));
    }
    wake_parent(&mut tx, id, now).await?;
    tx.commit().await?;
    store.get_run(id).await
}

pub(super) async fn complete_run(
    store: &PgStore,
    run: RunId,
    lease_token: Uuid,
    output: &Value,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let done = sqlx::query_as::<_, Run>(concat!(
        r"with done as (
              update kagzi.runs
              set status = 'completed', output = $3, error = null, finished_at = $4,
                  updated_at = $4, lease_token = null, lease_expires_at = null
              where id = $1 and",
        lease_held!("$2", "$4"),
        r"returning *
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
        return Err(store.lease_error(run, lease_token, now).await);
    };
    wake_parent(&mut tx, run, now).await?;
    tx.commit().await?;
    Ok(done)
}

pub(super) async fn fail_run(
    store: &PgStore,
    run: RunId,
    lease_token: Uuid,
    error: &str,
    retryable: bool,
    backoff: Backoff,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let Some(held) = lock_held(&mut tx, run, lease_token, now).await? else {
        drop(tx);
        return Err(store.lease_error(run, lease_token, now).await);
    };
    let failure = Failure::of(
        &held.attempt,
        error,
        retryable,
        backoff,
        now,
        rand::random(),
    );
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
    .bind(failure.retry)
    .bind(failure.available_at)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    if failure.retry {
        notify(&mut tx, QUEUE_CHANNEL, &failed.queue).await?;
    } else {
        notify(&mut tx, RUN_DONE_CHANNEL, &run.to_string()).await?;
        wake_parent(&mut tx, run, now).await?;
    }
    tx.commit().await?;
    Ok(failed)
}

pub(super) async fn suspend_run(
    store: &PgStore,
    run: RunId,
    lease_token: Uuid,
    suspend: &Suspend,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let Some(Held { queue, .. }) = lock_held(&mut tx, run, lease_token, now).await? else {
        drop(tx);
        return Err(store.lease_error(run, lease_token, now).await);
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
    let parked = Suspension::of(suspend, signal_waiting, child_ended, now);
    let suspended = sqlx::query_as::<_, Run>(concat!(
        r"update kagzi.runs
          set status = $2, available_at = $3, wake_at = $4, waiting_for = $5, updated_at = $6,
              lease_token = null, lease_expires_at = null
          where id = $1
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
    // Pollers recompute when to wake; a due run is claimed at once.
    notify(&mut tx, QUEUE_CHANNEL, &queue).await?;
    tx.commit().await?;
    Ok(suspended)
}

pub(super) async fn expire_deadlines(store: &PgStore, now: DateTime<Utc>) -> Result<u64> {
    let mut tx = store.pool.begin().await?;
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

pub(super) async fn expire_leases(store: &PgStore, now: DateTime<Utc>) -> Result<u64> {
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
    .fetch_all(&store.pool)
    .await?;
    Ok(requeued.iter().map(|(n,)| *n as u64).sum())
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

pub(super) async fn retry_run(store: &PgStore, id: RunId, now: DateTime<Utc>) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let retried = sqlx::query_as::<_, Run>(concat!(
        r"update kagzi.runs
          set status = 'pending', available_at = $2, updated_at = $2, finished_at = null,
              output = null, deadline_at = null, wake_at = null, waiting_for = null,
              lease_token = null, lease_expires_at = null, worker_id = null,
              attempt_base = attempts
          where id = $1 and status in ('failed', 'cancelled')
          returning ",
        run_columns!()
    ))
    .bind(id)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(run) = retried else {
        drop(tx);
        return Err(decide::not_retryable(&store.get_run(id).await?));
    };
    notify(&mut tx, QUEUE_CHANNEL, &run.queue).await?;
    tx.commit().await?;
    Ok(run)
}

pub(super) async fn fork_run(
    store: &PgStore,
    id: RunId,
    fork: &Fork,
    now: DateTime<Utc>,
) -> Result<Run> {
    let mut tx = store.pool.begin().await?;
    let from: Option<i32> = match &fork.from_step {
        None => None,
        Some(key) => Some(
            sqlx::query_scalar(
                r"select position from kagzi.steps
                  where run_id = $1 and key = $2",
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
        r"insert into kagzi.runs
              (id, workflow, queue, status, input, retries, retry_policy, available_at,
               created_at, updated_at, forked_from)
          select $2, workflow, coalesce($3, queue), 'pending', coalesce($4, input), retries,
                 retry_policy, $5, $5, $5, id
          from kagzi.runs
          where id = $1
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
            r"insert into kagzi.steps
                  (run_id, key, position, status, output, error, attempts, created_at, finished_at)
              select $2, key, position, status, output, error, attempts, created_at, finished_at
              from kagzi.steps
              where run_id = $1 and status = 'completed' and position < $3",
        )
        .bind(id)
        .bind(forked)
        .bind(before)
        .execute(&mut *tx)
        .await?;
    }
    notify(&mut tx, QUEUE_CHANNEL, &run.queue).await?;
    tx.commit().await?;
    Ok(run)
}

pub(super) async fn delete_run(store: &PgStore, id: RunId) -> Result<()> {
    let deleted = sqlx::query(
        r"delete from kagzi.runs r
          where id = $1 and status in ('completed', 'failed', 'cancelled')
            and not exists (
                select 1 from kagzi.runs c
                where c.parent_id = r.id
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
    store: &PgStore,
    status: RunStatus,
    cutoff: DateTime<Utc>,
    limit: u32,
) -> Result<u64> {
    // `runs_ended_idx` serves the oldest first; rows another replica is deleting, or a
    // claim or report holds, are skipped rather than waited for.
    let deleted = sqlx::query(
        r"delete from kagzi.runs
          where id in (
              select r.id from kagzi.runs r
              where r.status = $1 and r.finished_at < $2
                and not exists (
                    select 1 from kagzi.runs c
                    where c.parent_id = r.id
                      and c.status in ('pending', 'running', 'sleeping', 'waiting'))
              order by r.finished_at
              limit $3
              for update skip locked)",
    )
    .bind(status.as_str())
    .bind(cutoff)
    .bind(i64::from(limit))
    .execute(&store.pool)
    .await?;
    Ok(deleted.rows_affected())
}
