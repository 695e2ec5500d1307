//! Schedules on PostgreSQL: their settings (create, read, list, update, pause, delete), a
//! trigger, and the scheduler's reads and fires.

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::QueryAs;
use sqlx::types::Json;

use super::{PgStore, QUEUE_CHANNEL, notify, to_i32, to_i64};
use crate::model::RunId;
use crate::schedule::{Schedule, ScheduleId};
use crate::store::decide::{self, FireRow, Firing, ScheduledRun};
use crate::store::{
    FireOutcome, NewSchedule, Result, ScheduleFilter, ScheduleFire, ScheduleKey, ScheduleSpec,
    ScheduleUpdate, Store,
};

/// A statement that returns schedules, with its parameters bound so far.
type ScheduleQuery<'q> = QueryAs<'q, Postgres, Schedule, PgArguments>;

/// Binds `spec` as the next nine parameters: workflow, queue, cron, time zone, input,
/// retries, overlap, catch-up window and catch-up maximum.
fn bind_spec<'q>(query: ScheduleQuery<'q>, spec: &'q ScheduleSpec) -> ScheduleQuery<'q> {
    query
        .bind(&spec.workflow)
        .bind(&spec.queue)
        .bind(&spec.cron)
        .bind(&spec.time_zone)
        .bind(Json(&spec.input))
        .bind(to_i32(spec.retries))
        .bind(spec.overlap)
        .bind(spec.catch_up.window_ms.map(to_i64))
        .bind(to_i32(spec.catch_up.max))
}

pub(super) async fn create_schedule(
    store: &PgStore,
    new: &NewSchedule,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    let insert = sqlx::query_as(concat!(
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
    .bind(new.name.as_deref());
    let created = bind_spec(insert, &new.spec)
        .bind(new.paused)
        .bind(new.next_fire_at)
        .bind(now)
        .fetch_optional(&store.pool)
        .await?;
    created.ok_or_else(|| decide::schedule_taken(new))
}

pub(super) async fn get_schedule(store: &PgStore, key: &ScheduleKey) -> Result<Schedule> {
    let select: ScheduleQuery<'_> = match key {
        ScheduleKey::Id(id) => sqlx::query_as(concat!(
            "select ",
            schedule_columns!(),
            r" from kagzi.schedules
              where id = $1"
        ))
        .bind(id),
        ScheduleKey::Name(name) => sqlx::query_as(concat!(
            "select ",
            schedule_columns!(),
            r" from kagzi.schedules
              where name = $1"
        ))
        .bind(name),
    };
    let found = select.fetch_optional(&store.pool).await?;
    found.ok_or_else(|| decide::missing_schedule(key))
}

pub(super) async fn list_schedules(
    store: &PgStore,
    filter: &ScheduleFilter,
) -> Result<Vec<Schedule>> {
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
    .fetch_all(&store.pool)
    .await?;
    Ok(schedules)
}

pub(super) async fn update_schedule(
    store: &PgStore,
    id: ScheduleId,
    version: i64,
    update: &ScheduleUpdate,
    now: DateTime<Utc>,
) -> Result<Schedule> {
    let set = sqlx::query_as(concat!(
        r"update kagzi.schedules
          set workflow = $3, queue = $4, cron = $5, time_zone = $6, input = $7, retries = $8,
              overlap = $9, catch_up_window_ms = $10, catch_up_max = $11,
              next_fire_at = $12, version = version + 1, updated_at = $13
          where id = $1 and version = $2
          returning ",
        schedule_columns!()
    ))
    .bind(id)
    .bind(version);
    let updated = bind_spec(set, &update.spec)
        .bind(update.next_fire_at)
        .bind(now)
        .fetch_optional(&store.pool)
        .await?;
    match updated {
        Some(schedule) => Ok(schedule),
        None => Err(decide::update_missed(
            id,
            store.get_schedule(&ScheduleKey::Id(id)).await,
        )),
    }
}

pub(super) async fn set_schedule_paused(
    store: &PgStore,
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
    .fetch_optional(&store.pool)
    .await?;
    match changed {
        Some(schedule) => Ok(schedule),
        None => store.get_schedule(&ScheduleKey::Id(id)).await,
    }
}

pub(super) async fn delete_schedule(store: &PgStore, id: ScheduleId) -> Result<()> {
    let deleted = sqlx::query(
        r"delete from kagzi.schedules
          where id = $1",
    )
    .bind(id)
    .execute(&store.pool)
    .await?;
    if deleted.rows_affected() == 0 {
        return Err(decide::schedule_not_found(id));
    }
    Ok(())
}

pub(super) async fn trigger_schedule(
    store: &PgStore,
    id: ScheduleId,
    now: DateTime<Utc>,
) -> Result<RunId> {
    let run = RunId::at(now);
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
    .fetch_optional(&store.pool)
    .await?;
    match started {
        Some((run,)) => Ok(run),
        None => {
            let found = store.get_schedule(&ScheduleKey::Id(id)).await;
            Err(decide::trigger_missed(id, now, found.map(drop)))
        }
    }
}

pub(super) async fn due_schedules(
    store: &PgStore,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<Schedule>> {
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
    .fetch_all(&store.pool)
    .await?;
    Ok(due)
}

pub(super) async fn next_schedule_fire(store: &PgStore) -> Result<Option<DateTime<Utc>>> {
    let next: Option<DateTime<Utc>> = sqlx::query_scalar(
        r"select min(next_fire_at) from kagzi.schedules
          where not paused",
    )
    .fetch_one(&store.pool)
    .await?;
    Ok(next)
}

pub(super) async fn fire_schedule(
    store: &PgStore,
    fire: &ScheduleFire,
    now: DateTime<Utc>,
) -> Result<FireOutcome> {
    let mut tx = store.pool.begin().await?;
    // The row lock makes concurrent fires of one schedule take turns; the version check
    // makes every turn but the first find the schedule already moved on.
    let row: Option<FireRow> = sqlx::query_as(
        r"select workflow, queue, input, retries, overlap, buffered_at
              from kagzi.schedules
              where id = $1 and version = $2 and not paused
              for update",
    )
    .bind(fire.id)
    .bind(fire.version)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
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
    let firing = Firing::of(&row, fire, active);
    let mut started = Vec::new();
    for &at in firing.start() {
        if let Some(id) = insert_scheduled_run(&mut tx, fire.id, &row.run, at, now).await? {
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
    .bind(firing.buffered())
    .bind(firing.last_fired())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if !started.is_empty() {
        notify(&mut tx, QUEUE_CHANNEL, &row.run.queue).await?;
    }
    tx.commit().await?;
    Ok(firing.outcome(started))
}

/// The run a scheduled fire starts; `None` when (schedule, due time) already has one.
async fn insert_scheduled_run(
    tx: &mut PgConnection,
    schedule: ScheduleId,
    run: &ScheduledRun,
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
    .bind(RunId::at(now))
    .bind(&run.workflow)
    .bind(&run.queue)
    .bind(&run.input)
    .bind(run.retries)
    .bind(now)
    .bind(schedule)
    .bind(scheduled_at)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(id)
}
