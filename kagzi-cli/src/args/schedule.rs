//! `kagzi schedule ...`: the arguments of every schedule command.

use std::time::Duration;

use clap::{Args, Subcommand};
use kagzi_proto::ScheduleId;

use super::run::LimitArgs;
use super::value::{self, JsonArg, OverlapArg, StatusArg};

/// Create, list, change, pause, resume, trigger and delete cron schedules.
#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Create a schedule that starts WORKFLOW at every due time of CRON.
    Create(CreateArgs),
    /// List schedules, newest first.
    #[command(visible_alias = "ls")]
    List(ScheduleListArgs),
    /// Show a schedule.
    Show(ScheduleArg),
    /// Change a schedule: only the fields given.
    Update(UpdateArgs),
    /// Pause a schedule: it starts nothing until resumed.
    Pause(ScheduleArg),
    /// Resume a paused schedule, from now on (no burst of the due times missed).
    Resume(ScheduleArg),
    /// Start one run of the schedule now (even while paused).
    Trigger(ScheduleArg),
    /// Delete a schedule; the runs it started stay.
    Delete(ScheduleArg),
    /// List the runs a schedule started, newest first.
    Runs(ScheduleRunsArgs),
}

/// One schedule, by id or name.
#[derive(Debug, Args)]
pub(crate) struct ScheduleArg {
    /// The schedule's id or name.
    pub(crate) schedule: String,
}

/// `kagzi schedule create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The workflow each run executes.
    pub(crate) workflow: String,
    /// Five fields (`0 9 * * *`), or six with seconds first (`0 0 9 * * *`); quote it.
    pub(crate) cron: String,
    /// A unique name, usable in place of the id.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// The schedule's id (made up when absent).
    #[arg(long)]
    pub(crate) id: Option<ScheduleId>,
    /// The queue the runs go to.
    #[arg(long, short, default_value = kagzi_proto::DEFAULT_QUEUE)]
    pub(crate) queue: String,
    /// The IANA time zone the expression is read in.
    #[arg(long, visible_alias = "tz", default_value = "UTC")]
    pub(crate) time_zone: String,
    /// The input of every run: JSON, @FILE, or - for standard input (default null).
    #[arg(long, short, value_name = "JSON|@FILE|-", value_parser = value::json)]
    pub(crate) input: Option<JsonArg>,
    /// How many times a failed run is retried.
    #[arg(long, default_value_t = 0)]
    pub(crate) retries: u32,
    /// What happens at a due time while the previous run has not ended.
    #[arg(long, value_enum, default_value_t = OverlapArg::Skip)]
    pub(crate) overlap: OverlapArg,
    /// Catch-up: drop missed due times older than this (default: no limit).
    #[arg(long, value_name = "DURATION", value_parser = value::duration)]
    pub(crate) catch_up_window: Option<Duration>,
    /// Catch-up: start at most this many of the most recent missed due times.
    #[arg(long, default_value_t = 1)]
    pub(crate) catch_up_max: u32,
    /// Create it paused.
    #[arg(long)]
    pub(crate) paused: bool,
}

/// `kagzi schedule list`.
#[derive(Debug, Args)]
pub(crate) struct ScheduleListArgs {
    /// Only schedules of this workflow.
    #[arg(long, short)]
    pub(crate) workflow: Option<String>,
    /// Only schedules on this queue.
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
    /// Only paused schedules.
    #[arg(long, conflicts_with = "active")]
    pub(crate) paused: bool,
    /// Only active (not paused) schedules.
    #[arg(long)]
    pub(crate) active: bool,
    #[command(flatten)]
    pub(crate) limit: LimitArgs,
}

/// `kagzi schedule update`.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// The schedule's id or name.
    pub(crate) schedule: String,
    /// A new workflow.
    #[arg(long, short)]
    pub(crate) workflow: Option<String>,
    /// A new queue.
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
    /// A new cron expression.
    #[arg(long)]
    pub(crate) cron: Option<String>,
    /// A new time zone.
    #[arg(long, visible_alias = "tz")]
    pub(crate) time_zone: Option<String>,
    /// A new input for the runs to come: JSON, @FILE, or -.
    #[arg(long, short, value_name = "JSON|@FILE|-", value_parser = value::json)]
    pub(crate) input: Option<JsonArg>,
    /// A new retry count.
    #[arg(long)]
    pub(crate) retries: Option<u32>,
    /// A new overlap policy.
    #[arg(long, value_enum)]
    pub(crate) overlap: Option<OverlapArg>,
    /// A new catch-up window.
    #[arg(long, value_name = "DURATION", value_parser = value::duration, conflicts_with = "no_catch_up_window")]
    pub(crate) catch_up_window: Option<Duration>,
    /// Remove the catch-up window (missed due times of any age catch up).
    #[arg(long)]
    pub(crate) no_catch_up_window: bool,
    /// A new catch-up maximum.
    #[arg(long)]
    pub(crate) catch_up_max: Option<u32>,
}

/// `kagzi schedule runs`.
#[derive(Debug, Args)]
pub(crate) struct ScheduleRunsArgs {
    /// The schedule's id or name.
    pub(crate) schedule: String,
    /// Only runs in this status.
    #[arg(long, short, value_enum)]
    pub(crate) status: Option<StatusArg>,
    #[command(flatten)]
    pub(crate) limit: LimitArgs,
}
