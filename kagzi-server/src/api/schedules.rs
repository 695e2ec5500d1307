//! `/v1/schedules`: cron schedules that start runs of a workflow at their due times — create,
//! list, read, change, pause, resume, trigger now, delete, and the runs a schedule started.
//! `{id}` in a path is a schedule's id or its unique name.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, Query, check_payload};
use super::runs::check_name;
use crate::model::{Run, RunId, RunStatus};
use crate::schedule::{
    CatchUp, CronSpec, MAX_CATCH_UP, MIN_CATCH_UP_WINDOW_MS, Overlap, Schedule, ScheduleId,
};
use crate::state::AppState;
use crate::store::{
    self, NewSchedule, RunFilter, ScheduleFilter, ScheduleKey, ScheduleSpec, ScheduleUpdate,
};

/// How many times an update is retried when the scheduler fired the schedule meanwhile.
const UPDATE_ATTEMPTS: usize = 5;

/// The routes of this resource.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", post(create).get(list))
        .route("/v1/schedules/{id}", get(show).patch(update).delete(remove))
        .route("/v1/schedules/{id}/pause", post(pause))
        .route("/v1/schedules/{id}/resume", post(resume))
        .route("/v1/schedules/{id}/trigger", post(trigger))
        .route("/v1/schedules/{id}/runs", get(runs))
}

/// `POST /v1/schedules` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateSchedule {
    /// The schedule's id; one is made up when absent.
    #[serde(default)]
    id: Option<Uuid>,
    /// A unique name, usable in place of the id.
    #[serde(default)]
    name: Option<String>,
    workflow: String,
    #[serde(default = "default_queue")]
    queue: String,
    /// Five fields (`0 9 * * *`), or six with seconds first (`0 0 9 * * *`).
    cron: String,
    #[serde(default = "default_time_zone")]
    time_zone: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default)]
    catch_up_window_ms: Option<u64>,
    #[serde(default = "default_catch_up_max")]
    catch_up_max: u32,
    #[serde(default)]
    paused: bool,
}

