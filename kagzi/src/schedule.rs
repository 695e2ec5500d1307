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

use std::time::Duration;

use kagzi_proto::{CreateSchedule, RunId, RunPage, RunStatus, ScheduleRunsQuery, Triggered};
pub use kagzi_proto::{
    Overlap, Schedule, ScheduleFilter, ScheduleId, SchedulePage, UpdateSchedule as ScheduleUpdate,
};
use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::error::Result;
use crate::http::{Call, Http, Retry};

/// How long schedule calls keep retrying while the server is unreachable.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

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

/// A schedule about to be created; made by [`Client::schedule`]. Call
/// [`create`](Self::create) to create it.
#[derive(Debug)]
#[must_use = "the schedule is only created by `.create().await`"]
pub struct ScheduleBuilder {
    http: Http,
    body: CreateSchedule,
    input: serde_json::Result<Value>,
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
            body: CreateSchedule::new(workflow, queue, cron, Value::Null),
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
        let url = self.http.url_with_query(&["v1", "schedules"], &filter)?;
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
        cursor: Option<RunId>,
    ) -> Result<RunPage> {
        let mut url = self.url(&schedule.into(), Some("runs"));
        let query = ScheduleRunsQuery {
            status,
            limit: Some(1000),
            cursor,
        };
        url.set_query(Some(&crate::http::query_string(&query)?));
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
