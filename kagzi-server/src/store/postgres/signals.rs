//! Signals on PostgreSQL: delivering one to a run, and receiving one under the lease.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{PgStore, QUEUE_CHANNEL, lock_held, notify, to_i32};
use crate::model::{RunId, RunStatus, Step};
use crate::store::decide::{self, SignalRow};
use crate::store::{Result, Signal, Store};

pub(super) async fn send_signal(
    store: &PgStore,
    run: RunId,
    name: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = store.pool.begin().await?;
    let target: Option<(RunStatus, String)> = sqlx::query_as(
        r"select status, queue from kagzi.runs
          where id = $1 for update",
    )
    .bind(run)
    .fetch_optional(&mut *tx)
    .await?;
    let (status, queue) = target.ok_or_else(|| decide::run_not_found(run))?;
    decide::takes_signals(run, status)?;
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

pub(super) async fn receive_signal(
    store: &PgStore,
    run: RunId,
    lease_token: Uuid,
    name: &str,
    key: &str,
    position: u32,
    now: DateTime<Utc>,
) -> Result<Option<Step>> {
    let mut tx = store.pool.begin().await?;
    if lock_held(&mut tx, run, lease_token, now).await?.is_none() {
        drop(tx);
        return Err(store.lease_error(run, lease_token, now).await);
    }
    let step = sqlx::query_as::<_, Step>(concat!(
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
          returning ",
        step_columns!()
    ))
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

pub(super) async fn list_signals(store: &PgStore, run: RunId) -> Result<Vec<Signal>> {
    let rows: Vec<SignalRow> = sqlx::query_as(
        r"select name, payload, created_at, consumed_key from kagzi.signals
          where run_id = $1
          order by id desc
          limit $2",
    )
    .bind(run)
    .bind(decide::MAX_SIGNALS_LISTED)
    .fetch_all(&store.pool)
    .await?;
    if rows.is_empty() {
        // An unknown run is a 404, not an empty list.
        store.get_run(run).await?;
    }
    Ok(decide::signals(rows))
}