fn default_queue() -> String {
    "default".to_owned()
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_catch_up_max() -> u32 {
    CatchUp::default().max
}

/// `PATCH /v1/schedules/{id}` body: the fields to change.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateSchedule {
    workflow: Option<String>,
    queue: Option<String>,
    cron: Option<String>,
    time_zone: Option<String>,
    input: Option<Value>,
    retries: Option<u32>,
    overlap: Option<Overlap>,
    /// A number sets the window, `null` removes it, absent keeps it.
    #[serde(default, deserialize_with = "present")]
    catch_up_window_ms: Option<Option<u64>>,
    catch_up_max: Option<u32>,
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`, by `default`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Checks a schedule's settings and parses its cron expression.
fn check_spec(spec: &ScheduleSpec, limit: usize) -> Result<CronSpec> {
    check_name("workflow", &spec.workflow)?;
    check_name("queue", &spec.queue)?;
    check_payload("input", &spec.input, limit)?;
    if !(1..=MAX_CATCH_UP).contains(&spec.catch_up.max) {
        return Err(ApiError::InvalidBody(format!(
            "catch_up_max must be between 1 and {MAX_CATCH_UP}, not {}",
            spec.catch_up.max
        )));
    }
    if let Some(window) = spec.catch_up.window_ms
        && window < MIN_CATCH_UP_WINDOW_MS
    {
        return Err(ApiError::InvalidBody(format!(
            "catch_up_window_ms must be at least {MIN_CATCH_UP_WINDOW_MS}, not {window}"
        )));
    }
    CronSpec::parse(&spec.cron, &spec.time_zone).map_err(ApiError::InvalidBody)
}

/// The first due time after `now`, or an error for an expression that never matches.
fn first_fire(cron: &CronSpec, expr: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    cron.next_after(now).ok_or_else(|| {
        ApiError::InvalidBody(format!(
            "cron expression {expr:?} never matches a future time"
        ))
    })
}

/// A path's `{id}`: a UUID is an id, anything else a name.
fn key(id: &str) -> ScheduleKey {
    match Uuid::parse_str(id) {
        Ok(uuid) => ScheduleKey::Id(ScheduleId(uuid)),
        Err(_) => ScheduleKey::Name(id.to_owned()),
    }
}

async fn create(
    State(state): State<AppState>,
    Json(req): Json<CreateSchedule>,
) -> Result<(StatusCode, Json<Schedule>)> {
    if let Some(name) = &req.name {
        check_name("name", name)?;
        if Uuid::parse_str(name).is_ok() {
            return Err(ApiError::InvalidBody(
                "name must not be a UUID: it would be read as an id".to_owned(),
            ));
        }
    }
    let spec = ScheduleSpec {
        workflow: req.workflow,
        queue: req.queue,
        cron: req.cron,
        time_zone: req.time_zone,
        input: req.input,
        retries: req.retries,
        overlap: req.overlap,
        catch_up: CatchUp {
            window_ms: req.catch_up_window_ms,
            max: req.catch_up_max,
        },
    };
    let cron = check_spec(&spec, state.config.max_payload_bytes)?;
    let now = Utc::now();
    let first = first_fire(&cron, &spec.cron, now)?;
    let new = NewSchedule {
        id: req.id.map_or_else(ScheduleId::new, ScheduleId),
        name: req.name,
        spec,
        paused: req.paused,
        next_fire_at: (!req.paused).then_some(first),
    };
    let schedule = state.store.create_schedule(&new, now).await?;
    state.wakeups.schedules.notify_one();
    tracing::info!(schedule_id = %schedule.id, cron = %schedule.cron, "schedule created");
    Ok((StatusCode::CREATED, Json(schedule)))
}

/// `GET /v1/schedules` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    workflow: Option<String>,
    queue: Option<String>,
    paused: Option<bool>,
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

/// `GET /v1/schedules` answer.
#[derive(Debug, Serialize)]
pub(crate) struct SchedulePage {
    schedules: Vec<Schedule>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: Option<ScheduleId>,
}

fn check_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    Ok(limit)
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<SchedulePage>> {
    let limit = check_limit(q.limit)?;
    let filter = ScheduleFilter {
        workflow: q.workflow,
        queue: q.queue,
        paused: q.paused,
        before: q.cursor.map(ScheduleId),
        limit: limit + 1,
    };
    let mut schedules = state.store.list_schedules(&filter).await?;
    let next_cursor = if schedules.len() > limit as usize {
        schedules.truncate(limit as usize);
        schedules.last().map(|s| s.id)
    } else {
        None
    };
    Ok(Json(SchedulePage {
        schedules,
        next_cursor,
    }))
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Schedule>> {
    Ok(Json(state.store.get_schedule(&key(&id)).await?))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<UpdateSchedule>,
) -> Result<Json<Schedule>> {
    let key = key(&id);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = state.store.get_schedule(&key).await?;
        let spec = ScheduleSpec {
            workflow: req.workflow.clone().unwrap_or(current.workflow.clone()),
            queue: req.queue.clone().unwrap_or(current.queue.clone()),
            cron: req.cron.clone().unwrap_or(current.cron.clone()),
            time_zone: req.time_zone.clone().unwrap_or(current.time_zone.clone()),
            input: req.input.clone().unwrap_or(current.input.clone()),
            retries: req
                .retries
                .unwrap_or(u32::try_from(current.retries).unwrap_or(0)),
            overlap: req.overlap.unwrap_or(current.overlap),
            catch_up: CatchUp {
                window_ms: req
                    .catch_up_window_ms
                    .unwrap_or(current.catch_up().window_ms),
                max: req.catch_up_max.unwrap_or(current.catch_up().max),
            },
        };
        let cron = check_spec(&spec, state.config.max_payload_bytes)?;
        let now = Utc::now();
        let timing_changed = spec.cron != current.cron || spec.time_zone != current.time_zone;
        let next_fire_at = if current.paused {
            None
        } else if timing_changed || current.next_fire_at.is_none() {
            Some(first_fire(&cron, &spec.cron, now)?)
        } else {
            current.next_fire_at
        };
        let update = ScheduleUpdate { spec, next_fire_at };
        match state
            .store
            .update_schedule(current.id, current.version, &update, now)
            .await
        {
            Ok(schedule) => {
                state.wakeups.schedules.notify_one();
                return Ok(Json(schedule));
            }
            // The scheduler fired it meanwhile: read it again and reapply.
            Err(store::Error::Conflict(_)) if attempt < UPDATE_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    state.store.delete_schedule(schedule.id).await?;
    tracing::info!(schedule_id = %schedule.id, "schedule deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Schedule>> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let paused = state
        .store
        .set_schedule_paused(schedule.id, true, None, Utc::now())
        .await?;
    Ok(Json(paused))
}

/// Resumes from now: the next due time is the first after now, so the due times that passed
/// while paused are not started.
async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Schedule>> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let cron = schedule.spec().map_err(ApiError::Conflict)?;
    let now = Utc::now();
    let next = cron.next_after(now);
    let resumed = state
        .store
        .set_schedule_paused(schedule.id, false, next, now)
        .await?;
    state.wakeups.schedules.notify_one();
    Ok(Json(resumed))
}

/// `POST /v1/schedules/{id}/trigger` answer.
#[derive(Debug, Serialize)]
pub(crate) struct Triggered {
    id: RunId,
    status: RunStatus,
}

/// Starts a run now, even while paused and whatever the overlap policy.
async fn trigger(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Triggered>)> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let run = state
        .store
        .trigger_schedule(schedule.id, Utc::now())
        .await?;
    tracing::info!(schedule_id = %schedule.id, run_id = %run, "schedule triggered");
    Ok((
        StatusCode::CREATED,
        Json(Triggered {
            id: run,
            status: RunStatus::Pending,
        }),
    ))
}

/// `GET /v1/schedules/{id}/runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    status: Option<RunStatus>,
    limit: Option<u32>,
    cursor: Option<Uuid>,
}

/// `GET /v1/schedules/{id}/runs` answer.
#[derive(Debug, Serialize)]
pub(crate) struct RunPage {
    runs: Vec<Run>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    next_cursor: Option<RunId>,
}

/// The runs the schedule started, newest first.
async fn runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<RunPage>> {
    let limit = check_limit(q.limit)?;
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let filter = RunFilter {
        status: q.status,
        schedule_id: Some(schedule.id),
        before: q.cursor.map(RunId),
        limit: limit + 1,
        ..RunFilter::default()
    };
    let mut runs = state.store.list_runs(&filter).await?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(RunPage { runs, next_cursor }))
}
