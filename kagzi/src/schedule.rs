//! Cron schedules: start a run of a workflow at every due time of a cron expression.
//!
//! Create one with [`Client::schedule`], manage them with [`Client::schedules`]. The server
//! starts exactly one run per due time, across restarts and however many server replicas
//! share the database.
//!
//! ```no_run
//! # async fn example(client: kagzi::Client) -> kagzi::Result<()> {
//! use kagzi::Overlap;
//!
//! // Every day at 9:00 in Berlin; if yesterday's report is still running, skip today's.
//! let id = client
//!     .schedule("daily_report", "reports", "0 0 9 * * *", serde_json::json!({"team": "ops"}))
//!     .name("daily-report")
//!     .time_zone("Europe/Berlin")
//!     .overlap(Overlap::Skip)
//!     .create()
//!     .await?;
//! client.schedules().pause(id).await?;
//! client.schedules().resume("daily-report").await?;
//! let run_id = client.schedules().trigger(id).await?; // one run now
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::client::Client;
use crate::error::Result;
use crate::http::{Call, Http, Retry};
use crate::types::{RunId, RunPage, RunStatus};

/// How long schedule calls keep retrying while the server is unreachable.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// The id of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScheduleId(pub Uuid);

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ScheduleId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Uuid::parse_str(s).map(ScheduleId)
    }
}

/// Names a schedule in [`Schedules`] calls: its [`ScheduleId`] or its unique name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRef(String);

impl From<ScheduleId> for ScheduleRef {
    fn from(id: ScheduleId) -> Self {
        ScheduleRef(id.to_string())
    }
}

impl From<&ScheduleId> for ScheduleRef {
    fn from(id: &ScheduleId) -> Self {
        ScheduleRef(id.to_string())
    }
}

impl From<&str> for ScheduleRef {
    fn from(name: &str) -> Self {
        ScheduleRef(name.to_owned())
    }
}

impl From<String> for ScheduleRef {
    fn from(name: String) -> Self {
        ScheduleRef(name)
    }
}

/// What happens at a due time while the schedule's previous run has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Overlap {
    /// Start nothing; the due time is dropped (the default).
    #[default]
    Skip,
    /// Keep one due time and start it as soon as the previous run ends; more are dropped.
    BufferOne,
    /// Start a run at every due time, however many are still going.
    AllowAll,
}

/// A schedule as the server reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Schedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// Its unique name, if it has one.
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
    #[serde(default)]
    pub input: Value,
    /// How many times a failed run is retried.
    #[serde(default)]
    pub retries: u32,
    /// What happens while the previous run is still going.
    pub overlap: Overlap,
    /// Catch-up: missed due times older than this many milliseconds are dropped.
    #[serde(default)]
    pub catch_up_window_ms: Option<u64>,
    /// Catch-up: at most this many of the most recent missed due times start.
    pub catch_up_max: u32,
    /// Whether firing is paused.
    pub paused: bool,
    /// The next due time (`None` while paused).
    #[serde(default)]
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The latest due time that started a run.
    #[serde(default)]
    pub last_fired_at: Option<DateTime<Utc>>,
    /// A due time waiting for the previous run to end ([`Overlap::BufferOne`]).
    #[serde(default)]
    pub buffered_at: Option<DateTime<Utc>>,
    /// When the schedule was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A schedule about to be created; made by [`Client::schedule`]. Call
/// [`create`](Self::create) to create it.
#[derive(Debug)]
#[must_use = "the schedule is only created by `.create().await`"]
pub struct ScheduleBuilder {
    http: Http,
    body: CreateBody,
    input: serde_json::Result<Value>,
}

#[derive(Debug, Serialize)]
struct CreateBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<ScheduleId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    workflow: String,
    queue: String,
    cron: String,
    time_zone: String,
    input: Value,
    retries: u32,
    overlap: Overlap,
    #[serde(skip_serializing_if = "Option::is_none")]
    catch_up_window_ms: Option<u64>,
    catch_up_max: u32,
    paused: bool,
}

impl ScheduleBuilder {
    /// Use this id instead of a new one; creating a second schedule with it fails with 409.
    pub fn id(mut self, id: ScheduleId) -> Self {
        self.body.id = Some(id);
        self
    }

