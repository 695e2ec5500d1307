//! `kagzi run ...`: the arguments of every run command.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use kagzi_proto::{RunId, StartRun};

use super::value::{self, JsonArg, StatusArg};
use crate::commands::Pages;

/// Start, list, inspect, wait for, follow, cancel and signal runs.
#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Start a run of WORKFLOW.
    Start(StartArgs),
    /// List runs, newest first (follows pages up to --limit).
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show a run: status, times, input, output or error, and its steps with durations.
    Show(RunIdArg),
    /// Wait until a run ends and print its output (exit 6 if it failed or was cancelled).
    Result(ResultArgs),
    /// Follow a run step by step until it ends.
    Watch(WatchArgs),
    /// Cancel runs: by id, or every run a filter matches (asks first; --yes, --dry-run).
    Cancel(BulkArgs),
    /// Retry failed or cancelled runs as the same runs, their finished steps kept: by id, or
    /// every failed or cancelled run a filter matches (asks first; --yes, --dry-run).
    Retry(BulkArgs),
    /// Fork a run: a new run of its workflow that copies the steps before --from-step and
    /// runs that step and the rest again.
    Fork(ForkArgs),
    /// Delete ended runs, with their steps and signals.
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Send a signal to a run.
    Signal(SignalArgs),
    /// List the signals sent to a run.
    Signals(RunIdArg),
    /// Count runs by status.
    Counts(FilterArgs),
}

/// One run, by id.
#[derive(Debug, Args)]
pub(crate) struct RunIdArg {
    /// The run's id.
    pub(crate) id: RunId,
}

/// `kagzi run start`.
#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The workflow's name, as the workers registered it.
    pub(crate) workflow: String,
    /// The input: JSON, @FILE, or - to read standard input (default null).
    #[arg(long, short, value_name = "JSON|@FILE|-", value_parser = value::json)]
    pub(crate) input: Option<JsonArg>,
    /// The queue the run waits on.
    #[arg(long, short, default_value = kagzi_proto::DEFAULT_QUEUE)]
    pub(crate) queue: String,
    /// How many times a failed run is retried.
    #[arg(long, default_value_t = 0)]
    pub(crate) retries: u32,
    /// A key that makes the start idempotent: the same key returns the same run.
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,
    /// Start no earlier than this from now (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = value::duration)]
    pub(crate) delay: Option<Duration>,
    /// Fail the run once this long passed since its start, whatever it is doing.
    #[arg(long, value_name = "DURATION", value_parser = value::duration)]
    pub(crate) timeout: Option<Duration>,
    /// Wait until the run ends and print its output, as `kagzi run result` does.
    #[arg(long, short)]
    pub(crate) wait: bool,
}

impl StartArgs {
    /// The start request, with `input` read already.
    pub(crate) fn to_start(&self, input: serde_json::Value) -> StartRun {
        let mut start = StartRun::new(&self.workflow, &self.queue, input);
        start.retries = self.retries;
        start.idempotency_key = self.idempotency_key.clone();
        start.delay_ms = self.delay.map_or(0, value::millis);
        start.timeout_ms = self.timeout.map(value::millis);
        start
    }
}

/// Which runs: the filters of `GET /v1/runs`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct FilterArgs {
    /// Only runs in this status.
    #[arg(long, short, value_enum)]
    pub(crate) status: Option<StatusArg>,
    /// Only runs of this workflow.
    #[arg(long, short)]
    pub(crate) workflow: Option<String>,
    /// Only runs on this queue.
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
    /// Only the children of this run.
    #[arg(long, value_name = "RUN_ID")]
    pub(crate) parent: Option<RunId>,
    /// Only runs started by this schedule (its id or name).
    #[arg(long, value_name = "SCHEDULE")]
    pub(crate) schedule: Option<String>,
    /// Only runs started with this idempotency key.
    #[arg(long, value_name = "KEY")]
    pub(crate) idempotency_key: Option<String>,
    /// Only runs created at or after this time: RFC 3339, a date, or how long ago (2h).
    #[arg(long, value_name = "TIME", value_parser = value::time)]
    pub(crate) since: Option<DateTime<Utc>>,
    /// Only runs created before this time: RFC 3339, a date, or how long ago (30m).
    #[arg(long, value_name = "TIME", value_parser = value::time)]
    pub(crate) until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    /// Whether any filter is set.
    pub(crate) fn is_set(&self) -> bool {
        self.status.is_some()
            || self.workflow.is_some()
            || self.queue.is_some()
            || self.parent.is_some()
            || self.schedule.is_some()
            || self.idempotency_key.is_some()
            || self.since.is_some()
            || self.until.is_some()
    }
}

