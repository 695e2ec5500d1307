//! Signals on SQLite: delivering one to a run, and receiving one under the lease.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Note, SqliteStore};
use crate::model::{RunId, RunStatus, Step};
use crate::store::decide::{self, SignalRow};
use crate::store::{Result, Signal, Store};

pub(super) async fn send_signal(
    store: &SqliteStore,
    run: RunId,
    name: &str,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<()> {
    let mut tx = store.pool.begin().await?;
    let target: Option<(RunStatus, String)> = sqlx::query_as(
        r"select status, queue from runs
          where id = ?1",
    )
    .bind(run)
    .fetch_optional(&mut *tx)
    .await?;
    let (status, queue) = target.ok_or_else(|| decide::run_not_found(run))?;
    decide::takes_signals(run, status)?;
    sqlx::query("insert into signals (run_id, name, payload, created_at) values (?1, ?2, ?3, ?4)")
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
        store.notify(Note::Queue(queue));
    }
    Ok(())
}

pub(super) async fn receive_signal(
    store: &SqliteStore,
    run: RunId,
    lease_token: Uuid,
    name: &str,
    key: &str,
    position: u32,
    now: DateTime<Utc>,
) -> Result<Option<Step>> {
    let mut tx = store.pool.begin().await?;
    SqliteStore::ensure_lease(&mut *tx, run, lease_token, now).await?;
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

pub(super) async fn list_signals(store: &SqliteStore, run: RunId) -> Result<Vec<Signal>> {
    let rows: Vec<SignalRow> = sqlx::query_as(
        r"select name, payload, created_at, consumed_key from signals
          where run_id = ?1
          order by id desc
          limit ?2",
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
