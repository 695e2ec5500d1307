//! Cron schedules as data and as arithmetic: the stored [`Schedule`], its [`Overlap`] and
//! [`CatchUp`] policies, cron expressions in a time zone ([`CronSpec`]), and the pure
//! decisions the scheduler makes — which due times to start after a pause in service
//! ([`plan`]) and what to do when the previous run is still going ([`resolve`]).
//! Nothing here touches the database or the clock; `now` is always passed in.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use kagzi_proto::{Overlap, ScheduleId};

/// The most missed due times one catch-up may start.
pub const MAX_CATCH_UP: u32 = 1000;
/// The shortest catch-up window accepted: shorter would drop on-time fires that are a little
/// late (the scheduler fires within milliseconds, but a busy database can add more).
pub const MIN_CATCH_UP_WINDOW_MS: u64 = 1000;

/// How [`resolve`] decided: the due times to start now, the one left buffered, and
/// how many were dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Due times to start a run for now, oldest first.
    pub start: Vec<DateTime<Utc>>,
    /// The due time kept for when the running run ends (`buffer_one` only).
    pub buffered: Option<DateTime<Utc>>,
    /// Due times dropped because a run was still going.
    pub skipped: usize,
}

/// Decides what `overlap` starts given the schedule's `buffered` due time, the newly `due`
/// times (oldest first) and whether a run of the schedule is still going (`active`).
pub fn resolve(
    overlap: Overlap,
    buffered: Option<DateTime<Utc>>,
    due: &[DateTime<Utc>],
    active: bool,
) -> Resolution {
    let mut candidates: Vec<DateTime<Utc>> =
        buffered.into_iter().chain(due.iter().copied()).collect();
    candidates.dedup();
    match overlap {
        Overlap::AllowAll => Resolution {
            start: candidates,
            buffered: None,
            skipped: 0,
        },
        Overlap::BufferOne => {
            let mut rest = candidates.into_iter();
            let start: Vec<_> = if active {
                Vec::new()
            } else {
                rest.next().into_iter().collect()
            };
            let buffered = rest.next();
            Resolution {
                start,
                buffered,
                skipped: rest.count(),
            }
        }
        // Skip (and any policy added later: skipping never starts more than asked).
        _ => {
            // The first one starts (when nothing runs); every later one would overlap it.
            let start: Vec<_> = if active {
                Vec::new()
            } else {
                candidates.first().copied().into_iter().collect()
            };
            Resolution {
                skipped: candidates.len() - start.len(),
                start,
                buffered: None,
            }
        }
    }
}

/// Which missed due times start after the scheduler could not fire them on time (the server
/// was down, or the schedule's previous fire was late).
///
/// Of the due times since the schedule last fired, those older than `window` are dropped, and
/// of the rest only the `max` most recent start. The default — no window, `max` 1 — starts
/// the most recent missed time once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    /// Due times older than this (in milliseconds before now) are dropped; `None`: no limit.
    pub window_ms: Option<u64>,
    /// At most this many of the most recent due times start.
    pub max: u32,
}

impl Default for CatchUp {
    fn default() -> Self {
        Self {
            window_ms: None,
            max: 1,
        }
    }
}

/// A cron expression read in a time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses `expr` — five fields (`minute hour day month weekday`) or six with seconds first
    /// (`0 0 9 * * *`) — read in the IANA time zone `time_zone` (e.g. `UTC`, `Europe/Berlin`).
    ///
    /// # Errors
    /// A message that says what is wrong with the expression or the zone.
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "cron expression {expr:?} has {fields} fields; expected 5 (minute hour day month \
                 weekday) or 6 (second minute hour day month weekday)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("cron expression {expr:?} is invalid: {e}"))?;
        let tz = Tz::from_str(time_zone).map_err(|_| {
            format!(
                "time zone {time_zone:?} is not an IANA time zone name such as UTC or Europe/Berlin"
            )
        })?;
        Ok(Self { cron, tz })
    }

    /// The first due time strictly after `t`, if the expression ever matches again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|next| next.with_timezone(&Utc))
    }

    /// The last due time at or before `t`.
    pub fn previous_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|prev| prev.with_timezone(&Utc))
    }

    /// The last due time strictly before `t`.
    fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|prev| prev.with_timezone(&Utc))
    }
}

