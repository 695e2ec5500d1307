//! What each command does: one module per resource, plus the in-process server.

mod bulk;
mod page;
mod run;
mod schedule;
mod server;
mod wait;

pub(crate) use page::Pages;

use chrono::Utc;
use clap::CommandFactory;
use kagzi_proto::{WorkerFilter, WorkerPage};

use crate::args::{
    Cli, Command, CompletionsArgs, HealthArgs, PatchCommand, PatchStatusArgs, QueueCommand,
    WorkerCommand, WorkerListArgs,
};
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{Output, tables};

/// Runs the command `cli` names.
///
/// # Errors
/// Whatever made the command fail; its [`exit_code`](crate::error::Error::exit_code) is the
/// process's.
pub(crate) async fn execute(cli: Cli) -> Result<()> {
    let out = Output::detect(cli.global.output, cli.global.no_color);
    let client = || Client::new(&cli.global.server, cli.global.api_key());
    match cli.command {
        Command::Dev(args) => server::dev(&args, &cli.global, &out).await,
        Command::Server(args) => server::serve(args.config, &out).await,
        Command::Run(command) => run::execute(command, &client()?, &out).await,
        Command::Schedule(command) => schedule::execute(command, &client()?, &out).await,
        Command::Worker(WorkerCommand::List(args)) => workers(&args, &client()?, &out).await,
        Command::Queue(QueueCommand::List) => {
            let list = client()?.queues().await?;
            out.list(&list, &list.queues, "No queues.", || {
                tables::queues(&out, &list)
            })
        }
        Command::Patch(PatchCommand::Status(args)) => patch_status(&args, &client()?, &out).await,
        Command::Health(args) => health(&args, &client()?, &out).await,
        Command::Completions(CompletionsArgs { shell }) => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kagzi", &mut script);
            out.print(String::from_utf8_lossy(&script).trim_end())
        }
    }
}

/// `kagzi worker list`.
async fn workers(args: &WorkerListArgs, client: &Client, out: &Output) -> Result<()> {
    let (workers, next_cursor) = page::collect(args.limit.pages(), async |cursor, limit| {
        let filter = WorkerFilter {
            queue: args.queue.clone(),
            status: args.status.map(Into::into),
            limit: Some(limit),
            cursor,
        };
        let page = client.workers(&filter).await?;
        Ok((page.workers, page.next_cursor))
    })
    .await?;
    let page = WorkerPage {
        workers,
        next_cursor,
    };
    out.list(&page, &page.workers, "No workers.", || {
        tables::workers(out, &page.workers, Utc::now())
    })
}

/// `kagzi patch status`: with `--check`, exits 1 while some run may need the old branch.
async fn patch_status(args: &PatchStatusArgs, client: &Client, out: &Output) -> Result<()> {
    let usage = client.patch_usage(&args.workflow, &args.patch).await?;
    out.one(&usage, || {
        let verdict = if usage.safe_to_remove {
            "safe to remove: no run that has not ended needs the old branch".to_owned()
        } else {
            format!(
                "still needed: {} running on the old branch, {} that may still take it",
                usage.old_branch, usage.unmarked
            )
        };
        let first = usage.first_patched_at.map_or_else(
            || "no run has taken the new branch yet".to_owned(),
            |at| format!("first new-branch run {}", crate::output::human::time(at)),
        );
        format!(
            "Patch {} of {}: {verdict} ({first}).",
            usage.patch, usage.workflow
        )
    })?;
    if args.check && !usage.safe_to_remove {
        return Err(Error::CheckFailed(format!(
            "patch {} of {} is still needed",
            usage.patch, usage.workflow
        )));
    }
    Ok(())
}

/// `kagzi health`: exits 0 when the server answers healthy, 5 when it cannot be reached.
async fn health(args: &HealthArgs, client: &Client, out: &Output) -> Result<()> {
    let health = client.health(args.ready).await?;
    out.one(&health, || {
        let what = if args.ready { "ready" } else { "healthy" };
        format!(
            "{} is {what} ({})",
            client.base().as_str().trim_end_matches('/'),
            health.status
        )
    })
}
