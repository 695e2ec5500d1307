//! `kagzi schedule ...`: create, list, show, change, pause, resume, trigger and delete
//! schedules, and list the runs they started.

use chrono::Utc;
use kagzi_proto::{CreateSchedule, RunPage, ScheduleFilter, ScheduleRunsQuery, UpdateSchedule};
use serde_json::Value;

use super::page;
use crate::args::schedule::{
    CreateArgs, ScheduleArg, ScheduleCommand, ScheduleListArgs, ScheduleRunsArgs, UpdateArgs,
};
use crate::args::value::millis;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{Output, Paint, tables};

/// Runs one `kagzi schedule` command.
pub(crate) async fn execute(command: ScheduleCommand, client: &Client, out: &Output) -> Result<()> {
    match command {
        ScheduleCommand::Create(args) => create(&args, client, out).await,
        ScheduleCommand::List(args) => list(&args, client, out).await,
        ScheduleCommand::Show(ScheduleArg { schedule }) => {
            let schedule = client.schedule(&schedule).await?;
            out.one(&schedule, || {
                tables::schedule_detail(out, &schedule, Utc::now())
            })
        }
        ScheduleCommand::Update(args) => update(&args, client, out).await,
        ScheduleCommand::Pause(ScheduleArg { schedule }) => {
            pause(&schedule, true, client, out).await
        }
        ScheduleCommand::Resume(ScheduleArg { schedule }) => {
            pause(&schedule, false, client, out).await
        }
        ScheduleCommand::Trigger(ScheduleArg { schedule }) => {
            let triggered = client.trigger_schedule(&schedule).await?;
            out.one(&triggered, || {
                format!(
                    "Triggered schedule {schedule}: started run {} ({})",
                    triggered.id,
                    out.paint(triggered.status, Paint::status(triggered.status))
                )
            })
        }
        ScheduleCommand::Delete(ScheduleArg { schedule }) => {
            client.delete_schedule(&schedule).await?;
            if out.is_table() {
                out.print(&format!(
                    "Deleted schedule {schedule}; the runs it started stay."
                ))?;
            }
            Ok(())
        }
        ScheduleCommand::Runs(args) => runs(&args, client, out).await,
    }
}

/// `kagzi schedule create`.
async fn create(args: &CreateArgs, client: &Client, out: &Output) -> Result<()> {
    let input = match &args.input {
        Some(input) => input.read("--input")?,
        None => Value::Null,
    };
    let mut create = CreateSchedule::new(&args.workflow, &args.queue, &args.cron, input);
    create.id = args.id;
    create.name = args.name.clone();
    create.time_zone = args.time_zone.clone();
    create.retries = args.retries;
    create.overlap = args.overlap.into();
    create.catch_up_window_ms = args.catch_up_window.map(millis);
    create.catch_up_max = args.catch_up_max;
    create.paused = args.paused;
    let schedule = client.create_schedule(&create).await?;
    out.one(&schedule, || {
        let next = schedule.next_fire_at.map_or_else(
            || "paused".to_owned(),
            |at| {
                format!(
                    "next run {}",
                    crate::output::human::relative(at, Utc::now())
                )
            },
        );
        format!(
            "Created schedule {}{} ({next})",
            schedule.id,
            schedule
                .name
                .as_ref()
                .map(|name| format!(" {name:?}"))
                .unwrap_or_default()
        )
    })
}

/// `kagzi schedule list`.
async fn list(args: &ScheduleListArgs, client: &Client, out: &Output) -> Result<()> {
    let paused = match (args.paused, args.active) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let (schedules, next_cursor) = page::collect(args.limit.pages(), async |cursor, limit| {
        let filter = ScheduleFilter {
            workflow: args.workflow.clone(),
            queue: args.queue.clone(),
            paused,
            limit: Some(limit),
            cursor,
        };
        let page = client.schedules(&filter).await?;
        Ok((page.schedules, page.next_cursor))
    })
    .await?;
    let page = kagzi_proto::SchedulePage {
        schedules,
        next_cursor,
    };
    out.list(&page, &page.schedules, "No schedules.", || {
        tables::schedules(out, &page.schedules, Utc::now())
    })
}

/// `kagzi schedule update`.
async fn update(args: &UpdateArgs, client: &Client, out: &Output) -> Result<()> {
    let update = UpdateSchedule {
        workflow: args.workflow.clone(),
        queue: args.queue.clone(),
        cron: args.cron.clone(),
        time_zone: args.time_zone.clone(),
        input: args
            .input
            .as_ref()
            .map(|input| input.read("--input"))
            .transpose()?,
        retries: args.retries,
        overlap: args.overlap.map(Into::into),
        catch_up_window_ms: match (args.catch_up_window, args.no_catch_up_window) {
            (Some(window), _) => Some(Some(millis(window))),
            (None, true) => Some(None),
            (None, false) => None,
        },
        catch_up_max: args.catch_up_max,
    };
    if update == UpdateSchedule::default() {
        return Err(Error::Usage(
            "say what to change: --cron, --time-zone, --input, --workflow, --queue, --retries, \
             --overlap, --catch-up-window, --no-catch-up-window or --catch-up-max"
                .to_owned(),
        ));
    }
    let schedule = client.update_schedule(&args.schedule, &update).await?;
    out.one(&schedule, || {
        format!(
            "Updated schedule {} (version {})",
            args.schedule, schedule.version
        )
    })
}

/// `kagzi schedule pause` and `resume`.
async fn pause(key: &str, pause: bool, client: &Client, out: &Output) -> Result<()> {
    let schedule = client.pause_schedule(key, pause).await?;
    out.one(&schedule, || {
        if pause {
            format!("Paused schedule {key}")
        } else {
            let next = schedule.next_fire_at.map_or_else(String::new, |at| {
                format!(
                    "; next run {}",
                    crate::output::human::relative(at, Utc::now())
                )
            });
            format!("Resumed schedule {key}{next}")
        }
    })
}

/// `kagzi schedule runs`.
async fn runs(args: &ScheduleRunsArgs, client: &Client, out: &Output) -> Result<()> {
    let (runs, next_cursor) = page::collect(args.limit.pages(), async |cursor, limit| {
        let query = ScheduleRunsQuery {
            status: args.status.map(Into::into),
            limit: Some(limit),
            cursor,
        };
        let page = client.schedule_runs(&args.schedule, &query).await?;
        Ok((page.runs, page.next_cursor))
    })
    .await?;
    let page = RunPage { runs, next_cursor };
    out.list(&page, &page.runs, "No runs.", || {
        tables::runs(out, &page.runs, Utc::now())
    })
}