/// What the scheduler does with a schedule whose `next_fire_at` has come: the due times to
/// start (oldest first) and the next due time after `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The due times to start, oldest first.
    pub due: Vec<DateTime<Utc>>,
    /// The next due time strictly after `now` (`None`: the expression never matches again).
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Plans a schedule whose next due time was `next_fire_at`, at `now`: every due time in
/// `[next_fire_at, now]` is due, and [`CatchUp`] decides which of them start. Works backwards
/// from `now`, so a schedule that missed a million times costs `catch_up.max` steps.
pub fn plan(
    spec: &CronSpec,
    next_fire_at: DateTime<Utc>,
    catch_up: CatchUp,
    now: DateTime<Utc>,
) -> Plan {
    let next = spec.next_after(now);
    if next_fire_at > now {
        return Plan {
            due: Vec::new(),
            next_fire_at: Some(next_fire_at),
        };
    }
    let window_start = catch_up.window_ms.and_then(|ms| {
        chrono::Duration::try_milliseconds(i64::try_from(ms).ok()?)
            .and_then(|window| now.checked_sub_signed(window))
    });
    let oldest = window_start.map_or(next_fire_at, |w| w.max(next_fire_at));
    let mut due = Vec::new();
    let mut cursor = spec.previous_at_or_before(now);
    while let Some(t) = cursor {
        if t < oldest || due.len() >= catch_up.max as usize {
            break;
        }
        due.push(t);
        cursor = spec.previous_before(t);
    }
    due.reverse();
    Plan {
        due,
        next_fire_at: next,
    }
}

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Schedule {
    /// The schedule's id.
    pub id: ScheduleId,
    /// Its unique name, if it has one (usable in place of the id).
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
    pub retries: i32,
    /// What happens at a due time while the previous run is still going.
    pub overlap: Overlap,
    /// Catch-up: due times older than this many milliseconds are dropped (null: no limit).
    pub catch_up_window_ms: Option<i64>,
    /// Catch-up: at most this many of the most recent missed due times start.
    pub catch_up_max: i32,
    /// Whether firing is paused.
    pub paused: bool,
    /// The next due time (null while paused, or if the expression never matches again).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The latest due time that started a run.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// A due time waiting for the previous run to end (`buffer_one`).
    pub buffered_at: Option<DateTime<Utc>>,
    /// Bumped by every change; the scheduler fires only from the version it planned from.
    pub version: i64,
    /// When the schedule was created.
    pub created_at: DateTime<Utc>,
    /// When the schedule last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<Schedule> for kagzi_proto::Schedule {
    fn from(s: Schedule) -> Self {
        let catch_up = s.catch_up();
        kagzi_proto::Schedule {
            id: s.id,
            name: s.name,
            workflow: s.workflow,
            queue: s.queue,
            cron: s.cron,
            time_zone: s.time_zone,
            input: s.input,
            retries: crate::model::count(s.retries),
            overlap: s.overlap,
            catch_up_window_ms: catch_up.window_ms,
            catch_up_max: catch_up.max,
            paused: s.paused,
            next_fire_at: s.next_fire_at,
            last_fired_at: s.last_fired_at,
            buffered_at: s.buffered_at,
            version: u64::try_from(s.version).unwrap_or_default(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

impl Schedule {
    /// The schedule's catch-up policy.
    pub fn catch_up(&self) -> CatchUp {
        CatchUp {
            window_ms: self
                .catch_up_window_ms
                .map(|ms| u64::try_from(ms).unwrap_or(0)),
            max: u32::try_from(self.catch_up_max).unwrap_or(1),
        }
    }

    /// The schedule's cron expression in its time zone.
    ///
    /// # Errors
    /// When the stored expression or zone does not parse (it was checked when stored).
    pub fn spec(&self) -> Result<CronSpec, String> {
        CronSpec::parse(&self.cron, &self.time_zone)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, s)
            .single()
            .expect("valid time")
    }

    fn every_second() -> CronSpec {
        CronSpec::parse("* * * * * *", "UTC").expect("valid")
    }

    #[test]
    fn five_and_six_fields_parse_and_others_say_why_not() {
        let six = CronSpec::parse("0 0 9 * * *", "UTC").expect("six fields");
        assert_eq!(six.next_after(at(8, 0, 0)), Some(at(9, 0, 0)));
        let five = CronSpec::parse("30 9 * * *", "UTC").expect("five fields");
        assert_eq!(five.next_after(at(8, 0, 0)), Some(at(9, 30, 0)));
        let four = CronSpec::parse("0 9 * *", "UTC").expect_err("four fields");
        assert!(four.contains("has 4 fields"), "{four}");
        let bad = CronSpec::parse("0 61 * * *", "UTC").expect_err("minute 61");
        assert!(bad.contains("is invalid"), "{bad}");
        let zone = CronSpec::parse("0 9 * * *", "Mars/Olympus").expect_err("bad zone");
        assert!(zone.contains("Mars/Olympus"), "{zone}");
    }

    #[test]
    fn a_time_zone_moves_the_due_times() {
        let berlin = CronSpec::parse("0 0 9 * * *", "Europe/Berlin").expect("valid");
        // 9:00 in Berlin is 8:00 UTC in March before the DST switch.
        assert_eq!(berlin.next_after(at(0, 0, 0)), Some(at(8, 0, 0)));
    }

    #[test]
    fn on_time_fires_start_exactly_the_due_time() {
        let plan = plan(
            &every_second(),
            at(9, 0, 5),
            CatchUp::default(),
            at(9, 0, 5),
        );
        assert_eq!(plan.due, vec![at(9, 0, 5)]);
        assert_eq!(plan.next_fire_at, Some(at(9, 0, 6)));
        let early = super::plan(
            &every_second(),
            at(9, 0, 6),
            CatchUp::default(),
            at(9, 0, 5),
        );
        assert!(early.due.is_empty());
        assert_eq!(early.next_fire_at, Some(at(9, 0, 6)));
    }

    #[test]
    fn catch_up_by_default_starts_only_the_most_recent_missed_time() {
        let now = at(9, 0, 30) + chrono::Duration::milliseconds(400);
        let plan = plan(&every_second(), at(9, 0, 0), CatchUp::default(), now);
        assert_eq!(plan.due, vec![at(9, 0, 30)]);
        assert_eq!(plan.next_fire_at, Some(at(9, 0, 31)));
    }

    #[test]
    fn catch_up_max_and_window_limit_the_missed_times() {
        let now = at(9, 0, 30);
        let three = CatchUp {
            window_ms: None,
            max: 3,
        };
        assert_eq!(
            plan(&every_second(), at(9, 0, 0), three, now).due,
            vec![at(9, 0, 28), at(9, 0, 29), at(9, 0, 30)]
        );
        let window = CatchUp {
            window_ms: Some(2_000),
            max: 100,
        };
        assert_eq!(
            plan(&every_second(), at(9, 0, 0), window, now).due,
            vec![at(9, 0, 28), at(9, 0, 29), at(9, 0, 30)]
        );
        // Never earlier than the schedule's own next due time.
        let all = CatchUp {
            window_ms: None,
            max: 100,
        };
        assert_eq!(plan(&every_second(), at(9, 0, 29), all, now).due.len(), 2);
    }

    #[test]
    fn a_long_outage_costs_only_catch_up_max_steps() {
        let now = at(9, 0, 0) + chrono::Duration::days(3650);
        let plan = plan(&every_second(), at(9, 0, 0), CatchUp::default(), now);
        assert_eq!(plan.due, vec![now]);
    }

    #[test]
    fn skip_starts_one_when_idle_and_none_while_running() {
        let due = [at(9, 0, 1), at(9, 0, 2)];
        let idle = resolve(Overlap::Skip, None, &due, false);
        assert_eq!(idle.start, vec![at(9, 0, 1)]);
        assert_eq!(idle.skipped, 1);
        let busy = resolve(Overlap::Skip, None, &due, true);
        assert!(busy.start.is_empty());
        assert_eq!((busy.skipped, busy.buffered), (2, None));
    }

    #[test]
    fn buffer_one_keeps_one_due_time_for_later() {
        let busy = resolve(Overlap::BufferOne, None, &[at(9, 0, 1), at(9, 0, 2)], true);
        assert_eq!(busy.buffered, Some(at(9, 0, 1)));
        assert_eq!((busy.start.len(), busy.skipped), (0, 1));
        let still_busy = resolve(Overlap::BufferOne, Some(at(9, 0, 1)), &[at(9, 0, 3)], true);
        assert_eq!(still_busy.buffered, Some(at(9, 0, 1)));
        assert_eq!(still_busy.skipped, 1);
        let idle = resolve(Overlap::BufferOne, Some(at(9, 0, 1)), &[], false);
        assert_eq!(idle.start, vec![at(9, 0, 1)]);
        assert_eq!(idle.buffered, None);
    }

    #[test]
    fn allow_all_starts_everything() {
        let all = resolve(Overlap::AllowAll, None, &[at(9, 0, 1), at(9, 0, 2)], true);
        assert_eq!(all.start, vec![at(9, 0, 1), at(9, 0, 2)]);
        assert_eq!(all.skipped, 0);
    }
}
