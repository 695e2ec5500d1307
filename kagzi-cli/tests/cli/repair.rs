//! Repairing runs from the command line: `kagzi run retry`, `run fork`, `run delete`, the
//! bulk retry by filter, and `kagzi patch status`.

use kagzi_proto::{Run, RunStatus, Started, Step};
use serde_json::{Value, json};

use crate::both_stores;
use crate::support::{QUEUE, TestDb, kagzi, start_worker, url};

both_stores!(
    a_failed_run_is_retried_forked_and_deleted,
    retry_by_filter_shows_asks_and_retries,
    patch_status_says_whether_a_patch_can_go,
);

/// Starts a `flaky` run and waits until it failed.
async fn failed_run(cli: &crate::support::Kagzi) -> String {
    let started: Started = cli
        .run(&["run", "start", "flaky", "-q", QUEUE, "-o", "json"])
        .await
        .ok()
        .json();
    let id = started.id.to_string();
    let outcome = cli.run(&["run", "result", &id]).await.code(6);
    assert!(
        outcome.stderr.contains("card declined"),
        "{}",
        outcome.stderr
    );
    id
}

async fn a_failed_run_is_retried_forked_and_deleted(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let id = failed_run(&cli).await;

    // Retry: the same run, pending again, then completed with `reserve` not run again.
    let retried = cli.run(&["run", "retry", &id, "-o", "table"]).await.ok();
    assert!(
        retried.stdout.contains(&format!("Retried run {id}")),
        "{}",
        retried.stdout
    );
    let output: Value = cli
        .run(&["run", "result", &id, "-o", "table"])
        .await
        .ok()
        .json();
    assert_eq!(output, json!({"charged": "charged order 7"}));
    let again = cli.run(&["run", "retry", &id]).await.code(4);
    assert!(
        again.stderr.contains("409"),
        "a completed run: {}",
        again.stderr
    );

    // Fork from `charge`: a new run whose journal starts with a copy of `reserve`.
    let fork: Run = cli
        .run(&["run", "fork", &id, "--from-step", "charge", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(fork.forked_from.map(|f| f.to_string()), Some(id.clone()));
    let fork_id = fork.id.to_string();
    // The fork is a new run, so its first `charge` fails as the original's did.
    cli.run(&["run", "result", &fork_id]).await.code(6);
    let shown: Value = cli
        .run(&["run", "show", &fork_id, "-o", "json"])
        .await
        .ok()
        .json();
    let steps: Vec<Step> = serde_json::from_value(shown["steps"].clone()).expect("steps");
    assert_eq!(steps[0].key, "reserve", "the copied step");
    let table = cli
        .run(&["run", "show", &fork_id, "-o", "table"])
        .await
        .ok();
    assert!(
        table.stdout.contains("Forked from") && table.stdout.contains(&id),
        "{}",
        table.stdout
    );
    let unknown = cli
        .run(&["run", "fork", &id, "--from-step", "nowhere"])
        .await
        .code(3);
    assert!(unknown.stderr.contains("nowhere"), "{}", unknown.stderr);

    // Delete: gone, and a second delete is not found.
    let deleted = cli.run(&["run", "delete", &id, "-o", "table"]).await.ok();
    assert!(deleted.stdout.contains(&format!("Deleted run {id}")));
    cli.run(&["run", "show", &id]).await.code(3);
    cli.run(&["run", "delete", &id]).await.code(3);
}

async fn retry_by_filter_shows_asks_and_retries(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let failed = [failed_run(&cli).await, failed_run(&cli).await];
    let ok: Started = cli
        .run(&["run", "start", "greet", "-q", QUEUE, "-o", "json"])
        .await
        .ok()
        .json();
    cli.run(&["run", "result", &ok.id.to_string()]).await.ok();

    let dry: Value = cli
        .run(&[
            "run",
            "retry",
            "--workflow",
            "flaky",
            "--dry-run",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let matched: Vec<Run> = serde_json::from_value(dry["matched"].clone()).expect("runs");
    assert_eq!(matched.len(), 2, "only the failed runs match");
    assert_eq!(dry["retried"], json!([]));
    // Not on a terminal and without --yes, nothing is retried.
    cli.run(&["run", "retry", "--workflow", "flaky"])
        .await
        .code(2);
    let done: Value = cli
        .run(&["run", "retry", "--workflow", "flaky", "--yes", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(done["retried"].as_array().map(Vec::len), Some(2));
    for id in &failed {
        let run: Run = cli
            .run(&["run", "result", id, "-o", "json"])
            .await
            .ok()
            .json();
        assert_eq!(run.status, RunStatus::Completed);
    }
    let none = cli
        .run(&[
            "run",
            "retry",
            "--workflow",
            "flaky",
            "--yes",
            "-o",
            "table",
        ])
        .await
        .ok();
    assert!(none.stdout.contains("nothing to retry"), "{}", none.stdout);
}

async fn patch_status_says_whether_a_patch_can_go(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    // No worker: a run that has not ended and has not reached the patch may take the old
    // branch, so the patch is still needed.
    cli.run(&["run", "start", "flaky", "-q", "idle"]).await.ok();
    let usage: Value = cli
        .run(&["patch", "status", "flaky", "new-tax", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (usage["unmarked"].clone(), usage["safe_to_remove"].clone()),
        (json!(1), json!(false))
    );
    let check = cli
        .run(&[
            "patch", "status", "flaky", "new-tax", "--check", "-o", "table",
        ])
        .await
        .code(1);
    assert!(check.stdout.contains("still needed"), "{}", check.stdout);
    let clear = cli
        .run(&[
            "patch", "status", "greet", "new-tax", "--check", "-o", "table",
        ])
        .await
        .ok();
    assert!(clear.stdout.contains("safe to remove"), "{}", clear.stdout);
}