/// How many items a list shows.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct LimitArgs {
    /// Show at most this many (following pages as needed).
    #[arg(long, short = 'n', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: u32,
    /// Show all of them, however many pages.
    #[arg(long, conflicts_with = "limit")]
    pub(crate) all: bool,
    /// How many items to ask the server for at a time (its limit is 1000).
    #[arg(long, hide = true, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) page_size: u32,
}

impl LimitArgs {
    /// How many items to show, and to ask for at a time.
    pub(crate) fn pages(&self) -> Pages {
        Pages {
            most: (!self.all).then(|| usize::try_from(self.limit).unwrap_or(usize::MAX)),
            size: self.page_size,
        }
    }
}

/// `kagzi run list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    #[command(flatten)]
    pub(crate) limit: LimitArgs,
}

/// `kagzi run result`.
#[derive(Debug, Args)]
pub(crate) struct ResultArgs {
    /// The run's id.
    pub(crate) id: RunId,
    /// Stop waiting after this long (exit 7); by default wait until the run ends.
    #[arg(long, value_name = "DURATION", value_parser = value::duration)]
    pub(crate) timeout: Option<Duration>,
}

/// `kagzi run watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// The run's id.
    pub(crate) id: RunId,
    /// How often to look for new steps.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = value::duration)]
    pub(crate) interval: Duration,
}

/// `kagzi run cancel` and `kagzi run retry`.
#[derive(Debug, Args)]
pub(crate) struct BulkArgs {
    /// The runs to act on; or give a filter instead to act on every run it matches.
    pub(crate) ids: Vec<RunId>,
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Act on at most this many of the matching runs (newest first).
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: Option<u32>,
    /// Act without asking.
    #[arg(long, short)]
    pub(crate) yes: bool,
    /// Only show which runs would be changed; change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub(crate) dry_run: bool,
}

/// `kagzi run fork`.
#[derive(Debug, Args)]
pub(crate) struct ForkArgs {
    /// The run to fork (it is not changed).
    pub(crate) id: RunId,
    /// The step to run again, and everything after it; the steps before it are copied.
    /// Without it, the fork runs from the start.
    #[arg(long, value_name = "KEY")]
    pub(crate) from_step: Option<String>,
    /// The fork's input: JSON, @FILE, or - to read standard input (default: the original's).
    #[arg(long, short, value_name = "JSON|@FILE|-", value_parser = value::json)]
    pub(crate) input: Option<JsonArg>,
    /// The fork's queue (default: the original's).
    #[arg(long, short)]
    pub(crate) queue: Option<String>,
}

/// `kagzi run delete`.
#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// The runs to delete; each must have ended.
    #[arg(required = true)]
    pub(crate) ids: Vec<RunId>,
}

/// `kagzi run signal`.
#[derive(Debug, Args)]
pub(crate) struct SignalArgs {
    /// The run's id.
    pub(crate) id: RunId,
    /// The signal's name, as the workflow waits for it.
    pub(crate) name: String,
    /// The payload: JSON, @FILE, or - to read standard input (default null).
    #[arg(long, short, value_name = "JSON|@FILE|-", value_parser = value::json)]
    pub(crate) data: Option<JsonArg>,
}
