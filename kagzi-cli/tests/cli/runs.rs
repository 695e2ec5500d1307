//! `kagzi run ...` against a real server and worker.

use std::collections::BTreeSet;
use std::time::Duration;

use kagzi_proto::{Run, RunId, RunPage, RunStatus, SignalSent, Started, StepList};
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{QUEUE, TestDb, eventually, kagzi, start_worker, url};

both_stores!(
    a_run_starts_lists_shows_and_gives_its_result_as_tables_and_json,
    input_comes_from_a_file_or_standard_input,
    a_failed_run_exits_6_with_its_error,
    a_wait_that_runs_out_exits_7,
    watch_follows_a_run_step_by_step_until_it_ends,
    a_signal_reaches_the_waiting_run,
    cancel_by_id_and_again_is_a_conflict,
    list_follows_cursors_up_to_the_limit,
    a_bulk_cancel_shows_first_and_cancels_exactly_the_matching_runs,
    a_bulk_cancel_at_a_terminal_asks_first,
    a_terminal_gets_a_coloured_table_unless_told_otherwise,
);

async fn a_run_starts_lists_shows_and_gives_its_result_as_tables_and_json(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);

    let started: Started = cli
        .run(&[
            "run",
            "start",
            "greet",
            "-q",
            QUEUE,
            "-i",
            r#"{"name": "Ada"}"#,
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let id = started.id.to_string();

    // The result as a table is the output itself, pretty JSON.
    let result = cli.run(&["run", "result", &id, "-o", "table"]).await.ok();
    let output: Value = result.json();
    assert_eq!(output, json!({"message": "HELLO, ADA!"}));
    let run: Run = cli
        .run(&["run", "result", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!((run.id, run.status), (started.id, RunStatus::Completed));

    let show = cli.run(&["run", "show", &id, "-o", "table"]).await.ok();
    for expected in [
        id.as_str(),
        "completed",
        "greet",
        "Steps",
        "compose",
        "shout",
        r#""Hello, Ada!""#,
        "TOOK",
    ] {
        assert!(
            show.stdout.contains(expected),
            "{expected:?} not in:\n{}",
            show.stdout
        );
    }
    // The JSON is the run with its steps: it reads as a Run and as a StepList.
    let shown = cli.run(&["run", "show", &id, "-o", "json"]).await.ok();
    let run: Run = shown.json();
    assert_eq!(run.output, Some(json!({"message": "HELLO, ADA!"})));
    let steps: StepList = shown.json();
    let keys: Vec<&str> = steps.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["compose", "shout"]);

    let list = cli
        .run(&["run", "list", "--workflow", "greet", "-o", "table"])
        .await
        .ok();
    let row = list
        .stdout
        .lines()
        .find(|line| line.contains(&id))
        .expect("the run is listed");
    assert!(row.contains("completed") && row.contains(QUEUE), "{row}");
    assert!(list.stdout.starts_with("ID "), "{}", list.stdout);
    let page: RunPage = cli.run(&["run", "list", "-o", "json"]).await.ok().json();
    assert_eq!(
        page.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [started.id]
    );
    assert_eq!(page.next_cursor, None);
    let lines: Vec<Run> = cli
        .run(&["run", "list", "-o", "jsonl"])
        .await
        .ok()
        .json_lines();
    assert_eq!(lines.len(), 1);
    // Piped, without -o, the output is JSON.
    let _: RunPage = cli.run(&["run", "list"]).await.ok().json();

    // --wait prints the result as `run result` would.
    let waited = cli
        .run(&[
            "run",
            "start",
            "greet",
            "-q",
            QUEUE,
            "-i",
            r#"{"name": "Bo"}"#,
            "--wait",
            "-o",
            "table",
        ])
        .await
        .ok();
    assert_eq!(waited.json::<Value>(), json!({"message": "HELLO, BO!"}));
    assert!(waited.stderr.contains("Started run"), "{}", waited.stderr);
    let message = cli
        .run(&["run", "start", "greet", "-q", "idle", "-o", "table"])
        .await
        .ok();
    assert!(
        message.stdout.starts_with("Started run ") && message.stdout.contains("(pending)"),
        "{}",
        message.stdout
    );
}

async fn input_comes_from_a_file_or_standard_input(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let file = std::env::temp_dir().join(format!("kagzi-cli-input-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, r#"{"from": "file"}"#).expect("write the input file");
    let at_file = format!("@{}", file.display());
    let from_file: Started = cli
        .run(&["run", "start", "greet", "-i", &at_file, "-o", "json"])
        .await
        .ok()
        .json();
    let _ = std::fs::remove_file(&file);
    let from_stdin: Started = kagzi(&url(&server))
        .stdin(r#"{"from": "stdin"}"#)
        .run(&["run", "start", "greet", "-i", "-", "-o", "json"])
        .await
        .ok()
        .json();
    for (started, from) in [(from_file, "file"), (from_stdin, "stdin")] {
        let run: Run = cli
            .run(&["run", "show", &started.id.to_string(), "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(run.input, json!({"from": from}));
    }
}

async fn a_failed_run_exits_6_with_its_error(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let failed = cli
        .run(&["run", "start", "fail", "-q", QUEUE, "--wait", "-o", "table"])
        .await
        .code(6);
    assert!(failed.stdout.is_empty(), "{failed:?}");
    assert!(
        failed.stderr.contains("failed") && failed.stderr.contains("boom"),
        "{}",
        failed.stderr
    );
    let id = failed
        .stderr
        .split_whitespace()
        .find_map(|word| word.parse::<RunId>().ok())
        .expect("the error names the run");
    // As JSON the run is printed too, and the exit code is the same.
    let run: Run = cli
        .run(&["run", "result", &id.to_string(), "-o", "json"])
        .await
        .code(6)
        .json();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(
        run.error.as_deref().is_some_and(|e| e.contains("boom")),
        "{run:?}"
    );
}

async fn a_wait_that_runs_out_exits_7(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    // No worker polls this queue: the run stays pending.
    let started: Started = cli
        .run(&["run", "start", "greet", "-q", "idle", "-o", "json"])
        .await
        .ok()
        .json();
    let waited = cli
        .run(&[
            "run",
            "result",
            &started.id.to_string(),
            "--timeout",
            "300ms",
        ])
        .await
        .code(7);
    assert!(
        waited.stderr.contains("has not ended") && waited.stderr.contains("pending"),
        "{}",
        waited.stderr
    );
}

async fn watch_follows_a_run_step_by_step_until_it_ends(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let started: Started = cli
        .run(&[
            "run",
            "start",
            "slow",
            "-q",
            QUEUE,
            "-i",
            r#"{"steps": 3, "ms": 150}"#,
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let id = started.id.to_string();
    let watched = cli
        .run(&["run", "watch", &id, "--interval", "100ms", "-o", "table"])
        .await
        .ok();
    let text = &watched.stdout;
    assert!(
        text.starts_with(&format!("Watching run {id} (slow on {QUEUE})")),
        "{text}"
    );
    let ticks: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("step #"))
        .collect();
    assert_eq!(ticks.len(), 3, "{text}");
    assert!(
        ticks[0].contains("step #0 tick") && ticks[2].contains("step #2 tick#3"),
        "{text}"
    );
    assert!(
        ticks
            .iter()
            .all(|line| line.contains("completed") && line.contains("took")),
        "{text}"
    );
    let last = text.lines().last().expect("a last line");
    assert!(
        last.contains("completed") && last.ends_with(": 3"),
        "{text}"
    );

    // As JSON lines: steps, then the end with the run.
    let events: Vec<Value> = cli
        .run(&["run", "watch", &id, "-o", "jsonl"])
        .await
        .ok()
        .json_lines();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["step", "step", "step", "end"]);
    let end: Run =
        serde_json::from_value(events[3]["run"].clone()).expect("the end carries the run");
    assert_eq!(end.status, RunStatus::Completed);

    // A run that fails ends the watch with exit 6.
    let failing: Started = cli
        .run(&["run", "start", "fail", "-q", QUEUE, "-o", "json"])
        .await
        .ok()
        .json();
    let watched = cli
        .run(&["run", "watch", &failing.id.to_string(), "-o", "table"])
        .await
        .code(6);
    assert!(
        watched.stdout.contains("failed") && watched.stdout.contains("boom"),
        "{watched:?}"
    );
}

async fn a_signal_reaches_the_waiting_run(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let started: Started = cli
        .run(&["run", "start", "approve", "-q", QUEUE, "-o", "json"])
        .await
        .ok()
        .json();
    let id = started.id.to_string();
    eventually(
        "the run waits for its signal",
        Duration::from_secs(10),
        || async {
            let run: Run = cli
                .run(&["run", "show", &id, "-o", "json"])
                .await
                .ok()
                .json();
            run.status == RunStatus::Waiting
        },
    )
    .await;
    let sent: SignalSent = cli
        .run(&[
            "run",
            "signal",
            &id,
            "approve",
            "--data",
            r#"{"by": "ada"}"#,
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!((sent.run_id, sent.name.as_str()), (started.id, "approve"));
    let output: Value = cli
        .run(&["run", "result", &id, "-o", "table"])
        .await
        .ok()
        .json();
    assert_eq!(output, json!({"by": "ada"}));
    // The run ended: a signal now is a conflict.
    let late = cli
        .run(&["run", "signal", &id, "approve", "-o", "table"])
        .await
        .code(4);
    assert!(late.stderr.contains("Conflict (409)"), "{}", late.stderr);
}

async fn cancel_by_id_and_again_is_a_conflict(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let started: Started = cli
        .run(&[
            "run", "start", "greet", "-q", "idle", "--delay", "1h", "-o", "json",
        ])
        .await
        .ok()
        .json();
    let id = started.id.to_string();
    let cancelled = cli.run(&["run", "cancel", &id, "-o", "table"]).await.ok();
    assert_eq!(
        cancelled.stdout.trim(),
        format!("Cancelled run {id} (cancelled)")
    );
    let again = cli.run(&["run", "cancel", &id]).await.code(4);
    assert_eq!(
        again.stderr.trim(),
        format!("error: Conflict (409): run {id} already ended as cancelled")
    );
    let run: Run = cli.run(&["run", "show", &id]).await.ok().json();
    assert_eq!(run.status, RunStatus::Cancelled);
}

async fn list_follows_cursors_up_to_the_limit(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let mut ids = Vec::new();
    for n in 0..7 {
        let input = format!(r#"{{"n": {n}}}"#);
        let started: Started = cli
            .run(&[
                "run", "start", "count", "-q", "idle", "-i", &input, "-o", "json",
            ])
            .await
            .ok()
            .json();
        ids.push(started.id);
    }
    ids.reverse(); // newest first, as lists are
    let five: RunPage = cli
        .run(&[
            "run",
            "list",
            "--limit",
            "5",
            "--page-size",
            "2",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(five.runs.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..5]);
    assert!(five.next_cursor.is_some(), "two more remain");
    let all: RunPage = cli
        .run(&["run", "list", "--all", "--page-size", "3", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(all.runs.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(all.next_cursor, None);
    let table = cli
        .run(&["run", "list", "-n", "2", "-o", "table"])
        .await
        .ok();
    assert_eq!(
        table.stdout.lines().count(),
        3,
        "a header and two runs: {}",
        table.stdout
    );
    assert!(table.stderr.contains("more runs"), "{}", table.stderr);
}

async fn a_bulk_cancel_shows_first_and_cancels_exactly_the_matching_runs(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let start = async |workflow: &str| -> RunId {
        let started: Started = cli
            .run(&["run", "start", workflow, "-q", "idle", "-o", "json"])
            .await
            .ok()
            .json();
        started.id
    };
    // Three pending runs to cancel, two pending runs of another workflow, and one of the
    // same workflow that already ended.
    let mut doomed = BTreeSet::new();
    for _ in 0..3 {
        doomed.insert(start("batch").await);
    }
    let kept = [start("keep").await, start("keep").await];
    let ended = start("batch").await;
    cli.run(&["run", "cancel", &ended.to_string()]).await.ok();
    let statuses = async || -> Vec<(RunId, RunStatus)> {
        let page: RunPage = cli
            .run(&["run", "list", "--all", "-o", "json"])
            .await
            .ok()
            .json();
        page.runs.iter().map(|r| (r.id, r.status)).collect()
    };
    let before = statuses().await;

    // --dry-run shows what it would touch and changes nothing.
    let dry = cli
        .run(&[
            "run",
            "cancel",
            "--workflow",
            "batch",
            "--dry-run",
            "-o",
            "json",
        ])
        .await
        .ok();
    let dry: Value = dry.json();
    assert_eq!(dry["dry_run"], json!(true));
    let matched: BTreeSet<RunId> = serde_json::from_value::<Vec<Run>>(dry["matched"].clone())
        .expect("the matched runs are runs")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(matched, doomed, "the ended run is not among them");
    assert_eq!(dry["cancelled"], json!([]));
    let table = cli
        .run(&[
            "run",
            "cancel",
            "--workflow",
            "batch",
            "--dry-run",
            "-o",
            "table",
        ])
        .await
        .ok();
    assert!(
        table
            .stdout
            .contains("Dry run: would cancel 3 runs; nothing was changed."),
        "{}",
        table.stdout
    );
    assert!(
        doomed
            .iter()
            .all(|id| table.stdout.contains(&id.to_string())),
        "{}",
        table.stdout
    );
    assert_eq!(statuses().await, before);

    // Without --yes, and nobody at a terminal to ask, it refuses (a usage error).
    let refused = cli
        .run(&["run", "cancel", "--workflow", "batch"])
        .await
        .code(2);
    assert!(refused.stderr.contains("pass --yes"), "{}", refused.stderr);
    assert_eq!(statuses().await, before);

    // --yes cancels exactly the matching runs that had not ended.
    let done: Value = cli
        .run(&[
            "run",
            "cancel",
            "--workflow",
            "batch",
            "--status",
            "pending",
            "--yes",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let cancelled: BTreeSet<RunId> =
        serde_json::from_value(done["cancelled"].clone()).expect("ids");
    assert_eq!(cancelled, doomed);
    for (id, status) in statuses().await {
        let expected = if doomed.contains(&id) {
            RunStatus::Cancelled
        } else if kept.contains(&id) {
            RunStatus::Pending
        } else {
            assert_eq!(id, ended);
            RunStatus::Cancelled
        };
        assert_eq!(status, expected, "run {id}");
    }
    let nothing = cli
        .run(&[
            "run",
            "cancel",
            "--workflow",
            "batch",
            "--yes",
            "-o",
            "table",
        ])
        .await
        .ok();
    assert!(
        nothing.stdout.contains("nothing to cancel"),
        "{}",
        nothing.stdout
    );
}

async fn a_bulk_cancel_at_a_terminal_asks_first(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let started: Started = cli
            .run(&["run", "start", "batch", "-q", "idle", "-o", "json"])
            .await
            .ok()
            .json();
        ids.insert(started.id);
    }
    let pending = async || -> usize {
        let page: RunPage = cli
            .run(&["run", "list", "--status", "pending", "-o", "json"])
            .await
            .ok()
            .json();
        page.runs.len()
    };
    let args = ["run", "cancel", "--workflow", "batch", "--no-color"];

    // No is the default answer: nothing changes, and the exit code says so.
    let declined = kagzi(&url(&server))
        .stdin("\n")
        .run_in_terminal(&args)
        .await
        .code(1);
    let screen = declined.stdout.replace('\r', "");
    assert!(screen.contains("Cancel 2 runs? [y/N]"), "{screen}");
    assert!(
        ids.iter().all(|id| screen.contains(&id.to_string())),
        "the runs are shown: {screen}"
    );
    assert!(screen.contains("error: nothing was cancelled"), "{screen}");
    assert_eq!(pending().await, 2);

    let accepted = kagzi(&url(&server))
        .stdin("y\n")
        .run_in_terminal(&args)
        .await
        .ok();
    let screen = accepted.stdout.replace('\r', "");
    assert!(screen.contains("Cancelled 2 runs."), "{screen}");
    assert_eq!(pending().await, 0);
}

async fn a_terminal_gets_a_coloured_table_unless_told_otherwise(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    cli.run(&["run", "start", "greet", "-q", "idle"]).await.ok();
    // On a terminal the default is a table, in colour.
    let coloured = cli.run_in_terminal(&["run", "list"]).await.ok();
    assert!(coloured.stdout.contains("WORKFLOW"), "{}", coloured.stdout);
    assert!(
        coloured.stdout.contains("\x1b["),
        "colour codes: {:?}",
        coloured.stdout
    );
    let flag = cli
        .run_in_terminal(&["run", "list", "--no-color"])
        .await
        .ok();
    let env = kagzi(&url(&server))
        .env("NO_COLOR", "1")
        .run_in_terminal(&["run", "list"])
        .await
        .ok();
    for plain in [flag, env] {
        assert!(plain.stdout.contains("WORKFLOW"), "{}", plain.stdout);
        assert!(
            !plain.stdout.contains('\x1b'),
            "no colour codes: {:?}",
            plain.stdout
        );
    }
    // -o json on a terminal is JSON.
    let json = cli
        .run_in_terminal(&["run", "list", "-o", "json"])
        .await
        .ok();
    let page: RunPage = serde_json::from_str(&json.stdout.replace('\r', "")).expect("JSON");
    assert_eq!(page.runs.len(), 1);
}
