//! The decisions both stores take the same way whatever their SQL: pure functions of what a
//! statement read (or of what a report asks), so that each dialect's files hold only the
//! statements and the order they run in. A failed attempt's retry is decided in
//! [`super::retry`].

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{
    Created, Error, FireOutcome, NewRun, NewSchedule, Result, ScheduleFire, ScheduleKey, Suspend,
};
use crate::model::{JournalEntry, Run, RunId, RunStatus, Task, Worker, WorkerId};
use crate::schedule::{Overlap, Resolution, Schedule, ScheduleId};
use crate::store::{PatchUsage, QueueStats, Signal, WorkerInfo, WorkerStatus};

/// `now + delay`, or [`far_future`] when that is past the end of time.
pub fn after(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|delay| now.checked_add_signed(delay))
        .map_or_else(far_future, |at| at.min(far_future()))
}

/// The `available_at` of a run that only an event wakes: later than any real time.
pub fn far_future() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Where a run suspended under its lease is parked: the columns the suspension writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Suspension {
    /// `pending` when what it waits for already happened, else sleeping or waiting.
    pub(super) status: RunStatus,
    /// When it is due: now, at the end of its sleep or timeout, or [`far_future`].
    pub(super) available_at: DateTime<Utc>,
    /// When it wakes by itself, as shown (none once due).
    pub(super) wake_at: Option<DateTime<Utc>>,
    /// What it waits for, as shown (none once due).
    pub(super) waiting_for: Option<String>,
}

impl Suspension {
    /// Parks a run suspended as `suspend` at `now`, given whether a signal it waits for is
    /// already there and whether the child it waits for already ended: a run whose wait is
    /// already over (or that only yields) is due at once instead.
    pub(super) fn of(
        suspend: &Suspend,
        signal_waiting: bool,
        child_ended: bool,
        now: DateTime<Utc>,
    ) -> Self {
        let timer_passed = suspend.until.is_some_and(|until| until <= now);
        if signal_waiting || child_ended || timer_passed || suspend.yields() {
            return Self {
                status: RunStatus::Pending,
                available_at: now,
                wake_at: None,
                waiting_for: None,
            };
        }
        Self {
            status: suspend.status(),
            available_at: suspend.until.unwrap_or_else(far_future),
            wake_at: suspend.until,
            waiting_for: suspend.waiting_for(),
        }
    }
}

/// The answer to a fenced report, given what the lease check read: the run's row said
/// whether the lease is held (`None`: there is no such run).
pub(super) fn lease_check(run: RunId, held: Option<bool>) -> Result<()> {
    match held {
        None => Err(run_not_found(run)),
        Some(false) => Err(Error::LeaseLost(run)),
        Some(true) => Ok(()),
    }
}

/// Why a fenced write matched no row, given the lease check made after it: what that check
/// says, or, when the lease looks held again, that it changed between the two statements.
pub(super) fn lease_lost(run: RunId, check: Result<()>) -> Error {
    match check {
        Err(e) => e,
        Ok(()) => Error::LeaseLost(run),
    }
}

/// The answer for a run that does not exist.
pub(super) fn run_not_found(id: RunId) -> Error {
    Error::NotFound(format!("run {id}"))
}

/// The answer for a worker that is not registered.
pub(super) fn worker_not_found(id: WorkerId) -> Error {
    Error::NotFound(format!("worker {id}"))
}

/// The answer to cancelling `run`, which had already ended.
pub(super) fn already_ended(run: &Run) -> Error {
    Error::Conflict(format!("run {} already ended as {}", run.id, run.status))
}

/// The answer to retrying `run`, which is not failed or cancelled.
pub(super) fn not_retryable(run: &Run) -> Error {
    let why = if run.status == RunStatus::Completed {
        "a completed run is not retried (fork it to run it again)"
    } else {
        "it has not ended"
    };
    Error::Conflict(format!(
        "run {} is {}: only a failed or cancelled run can be retried; {why}",
        run.id, run.status
    ))
}

