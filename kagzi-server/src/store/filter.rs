//! Which runs a listing or a count reads, as a list of conditions that each dialect writes
//! into its statement (`where workflow = $1 and id < $2 ...`). Only the filters given become
//! conditions, so every combination is its own statement that the database plans with the
//! index that fits it (a catch-all `($1 is null or workflow = $1)` would be planned once for
//! all of them). Values are always bound, never written into the text.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{RunCounts, RunFilter};
use crate::model::{RunId, ScheduleId};

/// A value a condition binds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bound<'a> {
    /// A text column's value.
    Text(&'a str),
    /// A run id (or a bound on run ids).
    Run(RunId),
    /// A schedule id.
    Schedule(ScheduleId),
    /// A time.
    Time(DateTime<Utc>),
}

/// One condition: the SQL before the bound value (`"workflow = "`) and the value.
pub(super) type Condition<'a> = (&'static str, Bound<'a>);

/// How far a run's id (UUID v7, stamped when the server made the run) may be from its
/// `created_at`: the id bounds only narrow the scan, the exact time bounds decide.
const ID_CLOCK_SLACK: Duration = Duration::minutes(1);

/// The conditions of `filter`, in a fixed order. Time bounds also bound the id, so that
/// the scan of the id index (newest first) stops at the range's end.
pub(super) fn run_conditions(filter: &RunFilter) -> Vec<Condition<'_>> {
    let mut conditions = Vec::new();
    if let Some(workflow) = &filter.workflow {
        conditions.push(("workflow = ", Bound::Text(workflow)));
    }
    if let Some(queue) = &filter.queue {
        conditions.push(("queue = ", Bound::Text(queue)));
    }
    if let Some(status) = filter.status {
        conditions.push(("status = ", Bound::Text(status.as_str())));
    }
    if let Some(parent) = filter.parent_id {
        conditions.push(("parent_id = ", Bound::Run(parent)));
    }
    if let Some(schedule) = filter.schedule_id {
        conditions.push(("schedule_id = ", Bound::Schedule(schedule)));
    }
    if let Some(key) = &filter.idempotency_key {
        conditions.push(("idempotency_key = ", Bound::Text(key)));
    }
    if let Some(before) = filter.before {
        conditions.push(("id < ", Bound::Run(before)));
    }
    if let Some(after) = filter.created_after {
        conditions.push(("id >= ", Bound::Run(first_id_of(after - ID_CLOCK_SLACK))));
        conditions.push(("created_at >= ", Bound::Time(after)));
    }
    if let Some(before) = filter.created_before {
        conditions.push(("id < ", Bound::Run(first_id_of(before + ID_CLOCK_SLACK))));
        conditions.push(("created_at < ", Bound::Time(before)));
    }
    conditions
}

/// `filter` for counting by status: without its status, cursor and limit.
pub(super) fn for_counting(filter: &RunFilter) -> RunFilter {
    RunFilter {
        status: None,
        before: None,
        limit: 0,
        ..filter.clone()
    }
}

/// The counts read for each status, in [`RunStatus::ALL`]'s order, each stopped at `cap`.
pub(super) fn counts(read: [i64; 7], cap: u64) -> RunCounts {
    let [
        pending,
        running,
        sleeping,
        waiting,
        completed,
        failed,
        cancelled,
    ] = read.map(|n| u64::try_from(n).unwrap_or_default());
    let all = [
        pending, running, sleeping, waiting, completed, failed, cancelled,
    ];
    RunCounts {
        pending,
        running,
        sleeping,
        waiting,
        completed,
        failed,
        cancelled,
        total: all.iter().sum(),
        cap,
        capped: all.iter().any(|n| *n >= cap),
    }
}

/// The smallest UUID v7 of the millisecond `at` (before 1970: the smallest of all).
fn first_id_of(at: DateTime<Utc>) -> RunId {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    RunId(Uuid::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_filters_given_become_conditions() {
        let none = RunFilter::default();
        assert!(run_conditions(&none).is_empty());
        let filter = RunFilter {
            workflow: Some("greet".to_owned()),
            status: Some(crate::model::RunStatus::Failed),
            ..RunFilter::default()
        };
        assert_eq!(
            run_conditions(&filter),
            vec![
                ("workflow = ", Bound::Text("greet")),
                ("status = ", Bound::Text("failed")),
            ]
        );
    }

    #[test]
    fn counts_add_up_and_say_when_one_reached_the_cap() {
        let counts = counts([1, 2, 0, 0, 10, 3, 0], 10);
        assert_eq!(
            (counts.total, counts.completed, counts.capped),
            (16, 10, true)
        );
        assert!(counts.is_capped(crate::model::RunStatus::Completed));
        assert!(!counts.is_capped(crate::model::RunStatus::Failed));
        assert!(!super::counts([0; 7], 10).capped);
    }

    #[test]
    fn a_time_range_also_bounds_the_ids_of_runs_made_in_it() {
        let at: DateTime<Utc> = "2026-11-26T09:00:00Z".parse().expect("a time");
        let made_then = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(at.timestamp()).expect("after 1970"),
            0,
        ));
        let floor = first_id_of(at);
        assert!(floor.0 <= made_then, "{floor} <= {made_then}");
        assert!(first_id_of(at + Duration::milliseconds(1)).0 > made_then);
        assert_eq!(floor.0.get_version_num(), 7);
        let filter = RunFilter {
            created_after: Some(at),
            ..RunFilter::default()
        };
        let conditions = run_conditions(&filter);
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1], ("created_at >= ", Bound::Time(at)));
    }
}
