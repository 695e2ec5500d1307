//! Cron schedules: the schedule resource, creating, changing and listing them, and the
//! runs they started.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{RunId, ScheduleId};
use crate::run::{DEFAULT_QUEUE, RunStatus};

/// What happens at a due time while the schedule's previous run has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sqlx",
    derive(sqlx::Type),
    sqlx(type_name = "text", rename_all = "snake_case")
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overlap {
    /// Start nothing; the due time is dropped (the default).
    #[default]
    Skip,
    /// Keep one due time and start it when the previous run ends; further ones are dropped.
    BufferOne,
    /// Start a run at every due time, however many are still going.
    AllowAll,
}

impl Overlap {
    /// The word used in JSON and SQL (`skip`, `buffer_one`, `allow_all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::BufferOne => "buffer_one",
            Self::AllowAll => "allow_all",
        }
    }
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "name": "daily_report",
        "workflow": "daily_report", "queue": "reports", "cron": "0 0 9 * * *", "time_zone": "UTC",
        "input": {"team": "ops"}, "retries": 0, "overlap": "skip", "catch_up_window_ms": null,
        "catch_up_max": 1, "paused": false, "next_fire_at": "2026-11-27T09:00:00Z",
        "last_fired_at": null, "buffered_at": null, "version": 1,
        "created_at": "2026-11-26T08:00:00Z", "updated_at": "2026-11-26T08:00:00Z"
    }))
)]
pub struct Schedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// Its unique name, if it has one (usable in place of the id).
    #[serde(default)]
    pub name: Option<String>,
    /// The workflow each run executes.
    pub workflow: String,
    /// The queue the runs go to.
    pub queue: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    pub time_zone: String,
    /// The input of every run.
    pub input: Value,
    /// How many times a failed run is retried.
    pub retries: u32,
    /// What happens at a due time while the previous run is still going.
    pub overlap: Overlap,
    /// Catch-up: due times older than this many milliseconds are dropped (null: no limit).
    #[serde(default)]
    pub catch_up_window_ms: Option<u64>,
    /// Catch-up: at most this many of the most recent missed due times start.
    pub catch_up_max: u32,
    /// Whether firing is paused.
    pub paused: bool,
    /// The next due time (null while paused, or if the expression never matches again).
    #[serde(default)]
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The latest due time that started a run.
    #[serde(default)]
    pub last_fired_at: Option<DateTime<Utc>>,
    /// A due time waiting for the previous run to end (`buffer_one`).
    #[serde(default)]
    pub buffered_at: Option<DateTime<Utc>>,
    /// Bumped by every change; the scheduler fires only from the version it planned from.
    pub version: u64,
    /// When the schedule was created.
    pub created_at: DateTime<Utc>,
    /// When the schedule last changed.
    pub updated_at: DateTime<Utc>,
}

/// `POST /v1/schedules` body: what to start, when, and the policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"name": "daily_report", "workflow": "daily_report", "queue": "reports", "cron": "0 0 9 * * *", "input": {"team": "ops"}}))
)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// The schedule's id; one is made up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, format = Uuid))]
    pub id: Option<ScheduleId>,
    /// A unique name, usable in place of the id (not itself a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(min_length = 1, max_length = 255, example = "daily_report")
    )]
    pub name: Option<String>,
    /// The workflow each run executes.
    #[cfg_attr(
        feature = "utoipa",
        schema(min_length = 1, max_length = 255, example = "daily_report")
    )]
    pub workflow: String,
    /// The queue the runs go to.
    #[serde(default = "default_queue")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            default = "default",
            example = "reports"
        )
    )]
    pub queue: String,
    /// Five fields (`0 9 * * *`), or six with seconds first (`0 0 9 * * *`).
    #[cfg_attr(feature = "utoipa", schema(example = "0 0 9 * * *"))]
    pub cron: String,
    /// The IANA time zone the expression is read in.
    #[serde(default = "default_time_zone")]
    #[cfg_attr(feature = "utoipa", schema(default = "UTC", example = "Europe/Berlin"))]
    pub time_zone: String,
    /// The input of every run (any JSON value).
    #[serde(default)]
    pub input: Value,
    /// How many times a failed run is retried.
    #[serde(default, deserialize_with = "crate::whole::u31")]
    #[cfg_attr(feature = "utoipa", schema(default = 0, maximum = 2147483647))]
    pub retries: u32,
    /// What happens at a due time while the previous run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// Catch-up: due times older than this many milliseconds are dropped (absent: no limit).
    #[serde(
        default,
        deserialize_with = "crate::whole::opt_u63",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1000, maximum = 315360000000_u64))]
    pub catch_up_window_ms: Option<u64>,
    /// Catch-up: at most this many of the most recent missed due times start.
    #[serde(
        default = "default_catch_up_max",
        deserialize_with = "crate::whole::u31"
    )]
    #[cfg_attr(feature = "utoipa", schema(default = 1, minimum = 1, maximum = 1000))]
    pub catch_up_max: u32,
    /// Create the schedule paused.
    #[serde(default)]
    pub paused: bool,
}