/// The answer to deleting `run`, which has not ended or has a child that has not ended.
pub(super) fn not_deletable(run: &Run) -> Error {
    if run.status.is_terminal() {
        Error::Conflict(format!(
            "run {} has a child run that has not ended; delete it once that one ends",
            run.id
        ))
    } else {
        Error::Conflict(format!(
            "run {} is {}: only a run that ended can be deleted",
            run.id, run.status
        ))
    }
}

/// The answer to forking `run` from a step its journal does not hold.
pub(super) fn step_not_found(run: RunId, key: &str) -> Error {
    Error::NotFound(format!("step {key:?} of run {run}"))
}

/// The journal key of `ctx.patched(patch)`.
pub(super) fn patch_key(patch: &str) -> String {
    format!("patch:{patch}")
}

/// Whether a patch can be retired, from the counts a store read.
pub(super) fn patch_usage(
    workflow: &str,
    patch: &str,
    old_branch: i64,
    unmarked: i64,
    first_patched_at: Option<DateTime<Utc>>,
) -> PatchUsage {
    let old_branch = u64::try_from(old_branch).unwrap_or_default();
    let unmarked = u64::try_from(unmarked).unwrap_or_default();
    PatchUsage {
        workflow: workflow.to_owned(),
        patch: patch.to_owned(),
        old_branch,
        unmarked,
        first_patched_at,
        safe_to_remove: old_branch == 0 && unmarked == 0,
    }
}

/// Whether a run in `status` takes a signal: only one that has not ended does.
pub(super) fn takes_signals(run: RunId, status: RunStatus) -> Result<()> {
    if status.is_terminal() {
        return Err(Error::Conflict(format!(
            "run {run} already ended as {status}; only a run that has not ended takes signals"
        )));
    }
    Ok(())
}

/// The answer to a start that wrote run `id`.
pub(super) fn started(id: RunId, new: &NewRun) -> Created {
    Created {
        id,
        existing: false,
        claimed: new.claim.is_some(),
    }
}

/// The run that holds the idempotency key a start asked for.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(super) struct KeyHolder {
    /// The run.
    pub(super) id: RunId,
    /// Its workflow.
    pub(super) workflow: String,
    /// Its input.
    pub(super) input: Json<Value>,
    /// When it was started (and took the key).
    pub(super) created_at: DateTime<Utc>,
    /// Its parent, for a child run.
    pub(super) parent_id: Option<RunId>,
}

impl KeyHolder {
    /// Whether the key's retention window has passed, so that `new` releases the key from
    /// this run and takes it (never for a child run's key).
    pub(super) fn expired(&self, new: &NewRun) -> bool {
        self.parent_id.is_none()
            && new
                .idempotency_cutoff
                .is_some_and(|cutoff| self.created_at < cutoff)
    }

    /// The answer to `new`, a start with the key `key` this run holds: this run, when the
    /// start asks for the same workflow and input.
    pub(super) fn same_start(&self, key: &str, new: &NewRun) -> Result<Created> {
        if self.workflow == new.workflow && self.input.0 == new.input {
            Ok(Created {
                id: self.id,
                existing: true,
                claimed: false,
            })
        } else {
            Err(Error::Conflict(format!(
                "idempotency key {key:?} already started run {} with a different workflow or input",
                self.id
            )))
        }
    }
}

/// A worker's workflows, each once, in the order it registered them: the statements that
/// look for a worker's runs take them one by one.
pub(super) fn distinct_workflows(worker: &Worker) -> Vec<&str> {
    let mut seen = HashSet::new();
    worker
        .workflows
        .iter()
        .map(String::as_str)
        .filter(|w| seen.insert(*w))
        .collect()
}

/// A claimed run as the claim statement returns it: id, workflow, input, attempt, lease token.
pub(super) type Claimed = (RunId, String, Json<Value>, i32, Uuid);

/// A completed step of a claimed run: run, key, position, output.
pub(super) type JournalRow = (RunId, String, i32, Json<Value>);

