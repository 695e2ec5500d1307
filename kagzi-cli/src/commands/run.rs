//! `kagzi run ...`: start, list, show, signal and count runs (waiting is in `wait`,
//! cancelling in `cancel`).

use chrono::Utc;
use kagzi_proto::{ForkRun, Run, RunFilter, RunPage, ScheduleId, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bulk::{self, Action};
use super::page::{self, Pages};
use super::wait;
use crate::args::run::{
    DeleteArgs, FilterArgs, ForkArgs, ListArgs, RunCommand, RunIdArg, SignalArgs, StartArgs,
};
use crate::client::Client;
use crate::error::Result;
use crate::output::{Output, tables};

/// Runs one `kagzi run` command.
pub(crate) async fn execute(command: RunCommand, client: &Client, out: &Output) -> Result<()> {
    match command {
        RunCommand::Start(args) => start(&args, client, out).await,
        RunCommand::List(args) => list(&args, client, out).await,
        RunCommand::Show(RunIdArg { id }) => show(id, client, out).await,
        RunCommand::Result(args) => wait::result(&args, client, out).await,
        RunCommand::Watch(args) => wait::watch(&args, client, out).await,
        RunCommand::Cancel(args) => bulk::execute(Action::Cancel, &args, client, out).await,
        RunCommand::Retry(args) => bulk::execute(Action::Retry, &args, client, out).await,
        RunCommand::Fork(args) => fork(&args, client, out).await,
        RunCommand::Delete(args) => delete(&args, client, out).await,
        RunCommand::Signal(args) => signal(&args, client, out).await,
        RunCommand::Signals(RunIdArg { id }) => signals(id, client, out).await,
        RunCommand::Counts(args) => counts(&args, client, out).await,
    }
}

/// `kagzi run start`: prints the new run's id, or with `--wait` its result.
async fn start(args: &StartArgs, client: &Client, out: &Output) -> Result<()> {
    let input = match &args.input {
        Some(input) => input.read("--input")?,
        None => Value::Null,
    };
    let started = client.start_run(&args.to_start(input)).await?;
    if args.wait {
        if out.is_table() {
            out.note(&format!(
                "Started run {}; waiting for it to end…",
                started.id
            ));
        }
        return wait::until_ended_and_print(started.id, None, client, out).await;
    }
    out.one(&started, || {
        format!(
            "Started run {} ({})",
            started.id,
            out.paint(started.status, crate::output::Paint::status(started.status))
        )
    })
}

/// The protocol filter for `args`: a schedule given by name is looked up for its id.
///
/// # Errors
/// When the schedule named does not exist.
pub(crate) async fn filter(args: &FilterArgs, client: &Client) -> Result<RunFilter> {
    let schedule_id = match &args.schedule {
        None => None,
        Some(key) => Some(match key.parse::<ScheduleId>() {
            Ok(id) => id,
            Err(_) => client.schedule(key).await?.id,
        }),
    };
    Ok(RunFilter {
        workflow: args.workflow.clone(),
        queue: args.queue.clone(),
        status: args.status.map(Into::into),
        schedule_id,
        parent_id: args.parent,
        idempotency_key: args.idempotency_key.clone(),
        created_after: args.since,
        created_before: args.until,
        limit: None,
        cursor: None,
    })
}

/// The runs `filter` matches, as many as `pages` says, following pages, with the cursor to
/// go on from.
///
/// # Errors
/// When a page cannot be read.
pub(crate) async fn matching(filter: &RunFilter, pages: Pages, client: &Client) -> Result<RunPage> {
    let (runs, next_cursor) = page::collect(pages, async |cursor, limit| {
        let mut filter = filter.clone();
        filter.cursor = cursor;
        filter.limit = Some(limit);
        let page = client.runs(&filter).await?;
        Ok((page.runs, page.next_cursor))
    })
    .await?;
    Ok(RunPage { runs, next_cursor })
}

/// `kagzi run list`.
async fn list(args: &ListArgs, client: &Client, out: &Output) -> Result<()> {
    let filter = filter(&args.filter, client).await?;
    let page = matching(&filter, args.limit.pages(), client).await?;
    let result = out.list(&page, &page.runs, "No runs.", || {
        tables::runs(out, &page.runs, Utc::now())
    });
    if out.is_table() && page.next_cursor.is_some() {
        out.note(&format!(
            "(more runs: show them with --limit {} or --all)",
            page.runs.len().saturating_mul(2).min(1_000)
        ));
    }
    result
}

/// A run and its journal: what `kagzi run show -o json` prints. The run's own fields are at
/// the top level, so it reads as a [`Run`] too.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub(crate) run: Run,
    /// Its steps, in position order.
    pub(crate) steps: Vec<Step>,
}

/// `kagzi run show`.
async fn show(id: kagzi_proto::RunId, client: &Client, out: &Output) -> Result<()> {
    let (run, steps) = tokio::try_join!(client.run(id), client.steps(id))?;
    let detail = RunDetail {
        run,
        steps: steps.steps,
    };
    out.one(&detail, || {
        tables::run_detail(out, &detail.run, &detail.steps, Utc::now())
    })
}

/// `kagzi run fork`: prints the new run's id.
async fn fork(args: &ForkArgs, client: &Client, out: &Output) -> Result<()> {
    let fork = ForkRun {
        from_step: args.from_step.clone(),
        input: args.input.as_ref().map(|i| i.read("--input")).transpose()?,
        queue: args.queue.clone(),
    };
    let run = client.fork(args.id, &fork).await?;
    out.one(&run, || {
        let from = args.from_step.as_deref().map_or_else(
            || "from the start".to_owned(),
            |key| format!("from step {key}"),
        );
        format!("Forked run {} {from} as run {}", args.id, run.id)
    })
}

/// `kagzi run delete`: stops at the first run that cannot be deleted.
async fn delete(args: &DeleteArgs, client: &Client, out: &Output) -> Result<()> {
    for &id in &args.ids {
        client.delete_run(id).await?;
        if out.is_table() {
            out.print(&format!("Deleted run {id}"))?;
        }
    }
    if out.is_table() {
        return Ok(());
    }
    out.json(&serde_json::json!({ "deleted": args.ids }))
}

/// `kagzi run signal`.
async fn signal(args: &SignalArgs, client: &Client, out: &Output) -> Result<()> {
    let payload = match &args.data {
        Some(data) => data.read("--data")?,
        None => Value::Null,
    };
    let sent = client.signal(args.id, &args.name, &payload).await?;
    out.one(&sent, || {
        format!("Sent signal {} to run {}", sent.name, sent.run_id)
    })
}

/// `kagzi run signals`.
async fn signals(id: kagzi_proto::RunId, client: &Client, out: &Output) -> Result<()> {
    let list = client.signals(id).await?;
    out.list(&list, &list.signals, "No signals.", || {
        tables::signals(out, &list.signals, Utc::now())
    })
}

/// `kagzi run counts`.
async fn counts(args: &FilterArgs, client: &Client, out: &Output) -> Result<()> {
    let filter = filter(args, client).await?;
    let counts = client.run_counts(&filter).await?;
    out.one(&counts, || tables::counts(out, &counts).trim_fmt())
}
