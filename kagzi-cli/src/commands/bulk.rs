//! `kagzi run cancel` and `kagzi run retry`: runs by id, or every run a filter matches —
//! shown first, then confirmed (a question on a terminal, `--yes` otherwise), or only shown
//! (`--dry-run`).

use std::io::{BufRead, IsTerminal, Write};

use chrono::Utc;
use kagzi_proto::{Run, RunId, RunStatus};
use serde_json::json;

use super::page::{MAX_PAGE, Pages};
use super::run::{filter, matching};
use crate::args::run::BulkArgs;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::output::{Output, Paint, tables};

/// What a bulk command does to each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// `POST /v1/runs/{id}/cancel`, for runs that have not ended.
    Cancel,
    /// `POST /v1/runs/{id}/retry`, for runs that failed or were cancelled.
    Retry,
}

impl Action {
    /// The verb, as a question asks it.
    fn verb(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Retry => "retry",
        }
    }

    /// The verb in the past, as a report says it (and the JSON key of the runs changed).
    fn done(self) -> &'static str {
        match self {
            Action::Cancel => "cancelled",
            Action::Retry => "retried",
        }
    }

    /// Whether a run in `status` is one this action changes.
    fn applies_to(self, status: RunStatus) -> bool {
        match self {
            Action::Cancel => !status.is_terminal(),
            Action::Retry => matches!(status, RunStatus::Failed | RunStatus::Cancelled),
        }
    }

    /// What the runs it changes have in common, for "no run that … matches".
    fn eligible(self) -> &'static str {
        match self {
            Action::Cancel => "has not ended",
            Action::Retry => "failed or was cancelled",
        }
    }

    /// Does it to run `id`.
    async fn apply(self, id: RunId, client: &Client) -> Result<Run> {
        match self {
            Action::Cancel => client.cancel(id).await,
            Action::Retry => client.retry(id).await,
        }
    }
}

/// Runs `kagzi run cancel` or `kagzi run retry`.
pub(crate) async fn execute(
    action: Action,
    args: &BulkArgs,
    client: &Client,
    out: &Output,
) -> Result<()> {
    match (args.ids.is_empty(), args.filter.is_set()) {
        (false, true) => Err(Error::Usage(
            "give run ids or a filter, not both".to_owned(),
        )),
        (true, false) => Err(Error::Usage(format!(
            "name the runs to {}, or a filter that matches them (--workflow, --status, \
             --queue, --schedule, --parent, --since, --until)",
            action.verb()
        ))),
        (false, false) if args.dry_run || args.limit.is_some() => Err(Error::Usage(
            "--dry-run and --limit go with a filter, not with run ids".to_owned(),
        )),
        (false, false) => by_id(action, &args.ids, client, out).await,
        (true, true) => by_filter(action, args, client, out).await,
    }
}

/// Does `action` to each of `ids`, stopping at the first refusal.
async fn by_id(action: Action, ids: &[RunId], client: &Client, out: &Output) -> Result<()> {
    let mut runs = Vec::with_capacity(ids.len());
    for &id in ids {
        let run = action.apply(id, client).await?;
        if out.is_table() {
            out.print(&format!(
                "{} run {} ({})",
                capitalized(action.done()),
                run.id,
                out.paint(run.status, Paint::status(run.status))
            ))?;
        }
        runs.push(run);
    }
    if out.is_table() {
        return Ok(());
    }
    match runs.as_slice() {
        [run] => out.json(run),
        runs => out.list(&runs, runs, "", || out.table(&[])),
    }
}

/// Does `action` to the runs the filter matches, once shown and confirmed. With `-o json`
/// it prints `{"dry_run", "matched": [Run], "<done>": [id], "already_ended"|"skipped": [id]}`.
async fn by_filter(action: Action, args: &BulkArgs, client: &Client, out: &Output) -> Result<()> {
    let filter = filter(&args.filter, client).await?;
    let most = args
        .limit
        .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
    // Ask only for runs in a status the action changes, status by status, rather than page
    // through every other run the filter matches too.
    let statuses: Vec<RunStatus> = match filter.status {
        Some(status) => vec![status],
        None => RunStatus::ALL.to_vec(),
    };
    let mut matched = Vec::new();
    for status in statuses.into_iter().filter(|s| action.applies_to(*s)) {
        let mut filter = filter.clone();
        filter.status = Some(status);
        let pages = Pages {
            most,
            size: MAX_PAGE,
        };
        matched.extend(matching(&filter, pages, client).await?.runs);
    }
    // Newest first, as lists are; a run that moved between statuses meanwhile, once.
    matched.sort_by_key(|run| std::cmp::Reverse(run.id));
    matched.dedup_by_key(|run| run.id);
    if let Some(most) = most {
        matched.truncate(most);
    }
    // A run that changed between the listing and the action is skipped, not an error.
    let skipped_key = match action {
        Action::Cancel => "already_ended",
        Action::Retry => "skipped",
    };
    let report = |matched: &[Run], done: &[RunId], skipped: &[RunId]| {
        json!({
            "dry_run": args.dry_run,
            "matched": matched,
            action.done(): done,
            skipped_key: skipped,
        })
    };
    if matched.is_empty() {
        return out.one(&report(&[], &[], &[]), || {
            format!(
                "No run that {} matches; nothing to {}.",
                action.eligible(),
                action.verb()
            )
        });
    }
    let count = plural(matched.len());
    if args.dry_run {
        return out.one(&report(&matched, &[], &[]), || {
            format!(
                "{}\n\nDry run: would {} {count}; nothing was changed.",
                tables::runs(out, &matched, Utc::now()).trim_fmt(),
                action.verb()
            )
        });
    }
    if !args.yes {
        confirm(action, out, &matched, &count)?;
    }
    let (mut done, mut skipped) = (Vec::new(), Vec::new());
    for run in &matched {
        match action.apply(run.id, client).await {
            Ok(_) => done.push(run.id),
            Err(Error::Api(problem)) if matches!(problem.status, 404 | 409) => {
                skipped.push(run.id);
            }
            Err(e) => {
                out.note(&format!(
                    "{} {} before this error:",
                    capitalized(action.done()),
                    plural(done.len())
                ));
                return Err(e);
            }
        }
    }
    out.one(&report(&matched, &done, &skipped), || {
        let mut text = format!("{} {}.", capitalized(action.done()), plural(done.len()));
        if !skipped.is_empty() {
            let why = match action {
                Action::Cancel => "ended on its own first",
                Action::Retry => "changed before it could be retried",
            };
            text.push_str(&format!(" {} {why}.", plural(skipped.len())));
        }
        text
    })
}

/// `cancelled` → `Cancelled`.
fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// Shows the runs and asks whether to act on them, on the terminal.
///
/// # Errors
/// [`Error::Usage`] when standard input is not a terminal (so nobody can answer: pass
/// `--yes`), [`Error::Declined`] for any answer but yes.
fn confirm(action: Action, out: &Output, runs: &[Run], count: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "the filter matches {count}: pass --yes to {} them, or --dry-run to only \
             list them (standard input is not a terminal, so kagzi cannot ask)",
            action.verb()
        )));
    }
    eprintln!("{}\n", tables::runs(out, runs, Utc::now()).trim_fmt());
    eprint!("{} {count}? [y/N] ", capitalized(action.verb()));
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("standard input", e))?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        Err(Error::Declined(format!("nothing was {}", action.done())))
    }
}

/// `1 run`, `3 runs`.
fn plural(n: usize) -> String {
    if n == 1 {
        "1 run".to_owned()
    } else {
        format!("{n} runs")
    }
}