/// Builds the claimed tasks, in claim order, each with its journal (`journal` is ordered by
/// run, then position).
pub(super) fn tasks(
    claimed: Vec<Claimed>,
    journal: Vec<JournalRow>,
    lease_expires_at: DateTime<Utc>,
) -> Vec<Task> {
    let mut by_run: HashMap<RunId, Vec<JournalEntry>> = HashMap::with_capacity(claimed.len());
    for (run_id, key, position, output) in journal {
        by_run.entry(run_id).or_default().push(JournalEntry {
            key,
            position: crate::model::count(position),
            output: output.0,
        });
    }
    claimed
        .into_iter()
        .map(|(run_id, workflow, input, attempt, lease_token)| Task {
            run_id,
            workflow,
            input: input.0,
            attempt: crate::model::count(attempt),
            lease_token,
            lease_expires_at,
            journal: by_run.remove(&run_id).unwrap_or_default(),
        })
        .collect()
}

/// What a schedule's runs are started with.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(super) struct ScheduledRun {
    /// The workflow each run executes.
    pub(super) workflow: String,
    /// The queue the runs go to.
    pub(super) queue: String,
    /// The input of every run.
    pub(super) input: Json<Value>,
    /// How many times a failed run is retried.
    pub(super) retries: i32,
}

/// The schedule row a fire reads: what it starts, and what decides when.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub(super) struct FireRow {
    /// What the runs are started with.
    #[sqlx(flatten)]
    pub(super) run: ScheduledRun,
    /// What happens at a due time while a run of the schedule is still going.
    pub(super) overlap: Overlap,
    /// The due time an earlier fire left waiting, if any.
    pub(super) buffered_at: Option<DateTime<Utc>>,
}

/// A schedule fire as its row decides it: the due times that start a run, the one left
/// buffered, and what the fire reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Firing {
    resolution: Resolution,
    active: Option<RunId>,
}

impl Firing {
    /// Applies the schedule's overlap policy to its buffered due time and the due times of
    /// the planned `fire`, given the run of the schedule that has not ended (`active`).
    pub(super) fn of(row: &FireRow, fire: &ScheduleFire, active: Option<RunId>) -> Self {
        Self {
            resolution: crate::schedule::resolve(
                row.overlap,
                row.buffered_at,
                &fire.due,
                active.is_some(),
            ),
            active,
        }
    }

    /// The due times to start a run for now, oldest first.
    pub(super) fn start(&self) -> &[DateTime<Utc>] {
        &self.resolution.start
    }

    /// The schedule's new `buffered_at`: the due time left waiting, if any.
    pub(super) fn buffered(&self) -> Option<DateTime<Utc>> {
        self.resolution.buffered
    }

    /// The schedule's new `last_fired_at`, when this fire starts anything: its latest due
    /// time.
    pub(super) fn last_fired(&self) -> Option<DateTime<Utc>> {
        self.resolution.start.last().copied()
    }

    /// What the fire reports, given the runs it `started` (a due time that already had its
    /// run starts none). A buffered due time is blocked by the run still going, or else by
    /// the last one this fire started.
    pub(super) fn outcome(self, started: Vec<(RunId, DateTime<Utc>)>) -> FireOutcome {
        let blocked_by = self
            .resolution
            .buffered
            .and(self.active.or_else(|| started.last().map(|s| s.0)));
        FireOutcome {
            applied: true,
            started,
            skipped: self.resolution.skipped,
            buffered: self.resolution.buffered,
            blocked_by,
        }
    }
}

/// The answer for a schedule that does not exist; `what` names it.
pub(super) fn schedule_not_found(what: impl Display) -> Error {
    Error::NotFound(format!("schedule {what}"))
}

/// The answer for a schedule `key` names that does not exist.
pub(super) fn missing_schedule(key: &ScheduleKey) -> Error {
    match key {
        ScheduleKey::Id(id) => schedule_not_found(id),
        ScheduleKey::Name(name) => schedule_not_found(format!("{name:?}")),
    }
}