    /// A unique name, usable in place of the id ([`Schedules`] calls take either). Creating a
    /// second schedule with the same name fails with 409.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.body.name = Some(name.into());
        self
    }

    /// Read the cron expression in this IANA time zone (default `UTC`), e.g. `Europe/Berlin`.
    pub fn time_zone(mut self, time_zone: impl Into<String>) -> Self {
        self.body.time_zone = time_zone.into();
        self
    }

    /// What happens at a due time while the previous run is still going (default
    /// [`Overlap::Skip`]).
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.body.overlap = overlap;
        self
    }

    /// After the server was down, drop missed due times older than `window` (at least one
    /// second; default: no limit).
    pub fn catch_up_window(mut self, window: Duration) -> Self {
        self.body.catch_up_window_ms = Some(u64::try_from(window.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// After the server was down, start at most `max` of the most recent missed due times
    /// (default 1: the most recent one, once).
    pub fn catch_up_max(mut self, max: u32) -> Self {
        self.body.catch_up_max = max;
        self
    }

    /// Create the schedule paused; [`Schedules::resume`] starts it.
    pub fn paused(mut self, paused: bool) -> Self {
        self.body.paused = paused;
        self
    }

    /// Retry each run up to `retries` times after a failed attempt (default 0).
    pub fn retries(mut self, retries: u32) -> Self {
        self.body.retries = retries;
        self
    }

    /// Create the schedule and return its id.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 422 for an invalid cron expression or
    /// time zone (the detail says what is wrong), 409 when the id or name is taken;
    /// [`Error::Serde`](crate::Error::Serde) if the input does not serialize; transport errors.
    pub async fn create(self) -> Result<ScheduleId> {
        Ok(self.create_schedule().await?.id)
    }

    /// Like [`create`](Self::create), returning the whole schedule as stored.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub async fn create_schedule(mut self) -> Result<Schedule> {
        self.body.input = self.input?;
        let call = Call::post(self.http.url(&["v1", "schedules"]), &self.body)?
            .retry(Retry::Unsent(RETRY_BUDGET));
        self.http.send(&call).await
    }
}

/// Changes to a schedule for [`Schedules::update`]; fields left `None` stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ScheduleUpdate {
    /// A new workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A new queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// A new cron expression; the next due time is recomputed from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A new time zone; the next due time is recomputed from now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A new input for the runs to come.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A new retry count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// A new overlap policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// A new catch-up window: `Some(Some(ms))` sets it, `Some(None)` removes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_window_ms: Option<Option<u64>>,
    /// A new catch-up maximum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catch_up_max: Option<u32>,
}

impl ScheduleUpdate {
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

    /// Change the overlap policy.
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = Some(overlap);
        self
    }

    /// Change the catch-up window (`None` removes it).
    pub fn catch_up_window(mut self, window: Option<Duration>) -> Self {
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

/// Which schedules [`Schedules::list`] returns; `ScheduleFilter::default()` lists all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleFilter {
    /// Only schedules of this workflow.
    pub workflow: Option<String>,
    /// Only schedules on this queue.
    pub queue: Option<String>,
    /// Only paused (`true`) or only active (`false`) schedules.
    pub paused: Option<bool>,
    /// At most this many (the server caps it at 1000; default 50).
    pub limit: Option<u32>,
    /// Continue after this cursor (from [`SchedulePage::next_cursor`]).
    pub cursor: Option<String>,
}

/// One page of schedules, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SchedulePage {
    /// The schedules on this page.
    pub schedules: Vec<Schedule>,
    /// Pass as [`ScheduleFilter::cursor`] for the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The schedule calls of a [`Client`]; made by [`Client::schedules`]. Every call names the
/// schedule by id or by name (anything that converts into a [`ScheduleRef`]).
#[derive(Debug, Clone)]
pub struct Schedules {
    http: Http,
}

impl Client {
    /// Start building a schedule that runs workflow `workflow` on `queue` with `input` at
    /// every due time of `cron`: five fields (`0 9 * * *`) or six with seconds first
    /// (`0 0 9 * * *`), in UTC unless [`time_zone`](ScheduleBuilder::time_zone) says
    /// otherwise. Call `.create().await` to create it.
    ///
    /// ```no_run
    /// # async fn example(client: kagzi::Client, report_data: serde_json::Value) -> kagzi::Result<()> {
    /// // Run daily at 9 AM UTC
    /// client
    ///     .schedule("daily_report", "reports", "0 0 9 * * *", report_data)
    ///     .create()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn schedule(
        &self,
        workflow: impl Into<String>,
        queue: impl Into<String>,
        cron: impl Into<String>,
        input: impl Serialize,
    ) -> ScheduleBuilder {
        ScheduleBuilder {
            http: self.http().clone(),
            body: CreateBody {
                id: None,
                name: None,
                workflow: workflow.into(),
                queue: queue.into(),
                cron: cron.into(),
                time_zone: "UTC".to_owned(),
                input: Value::Null,
                retries: 0,
                overlap: Overlap::default(),
                catch_up_window_ms: None,
                catch_up_max: 1,
                paused: false,
            },
            input: serde_json::to_value(input),
        }
    }

    /// The schedule calls: get, list, update, pause, resume, trigger, delete, runs.
    pub fn schedules(&self) -> Schedules {
        Schedules {
            http: self.http().clone(),
        }
    }
}

