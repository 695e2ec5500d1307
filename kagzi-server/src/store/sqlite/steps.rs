//! Steps on SQLite: a run's journal, and recording one step report under the lease.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;
use sqlx::types::Json;
use uuid::Uuid;

use super::SqliteStore;
use crate::model::{RunId, Step};
use crate::store::decide;
use crate::store::{PatchUsage, Result, StepReport, Store};

pub(super) async fn list_steps(store: &SqliteStore, id: RunId) -> Result<Vec<Step>> {
    let steps = sqlx::query_as::<_, Step>(concat!(
        "select ",
        step_columns!(),
        r" from steps
          where run_id = ?1 order by position, key"
    ))
    .bind(id)
    .fetch_all(&store.pool)
    .await?;
    if steps.is_empty() {
        store.get_run(id).await?;
    }
    Ok(steps)
}

pub(super) async fn record_step(
    store: &SqliteStore,
    run: RunId,
    lease_token: Uuid,
    report: &StepReport,
    now: DateTime<Utc>,
) -> Result<Step> {
    let mut tx = store.pool.begin().await?;
    let step = write_step(&mut tx, run, lease_token, report, now).await?;
    tx.commit().await?;
    Ok(step)
}

/// Records a step outcome under the run's lease on `conn` (first write wins).
pub(super) async fn write_step(
    conn: &mut SqliteConnection,
    run: RunId,
    lease_token: Uuid,
    report: &StepReport,
    now: DateTime<Utc>,
) -> Result<Step> {
    SqliteStore::ensure_lease(&mut *conn, run, lease_token, now).await?;
    let written = sqlx::query_as::<_, Step>(concat!(
        r"insert into steps
              (run_id, key, position, status, output, error, attempts, created_at, finished_at)
          values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        step_first_write_wins!(),
        "returning ",
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
                r" from steps
                  where run_id = ?1 and key = ?2"
            ))
            .bind(run)
            .bind(&report.key)
            .fetch_one(&mut *conn)
            .await?
        }
    };
    Ok(step)
}

pub(super) async fn patch_usage(
    store: &SqliteStore,
    workflow: &str,
    patch: &str,
) -> Result<PatchUsage> {
    let key = decide::patch_key(patch);
    // `steps_patch_idx` finds the runs that answered; their runs are read by id.
    let (old_branch, first_patched_at): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        r"select count(*) filter (where s.output = ?3 and r.status in
                     ('pending', 'running', 'sleeping', 'waiting')),
                 min(s.created_at) filter (where s.output = ?4)
          from steps s join runs r on r.id = s.run_id
          where s.key = ?2 and r.workflow = ?1",
    )
    .bind(workflow)
    .bind(&key)
    .bind(Json(false))
    .bind(Json(true))
    .fetch_one(&store.pool)
    .await?;
    let unmarked: i64 = sqlx::query_scalar(
        r"select count(*) from runs r
          where r.workflow = ?1 and r.status in ('pending', 'running', 'sleeping', 'waiting')
            and (?3 is null or r.created_at < ?3)
            and not exists (select 1 from steps s where s.run_id = r.id and s.key = ?2)",
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