impl CreateSchedule {
    /// A schedule of `workflow` on `queue` at every due time of `cron` (read in UTC), with
    /// `input` and the default policies.
    pub fn new(
        workflow: impl Into<String>,
        queue: impl Into<String>,
        cron: impl Into<String>,
        input: Value,
    ) -> Self {
        CreateSchedule {
            id: None,
            name: None,
            workflow: workflow.into(),
            queue: queue.into(),
            cron: cron.into(),
            time_zone: default_time_zone(),
            input,
            retries: 0,
            overlap: Overlap::default(),
            catch_up_window_ms: None,
            catch_up_max: default_catch_up_max(),
            paused: false,
        }
    }
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_owned()
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// By default the most recent missed due time runs once.
fn default_catch_up_max() -> u32 {
    1
}

/// `PATCH /v1/schedules/{id}` body: the fields to change; absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"cron": "0 30 9 * * *", "overlap": "buffer_one"}))
)]
#[serde(deny_unknown_fields)]
pub struct UpdateSchedule {
    /// The workflow each run executes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 255))]
    pub workflow: Option<String>,
    /// The queue the runs go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(min_length = 1, max_length = 255))]
    pub queue: Option<String>,
    /// The cron expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The input of every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// How many times a failed run is retried.
    #[serde(
        default,
        deserialize_with = "crate::whole::opt_u31",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(maximum = 2147483647))]
    pub retries: Option<u32>,
    /// The overlap policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// A number sets the window, `null` removes it, absent keeps it.
    #[serde(
        default,
        deserialize_with = "crate::whole::present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "utoipa",
        schema(value_type = Option<u64>, minimum = 1000, maximum = 315360000000_u64)
    )]
    pub catch_up_window_ms: Option<Option<u64>>,
    /// Catch-up: at most this many missed due times start.
    #[serde(
        default,
        deserialize_with = "crate::whole::opt_u31",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "utoipa", schema(minimum = 1, maximum = 1000))]
    pub catch_up_max: Option<u32>,
}

impl UpdateSchedule {
    /// Change the workflow.
    pub fn workflow(mut self, workflow: impl Into<String>) -> Self {
        self.workflow = Some(workflow.into());
        self
    }

    /// Change the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Change the cron expression.
    pub fn cron(mut self, cron: impl Into<String>) -> Self {
        self.cron = Some(cron.into());
        self
    }

    /// Change the time zone.
    pub fn time_zone(mut self, time_zone: impl Into<String>) -> Self {
        self.time_zone = Some(time_zone.into());
        self
    }

    /// Change the input of the runs to come.
    ///
    /// # Errors
    ///
    /// When `input` does not serialize to JSON.
    pub fn input(mut self, input: impl Serialize) -> serde_json::Result<Self> {
        self.input = Some(serde_json::to_value(input)?);
        Ok(self)
    }

    /// Change the retry count.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Change the overlap policy.
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// Change the catch-up window (`None` removes it).
    pub fn catch_up_window(mut self, window: Option<std::time::Duration>) -> Self {
        self.catch_up_window_ms =
            Some(window.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)));
        self
    }

    /// Change the catch-up maximum.
    pub fn catch_up_max(mut self, max: u32) -> Self {
        self.catch_up_max = Some(max);
        self
    }
}

/// `GET /v1/schedules` query: which schedules to list; `ScheduleFilter::default()` lists
/// all, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFilter {
    /// Only schedules of this workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Only schedules on this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only paused (true) or only active (false) schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// At most this many (1 to 1000, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(minimum = 1, maximum = 1000, default = 50))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub cursor: Option<ScheduleId>,
}

/// `GET /v1/schedules` answer: one page of schedules, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"schedules": [], "next_cursor": null}))
)]
pub struct SchedulePage {
    /// The schedules on this page.
    pub schedules: Vec<Schedule>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    #[serde(default)]
    pub next_cursor: Option<ScheduleId>,
}

/// `GET /v1/schedules/{id}/runs` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRunsQuery {
    /// Only runs in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// At most this many (1 to 1000, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(minimum = 1, maximum = 1000, default = 50))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", param(value_type = Option<String>, format = Uuid))]
    pub cursor: Option<RunId>,
}

/// `POST /v1/schedules/{id}/trigger` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "status": "pending"}))
)]
pub struct Triggered {
    /// The run started now.
    pub id: RunId,
    /// Its status (`pending`).
    pub status: RunStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_sends_only_what_changes() -> serde_json::Result<()> {
        let update = UpdateSchedule::default()
            .cron("0 0 8 * * *")
            .catch_up_window(None);
        assert_eq!(
            serde_json::to_value(&update)?,
            serde_json::json!({"cron": "0 0 8 * * *", "catch_up_window_ms": null})
        );
        let parsed: UpdateSchedule = serde_json::from_str(r#"{"catch_up_window_ms": null}"#)?;
        assert_eq!(
            parsed.catch_up_window_ms,
            Some(None),
            "null removes the window"
        );
        let absent: UpdateSchedule = serde_json::from_str("{}")?;
        assert_eq!(absent.catch_up_window_ms, None, "absent keeps it");
        Ok(())
    }

    #[test]
    fn overlap_is_snake_case_on_the_wire() -> serde_json::Result<()> {
        for overlap in [Overlap::Skip, Overlap::BufferOne, Overlap::AllowAll] {
            assert_eq!(
                serde_json::to_value(overlap)?,
                serde_json::json!(overlap.as_str())
            );
        }
        Ok(())
    }
}