/// The answer to creating a schedule whose id or name another one has.
pub(super) fn schedule_taken(new: &NewSchedule) -> Error {
    Error::Conflict(match &new.name {
        Some(name) => format!("a schedule with id {} or name {name:?} exists", new.id),
        None => format!("a schedule with id {} exists", new.id),
    })
}

/// The answer to an update of schedule `id` at a version that matched no row, given the
/// schedule as it is now (`found`): it does not exist, or it changed since that version.
pub(super) fn update_missed(id: ScheduleId, found: Result<Schedule>) -> Error {
    match found {
        Err(e) => e,
        Ok(_) => Error::Conflict(format!(
            "schedule {id} changed while it was being updated; try again"
        )),
    }
}

/// The answer to a trigger of schedule `id` at `now` that started nothing, given the schedule
/// as it is now (`found`): it does not exist, or it already has a run for that time.
pub(super) fn trigger_missed(id: ScheduleId, now: DateTime<Utc>, found: Result<()>) -> Error {
    match found {
        Err(e) => e,
        Ok(()) => Error::Conflict(format!("schedule {id} already has a run for {now}")),
    }
}

/// The most signals a run's listing shows: the latest ones.
pub(super) const MAX_SIGNALS_LISTED: i64 = 1000;

/// A signal as both dialects read it: name, payload, sent at, received as.
pub(super) type SignalRow = (String, Json<Value>, DateTime<Utc>, Option<String>);

/// The signals of a run from its rows, read newest first, in the order they were sent.
pub(super) fn signals(mut newest_first: Vec<SignalRow>) -> Vec<Signal> {
    newest_first.reverse();
    newest_first
        .into_iter()
        .map(|(name, Json(payload), sent_at, received_as)| Signal {
            name,
            payload,
            sent_at,
            received_as,
        })
        .collect()
}

/// A worker as both dialects read it for a listing; `L` is how the dialect stores a list of
/// names (an array, or JSON text).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct WorkerInfoRow<L> {
    id: WorkerId,
    queue: String,
    workflows: L,
    capacity: i32,
    hostname: Option<String>,
    build_id: Option<String>,
    pinned_workflows: L,
    status: WorkerStatus,
    registered_at: DateTime<Utc>,
    last_heartbeat_at: DateTime<Utc>,
    runs_held: i64,
}

impl<L: Into<Vec<String>>> From<WorkerInfoRow<L>> for WorkerInfo {
    fn from(row: WorkerInfoRow<L>) -> Self {
        WorkerInfo {
            worker: Worker {
                id: row.id,
                queue: row.queue,
                workflows: row.workflows.into(),
                capacity: row.capacity,
                hostname: row.hostname,
                build_id: row.build_id,
                pinned_workflows: row.pinned_workflows.into(),
            },
            status: row.status,
            registered_at: row.registered_at,
            last_heartbeat_at: row.last_heartbeat_at,
            runs_held: u32::try_from(row.runs_held).unwrap_or(u32::MAX),
        }
    }
}

/// A list of names stored as JSON text (SQLite).
#[derive(Debug, sqlx::Type)]
#[sqlx(transparent)]
pub(super) struct JsonNames(Json<Vec<String>>);

impl From<JsonNames> for Vec<String> {
    fn from(names: JsonNames) -> Self {
        names.0.0
    }
}

/// The runs of one queue and workflow that have not ended, by state: due, scheduled,
/// running, suspended, and when the oldest due one came due.
pub(super) type QueueRow = (String, String, i64, i64, i64, i64, Option<DateTime<Utc>>);

/// The online workers of one queue that run one workflow.
pub(super) type QueueWorkersRow = (String, String, i64);

