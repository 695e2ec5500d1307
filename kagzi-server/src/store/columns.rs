//! The columns of the rows both dialects read into [`Run`], [`Step`] and [`Schedule`], as
//! string literals, so that every statement stays literal SQL (`concat!("select ",
//! run_columns!(), ...)`) and a column added to a row is added to both stores at once.
//!
//! [`Run`]: crate::model::Run
//! [`Step`]: crate::model::Step
//! [`Schedule`]: crate::schedule::Schedule

/// The columns of [`Run`](crate::model::Run).
macro_rules! run_columns {
    () => {
        "id, workflow, queue, status, input, output, error, attempts, retries, created_at, \
         started_at, finished_at, wake_at, waiting_for, parent_id, idempotency_key, deadline_at, \
         schedule_id, scheduled_at, forked_from, build_id, pinned"
    };
}

/// The columns of [`Step`](crate::model::Step).
macro_rules! step_columns {
    () => {
        "key, position, status, output, error, attempts, created_at, finished_at"
    };
}

/// The columns of [`Schedule`](crate::schedule::Schedule).
macro_rules! schedule_columns {
    () => {
        "id, name, workflow, queue, cron, time_zone, input, retries, overlap, catch_up_window_ms, \
         catch_up_max, paused, next_fire_at, last_fired_at, buffered_at, version, created_at, \
         updated_at"
    };
}
