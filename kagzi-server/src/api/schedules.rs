//! `/v1/schedules`: cron schedules that start runs of a workflow at their due times — create,
//! list, read, change, pause, resume, trigger now, delete, and the runs a schedule started.
//! `{id}` in a path is a schedule's id or its unique name.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use kagzi_proto::{
    CreateSchedule, Problem, Run, RunPage, RunStatus, Schedule, ScheduleFilter, SchedulePage,
    ScheduleRunsQuery, Triggered, UpdateSchedule,
};
use uuid::Uuid;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Result};
use super::extract::{Json, Path, Query, check_payload};
use super::runs::check_name;
use crate::schedule::{CatchUp, CronSpec, MAX_CATCH_UP, MIN_CATCH_UP_WINDOW_MS, ScheduleId};
use crate::state::AppState;
use crate::store::{self, NewSchedule, ScheduleKey, ScheduleSpec, ScheduleUpdate};

/// How many times an update is retried when the scheduler fired the schedule meanwhile.
const UPDATE_ATTEMPTS: usize = 5;

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(show, update, remove))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(trigger))
        .routes(routes!(runs))
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
    if let Some(window) = spec.catch_up.window_ms
        && window > MAX_CATCH_UP_WINDOW_MS
    {
        return Err(ApiError::InvalidBody(format!(
            "catch_up_window_ms must be at most {MAX_CATCH_UP_WINDOW_MS} (ten years), not {window}"
        )));
    }
    CronSpec::parse(&spec.cron, &spec.time_zone).map_err(ApiError::InvalidBody)
}

/// The longest catch-up window accepted: ten years, in milliseconds.
const MAX_CATCH_UP_WINDOW_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

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

/// Create a schedule.
///
/// The schedule starts a run of its workflow at every due time of its cron expression, read in
/// its time zone; the first at the first due time after now. An invalid expression or time zone
/// is refused with 422 saying what is wrong.
#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    operation_id = "create_schedule",
    request_body = CreateSchedule,
    responses(
        (status = 201, description = "The schedule was created.", body = Schedule),
        (status = 409, description = "A schedule with this id or name exists.", body = Problem, content_type = "application/problem+json"),
    ),
)]
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
        id: req.id.unwrap_or_default(),
        name: req.name,
        spec,
        paused: req.paused,
        next_fire_at: (!req.paused).then_some(first),
    };
    let schedule = state.store.create_schedule(&new, now).await?;
    state.wakeups.schedules.notify_one();
    tracing::info!(schedule_id = %schedule.id, cron = %schedule.cron, "schedule created");
    Ok((StatusCode::CREATED, Json(schedule.into())))
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

/// List schedules.
///
/// Newest first, one page at a time: pass the answer's `next_cursor` as `cursor` for the next
/// (older) page.
#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    operation_id = "list_schedules",
    params(ScheduleFilter),
    responses((status = 200, description = "A page of schedules.", body = SchedulePage)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Query(q): Query<ScheduleFilter>,
) -> Result<Json<SchedulePage>> {
    let limit = check_limit(q.limit)?;
    let filter = store::ScheduleFilter {
        workflow: q.workflow,
        queue: q.queue,
        paused: q.paused,
        before: q.cursor,
        limit: limit + 1,
    };
    let mut schedules = state.store.list_schedules(&filter).await?;
    let next_cursor = super::next_page(&mut schedules, limit, |s| s.id);
    Ok(Json(SchedulePage {
        schedules: schedules.into_iter().map(Schedule::from).collect(),
        next_cursor,
    }))
}

/// Read a schedule.
///
/// The schedule by its id or unique name: its settings, next and last due times, and a buffered
/// due time if one waits.
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "get_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    responses(
        (status = 200, description = "The schedule.", body = Schedule),
    ),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>> {
    Ok(Json(state.store.get_schedule(&key(&id)).await?.into()))
}

/// Change a schedule.
///
/// Only the fields given change. A new cron expression or time zone moves the next due time to
/// the first after now.
#[utoipa::path(
    patch,
    path = "/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "update_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    request_body = UpdateSchedule,
    responses(
        (status = 200, description = "The schedule, changed.", body = Schedule),
    ),
)]
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
                return Ok(Json(schedule.into()));
            }
            // The scheduler fired it meanwhile: read it again and reapply.
            Err(store::Error::Conflict(_)) if attempt < UPDATE_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Delete a schedule.
///
/// Nothing fires from it again; the runs it started stay.
#[utoipa::path(
    delete,
    path = "/v1/schedules/{id}",
    tag = "schedules",
    operation_id = "delete_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    responses(
        (status = 204, description = "The schedule was deleted."),
    ),
)]
async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    state.store.delete_schedule(schedule.id).await?;
    tracing::info!(schedule_id = %schedule.id, "schedule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a schedule.
///
/// Nothing fires until the schedule is resumed; a trigger still starts a run.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/pause",
    tag = "schedules",
    operation_id = "pause_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    responses(
        (status = 200, description = "The schedule, paused.", body = Schedule),
    ),
)]
pub(crate) async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let paused = state
        .store
        .set_schedule_paused(schedule.id, true, None, Utc::now())
        .await?;
    Ok(Json(paused.into()))
}

/// Resume a schedule.
///
/// Resumes from now: the next due time is the first after now, so the due times that passed
/// while paused are not started.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/resume",
    tag = "schedules",
    operation_id = "resume_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    responses(
        (status = 200, description = "The schedule, active again.", body = Schedule),
        (status = 409, description = "The schedule's expression no longer parses.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(crate) async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Schedule>> {
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let cron = schedule.spec().map_err(ApiError::Conflict)?;
    let now = Utc::now();
    let next = cron.next_after(now);
    let resumed = state
        .store
        .set_schedule_paused(schedule.id, false, next, now)
        .await?;
    state.wakeups.schedules.notify_one();
    Ok(Json(resumed.into()))
}

/// Start a schedule's run now.
///
/// Starts one run at once, even while the schedule is paused and whatever its overlap policy;
/// its due times are unchanged.
#[utoipa::path(
    post,
    path = "/v1/schedules/{id}/trigger",
    tag = "schedules",
    operation_id = "trigger_schedule",
    params(("id" = String, Path, description = "The schedule's id or unique name.")),
    responses(
        (status = 201, description = "A run was started now.", body = Triggered),
    ),
)]
pub(crate) async fn trigger(
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

/// List the runs a schedule started.
///
/// Newest first, one page at a time; each run carries `schedule_id` and `scheduled_at`, the due
/// time it is for.
#[utoipa::path(
    get,
    path = "/v1/schedules/{id}/runs",
    tag = "schedules",
    operation_id = "list_schedule_runs",
    params(("id" = String, Path, description = "The schedule's id or unique name."), ScheduleRunsQuery),
    responses((status = 200, description = "A page of the schedule's runs.", body = RunPage)),
)]
pub(crate) async fn runs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ScheduleRunsQuery>,
) -> Result<Json<RunPage>> {
    let limit = check_limit(q.limit)?;
    let schedule = state.store.get_schedule(&key(&id)).await?;
    let filter = store::RunFilter {
        status: q.status,
        schedule_id: Some(schedule.id),
        before: q.cursor,
        limit: limit + 1,
        ..store::RunFilter::default()
    };
    let mut runs = state.store.list_runs(&filter).await?;
    let next_cursor = super::next_page(&mut runs, limit, |r| r.id);
    Ok(Json(RunPage {
        runs: runs.into_iter().map(Run::from).collect(),
        next_cursor,
    }))
}