impl Schedules {
    fn url(&self, schedule: &ScheduleRef, tail: Option<&str>) -> reqwest::Url {
        match tail {
            Some(tail) => self.http.url(&["v1", "schedules", &schedule.0, tail]),
            None => self.http.url(&["v1", "schedules", &schedule.0]),
        }
    }

    /// One schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn get(&self, schedule: impl Into<ScheduleRef>) -> Result<Schedule> {
        let call =
            Call::get(self.url(&schedule.into(), None)).retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// One page of schedules matching `filter`, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) for an invalid filter; transport errors.
    pub async fn list(&self, filter: ScheduleFilter) -> Result<SchedulePage> {
        let mut url = self.http.url(&["v1", "schedules"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(workflow) = &filter.workflow {
                query.append_pair("workflow", workflow);
            }
            if let Some(queue) = &filter.queue {
                query.append_pair("queue", queue);
            }
            if let Some(paused) = filter.paused {
                query.append_pair("paused", if paused { "true" } else { "false" });
            }
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(cursor) = &filter.cursor {
                query.append_pair("cursor", cursor);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.http
            .send(&Call::get(url).retry(Retry::Transient(RETRY_BUDGET)))
            .await
    }

    /// Change a schedule's settings; returns it as changed.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 422 for invalid settings, 404 if there is
    /// no such schedule; transport errors.
    pub async fn update(
        &self,
        schedule: impl Into<ScheduleRef>,
        update: &ScheduleUpdate,
    ) -> Result<Schedule> {
        let call = Call::patch(self.url(&schedule.into(), None), update)?
            .retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Pause a schedule: no run starts until it is resumed.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn pause(&self, schedule: impl Into<ScheduleRef>) -> Result<Schedule> {
        self.post(schedule.into(), "pause").await
    }

    /// Resume a paused schedule from now: the due times that passed while it was paused are
    /// not started.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn resume(&self, schedule: impl Into<ScheduleRef>) -> Result<Schedule> {
        self.post(schedule.into(), "resume").await
    }

    /// Start one run of the schedule now, even while it is paused and whatever its overlap
    /// policy; returns the run's id.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn trigger(&self, schedule: impl Into<ScheduleRef>) -> Result<RunId> {
        #[derive(Deserialize)]
        struct Triggered {
            id: RunId,
        }
        let call = Call::post(
            self.url(&schedule.into(), Some("trigger")),
            &serde_json::json!({}),
        )?
        .retry(Retry::Unsent(RETRY_BUDGET));
        Ok(self.http.send::<Triggered>(&call).await?.id)
    }

    /// Delete a schedule. The runs it started stay.
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn delete(&self, schedule: impl Into<ScheduleRef>) -> Result<()> {
        let call =
            Call::delete(self.url(&schedule.into(), None)).retry(Retry::Unsent(RETRY_BUDGET));
        self.http.send::<Option<Value>>(&call).await?;
        Ok(())
    }

    /// One page of the runs the schedule started, newest first; each carries
    /// [`Run::schedule_id`](crate::Run::schedule_id) and
    /// [`Run::scheduled_at`](crate::Run::scheduled_at). `status` narrows them, `cursor`
    /// continues from [`RunPage::next_cursor`].
    ///
    /// # Errors
    ///
    /// [`Error::Api`](crate::Error::Api) with status 404 if there is no such schedule;
    /// transport errors.
    pub async fn runs(
        &self,
        schedule: impl Into<ScheduleRef>,
        status: Option<RunStatus>,
        cursor: Option<&str>,
    ) -> Result<RunPage> {
        let mut url = self.url(&schedule.into(), Some("runs"));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("limit", "1000");
            if let Some(status) = status {
                query.append_pair("status", status.as_str());
            }
            if let Some(cursor) = cursor {
                query.append_pair("cursor", cursor);
            }
        }
        self.http
            .send(&Call::get(url).retry(Retry::Transient(RETRY_BUDGET)))
            .await
    }

    async fn post(&self, schedule: ScheduleRef, action: &str) -> Result<Schedule> {
        let call = Call::post(self.url(&schedule, Some(action)), &serde_json::json!({}))?
            .retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_sends_only_what_changes() -> serde_json::Result<()> {
        let update = ScheduleUpdate::default()
            .cron("*/5 * * * *")
            .catch_up_window(None);
        assert_eq!(
            serde_json::to_value(&update)?,
            serde_json::json!({"cron": "*/5 * * * *", "catch_up_window_ms": null})
        );
        Ok(())
    }

    #[test]
    fn overlap_is_snake_case_on_the_wire() -> serde_json::Result<()> {
        assert_eq!(
            serde_json::to_string(&Overlap::BufferOne)?,
            "\"buffer_one\""
        );
        assert_eq!(
            serde_json::from_str::<Overlap>("\"allow_all\"")?,
            Overlap::AllowAll
        );
        Ok(())
    }
}