/// Each queue and workflow with runs in flight or online workers, by queue then workflow.
pub(super) fn queue_stats(runs: Vec<QueueRow>, workers: Vec<QueueWorkersRow>) -> Vec<QueueStats> {
    let count = |n: i64| u64::try_from(n).unwrap_or_default();
    let mut by_key: std::collections::BTreeMap<(String, String), QueueStats> =
        std::collections::BTreeMap::new();
    let empty = |queue: &str, workflow: &str| QueueStats {
        queue: queue.to_owned(),
        workflow: workflow.to_owned(),
        due: 0,
        scheduled: 0,
        running: 0,
        suspended: 0,
        oldest_due_at: None,
        workers: 0,
    };
    for (queue, workflow, due, scheduled, running, suspended, oldest_due_at) in runs {
        let stats = QueueStats {
            due: count(due),
            scheduled: count(scheduled),
            running: count(running),
            suspended: count(suspended),
            oldest_due_at,
            ..empty(&queue, &workflow)
        };
        by_key.insert((queue, workflow), stats);
    }
    for (queue, workflow, online) in workers {
        let entry = by_key
            .entry((queue.clone(), workflow.clone()))
            .or_insert_with(|| empty(&queue, &workflow));
        entry.workers = u32::try_from(online).unwrap_or(u32::MAX);
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("a valid time")
    }

    fn new_run(workflow: &str, input: Value) -> NewRun {
        NewRun {
            workflow: workflow.to_owned(),
            queue: "default".to_owned(),
            input,
            retries: 0,
            available_at: at(0),
            parent_id: None,
            idempotency_key: Some("k".to_owned()),
            idempotency_cutoff: None,
            deadline_at: None,
            retry_policy: None,
            claim: None,
        }
    }

    #[test]
    fn after_adds_the_delay_and_stops_at_the_far_future() {
        assert_eq!(after(at(100), Duration::from_secs(5)), at(105));
        assert_eq!(after(at(100), Duration::MAX), far_future());
        assert_eq!(after(far_future(), Duration::from_secs(1)), far_future());
    }

    #[test]
    fn a_suspended_run_sleeps_waits_or_is_due_at_once() {
        let now = at(100);
        let sleep = Suspend {
            until: Some(at(160)),
            ..Suspend::default()
        };
        assert_eq!(
            Suspension::of(&sleep, false, false, now),
            Suspension {
                status: RunStatus::Sleeping,
                available_at: at(160),
                wake_at: Some(at(160)),
                waiting_for: None,
            }
        );
        let signal = Suspend {
            signal: Some("approved".to_owned()),
            ..Suspend::default()
        };
        assert_eq!(
            Suspension::of(&signal, false, false, now),
            Suspension {
                status: RunStatus::Waiting,
                available_at: far_future(),
                wake_at: None,
                waiting_for: Some("signal:approved".to_owned()),
            }
        );
        let due = Suspension {
            status: RunStatus::Pending,
            available_at: now,
            wake_at: None,
            waiting_for: None,
        };
        assert_eq!(
            Suspension::of(&signal, true, false, now),
            due,
            "signal there"
        );
        let child = Suspend {
            child: Some(RunId::new()),
            until: Some(at(500)),
            ..Suspend::default()
        };
        assert_eq!(Suspension::of(&child, false, true, now), due, "child ended");
        assert_eq!(
            Suspension::of(&child, false, false, at(500)),
            Suspension {
                available_at: at(500),
                ..due.clone()
            },
            "timed out"
        );
        assert_eq!(
            Suspension::of(&Suspend::default(), false, false, now),
            due,
            "yield"
        );
    }

    fn fire_row(overlap: Overlap, buffered_at: Option<DateTime<Utc>>) -> FireRow {
        FireRow {
            run: ScheduledRun {
                workflow: "report".to_owned(),
                queue: "default".to_owned(),
                input: Json(json!({})),
                retries: 0,
            },
            overlap,
            buffered_at,
        }
    }

    fn planned(due: &[i64]) -> ScheduleFire {
        ScheduleFire {
            id: ScheduleId::new(),
            version: 1,
            due: due.iter().map(|&s| at(s)).collect(),
            next_fire_at: Some(at(1_000)),
        }
    }

    #[test]
    fn a_fire_with_nothing_running_starts_its_due_times() {
        let firing = Firing::of(
            &fire_row(Overlap::AllowAll, None),
            &planned(&[60, 120]),
            None,
        );
        assert_eq!(firing.start(), [at(60), at(120)]);
        assert_eq!(firing.last_fired(), Some(at(120)));
        assert_eq!(firing.buffered(), None);
        let (a, b) = (RunId::new(), RunId::new());
        assert_eq!(
            firing.outcome(vec![(a, at(60)), (b, at(120))]),
            FireOutcome {
                applied: true,
                started: vec![(a, at(60)), (b, at(120))],
                skipped: 0,
                buffered: None,
                blocked_by: None,
            }
        );
    }

    #[test]
    fn a_buffered_due_time_is_blocked_by_the_run_still_going_or_the_one_just_started() {
        let active = RunId::new();
        let row = fire_row(Overlap::BufferOne, None);
        let firing = Firing::of(&row, &planned(&[60, 120, 180]), Some(active));
        assert!(firing.start().is_empty());
        assert_eq!(firing.last_fired(), None);
        assert_eq!(firing.buffered(), Some(at(60)));
        let outcome = firing.outcome(Vec::new());
        assert_eq!((outcome.skipped, outcome.blocked_by), (2, Some(active)));

        let firing = Firing::of(&row, &planned(&[60, 120]), None);
        let started = RunId::new();
        let outcome = firing.outcome(vec![(started, at(60))]);
        assert_eq!(outcome.buffered, Some(at(120)));
        assert_eq!(outcome.blocked_by, Some(started));
    }

    #[test]
    fn a_buffered_due_time_starts_first_once_nothing_runs() {
        let row = fire_row(Overlap::Skip, Some(at(30)));
        let firing = Firing::of(&row, &planned(&[60]), None);
        assert_eq!(firing.start(), [at(30)]);
        assert_eq!(firing.outcome(Vec::new()).skipped, 1);
    }

    #[test]
    fn schedule_answers_name_the_schedule() {
        let id = ScheduleId::new();
        assert_eq!(
            missing_schedule(&ScheduleKey::Id(id)).to_string(),
            format!("schedule {id} not found")
        );
        assert_eq!(
            missing_schedule(&ScheduleKey::Name("nightly".to_owned())).to_string(),
            "schedule \"nightly\" not found"
        );
        let gone = || Err(schedule_not_found(id));
        assert!(matches!(update_missed(id, gone()), Error::NotFound(_)));
        assert!(matches!(
            trigger_missed(id, at(0), gone().map(drop)),
            Error::NotFound(_)
        ));
        assert!(matches!(
            trigger_missed(id, at(0), Ok(())),
            Error::Conflict(_)
        ));
    }

    fn holder(workflow: &str, input: Value, created_at: i64, parent: bool) -> KeyHolder {
        KeyHolder {
            id: RunId::new(),
            workflow: workflow.to_owned(),
            input: Json(input),
            created_at: at(created_at),
            parent_id: parent.then(RunId::new),
        }
    }

    #[test]
    fn a_repeated_start_gets_the_first_run_unless_it_asks_for_something_else() {
        let input = json!({"n": 1});
        let new = new_run("greet", input.clone());
        let first = holder("greet", input.clone(), 0, false);
        assert_eq!(
            first.same_start("k", &new).ok(),
            Some(Created {
                id: first.id,
                existing: true,
                claimed: false,
            })
        );
        let other = holder("other", input, 0, false);
        assert!(matches!(
            other.same_start("k", &new),
            Err(Error::Conflict(_))
        ));
        let changed = holder("greet", json!({"n": 2}), 0, false);
        assert!(matches!(
            changed.same_start("k", &new),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn a_key_expires_after_its_window_but_never_from_a_child_run() {
        let new = NewRun {
            idempotency_cutoff: Some(at(100)),
            ..new_run("greet", json!(null))
        };
        assert!(holder("greet", json!(null), 99, false).expired(&new));
        assert!(!holder("greet", json!(null), 100, false).expired(&new));
        assert!(!holder("greet", json!(null), 99, true).expired(&new));
        let kept = new_run("greet", json!(null));
        assert!(!holder("greet", json!(null), 0, false).expired(&kept));
    }

    #[test]
    fn a_lease_check_tells_a_missing_run_from_a_lost_lease() {
        let run = RunId::new();
        assert!(lease_check(run, Some(true)).is_ok());
        assert!(matches!(lease_check(run, Some(false)), Err(Error::LeaseLost(r)) if r == run));
        assert!(matches!(lease_check(run, None), Err(Error::NotFound(_))));
        assert!(matches!(lease_lost(run, Ok(())), Error::LeaseLost(r) if r == run));
        assert!(matches!(
            lease_lost(run, lease_check(run, None)),
            Error::NotFound(_)
        ));
    }

    #[test]
    fn only_a_run_that_has_not_ended_takes_signals() {
        let run = RunId::new();
        assert!(takes_signals(run, RunStatus::Waiting).is_ok());
        assert!(takes_signals(run, RunStatus::Running).is_ok());
        assert!(matches!(
            takes_signals(run, RunStatus::Completed),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn a_workers_workflows_are_taken_once_each_in_registration_order() {
        let worker = Worker {
            id: WorkerId::new(),
            queue: "default".to_owned(),
            workflows: ["b", "a", "b", "c", "a"].map(str::to_owned).to_vec(),
            capacity: 1,
            hostname: None,
            build_id: None,
            pinned_workflows: Vec::new(),
        };
        assert_eq!(distinct_workflows(&worker), ["b", "a", "c"]);
    }

    #[test]
    fn each_task_gets_its_own_journal_in_claim_order() {
        let (first, second) = (RunId::new(), RunId::new());
        let token = Uuid::new_v4();
        let claimed = vec![
            (second, "w".to_owned(), Json(json!(2)), 2, token),
            (first, "w".to_owned(), Json(json!(1)), 1, token),
        ];
        let journal = vec![
            (second, "a".to_owned(), 0, Json(json!("x"))),
            (second, "b".to_owned(), 1, Json(json!("y"))),
        ];
        let tasks = tasks(claimed, journal, at(30));
        assert_eq!(tasks.len(), 2);
        assert_eq!((tasks[0].run_id, tasks[0].attempt), (second, 2));
        assert_eq!(tasks[0].input, json!(2));
        assert_eq!(tasks[0].lease_expires_at, at(30));
        let keys: Vec<&str> = tasks[0].journal.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(tasks[1].run_id, first);
        assert!(tasks[1].journal.is_empty());
    }

    #[test]
    fn queue_stats_join_the_runs_and_the_workers_of_each_queue_and_workflow() {
        let due_at: DateTime<Utc> = "2026-11-26T09:00:00Z".parse().expect("a time");
        let stats = queue_stats(
            vec![("q".into(), "b".into(), 3, 1, 2, 0, Some(due_at))],
            vec![("q".into(), "a".into(), 2), ("q".into(), "b".into(), 1)],
        );
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (stats[0].workflow.as_str(), stats[0].workers, stats[0].due),
            ("a", 2, 0)
        );
        assert_eq!(
            (stats[1].due, stats[1].scheduled, stats[1].running),
            (3, 1, 2)
        );
        assert_eq!(
            (stats[1].oldest_due_at, stats[1].workers),
            (Some(due_at), 1)
        );
    }

    #[test]
    fn signals_come_in_the_order_they_were_sent() {
        let at: DateTime<Utc> = "2026-11-26T09:00:00Z".parse().expect("a time");
        let listed = signals(vec![
            ("b".into(), Json(Value::Null), at, None),
            ("a".into(), Json(Value::Null), at, Some("signal:a".into())),
        ]);
        assert_eq!(listed[0].name, "a");
        assert_eq!(listed[0].received_as.as_deref(), Some("signal:a"));
    }
}
