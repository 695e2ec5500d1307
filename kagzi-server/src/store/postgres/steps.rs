//! Steps on PostgreSQL: a run's journal, and recording one step report under the lease.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::{PgStore, to_i32};
use crate::model::{RunId, Step};
use crate::store::decide;
use crate::store::{Error, PatchUsage, Result, StepReport, Store};

pub(super) async fn list_steps(store: &PgStore, id: RunId) -> Result<Vec<Step>> {
    let steps = sqlx::query_as::<_, Step>(concat!(
        "select ",
        step_columns!(),
        r" from kagzi.steps
          where run_id = $1 order by position, key"
    ))
    .bind(id)
    .fetch_all(&store.pool)
    .await?;
    if steps.is_empty() {
        // Tell an unknown run from one with no steps yet.
        store.get_run(id).await?;
    }
    Ok(steps)
}

pub(super) async fn record_step(
    store: &PgStore,
    run: RunId,
    lease_token: Uuid,
    report: &StepReport,
    now: DateTime<Utc>,
) -> Result<Step> {
    let step = sqlx::query_as::<_, Step>(concat!(
        r"with lease as (
              select id from kagzi.runs
              where id = $1 and",
        lease_held!("$2", "$3"),
        r"for share
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
    .fetch_optional(&store.pool)
    .await?;
    match step {
        Some(step) => Ok(step),
        None => {
            // Either the lease is gone, or a concurrent report for the same key won the
            // race after this statement's snapshot: look again with a fresh snapshot.
            store.ensure_lease(run, lease_token, now).await?;
            sqlx::query_as::<_, Step>(concat!(
                "select ",
                step_columns!(),
                r" from kagzi.steps
                  where run_id = $1 and key = $2"
            ))
            .bind(run)
            .bind(&report.key)
            .fetch_optional(&store.pool)
            .await?
            .ok_or_else(|| Error::NotFound(format!("step {} of run {run}", report.key)))
        }
    }
}

pub(super) async fn patch_usage(
    store: &PgStore,
    workflow: &str,
    patch: &str,
) -> Result<PatchUsage> {
    let key = decide::patch_key(patch);
    // `steps_patch_idx` finds the runs that answered; their runs are read by id.
    let (old_branch, first_patched_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        r"select count(*) filter (where s.output = $3 and r.status in
                     ('pending', 'running', 'sleeping', 'waiting')),
                 min(s.created_at) filter (where s.output = $4)
          from kagzi.steps s join kagzi.runs r on r.id = s.run_id
          where s.key = $2 and r.workflow = $1",
    )
    .bind(workflow)
    .bind(&key)
    .bind(Json(false))
    .bind(Json(true))
    .fetch_one(&store.pool)
    .await?;
    let unmarked: i64 = sqlx::query_scalar(
        r"select count(*) from kagzi.runs r
          where r.workflow = $1 and r.status in ('pending', 'running', 'sleeping', 'waiting')
            and ($3::timestamptz is null or r.created_at < $3)
            and not exists (select 1 from kagzi.steps s where s.run_id = r.id and s.key = $2)",
    )
    .bind(workflow)
    .bind(&key)
    .bind(first_patched_at)
    .fetch_one(&store.pool)
    .await?;
    Ok(decide::patch_usage(
        workflow,
        patch,
        old_branch,
        unmarked,
        first_patched_at,
    ))
}
