//! `kagzi schedule ...` against a real server.

use kagzi_proto::{Overlap, Run, RunPage, Schedule, SchedulePage, Triggered};
use serde_json::json;

use crate::both_stores;
use crate::support::{TestDb, kagzi, url};

both_stores!(
    a_schedule_is_created_listed_changed_paused_triggered_and_deleted,
    schedule_mistakes_have_their_exit_codes,
);

async fn a_schedule_is_created_listed_changed_paused_triggered_and_deleted(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let created: Schedule = cli
        .run(&[
            "schedule",
            "create",
            "daily_report",
            "0 0 9 * * *",
            "--name",
            "daily-report",
            "-q",
            "reports",
            "-i",
            r#"{"team": "ops"}"#,
            "--overlap",
            "buffer_one",
            "--catch-up-window",
            "1h",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(created.name.as_deref(), Some("daily-report"));
    assert_eq!(
        (created.queue.as_str(), created.overlap),
        ("reports", Overlap::BufferOne)
    );
    assert_eq!(created.catch_up_window_ms, Some(3_600_000));
    assert_eq!(created.input, json!({"team": "ops"}));
    let id = created.id.to_string();

    let table = cli.run(&["schedule", "list", "-o", "table"]).await.ok();
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&id))
        .expect("listed");
    for expected in [
        "daily-report",
        "daily_report",
        "reports",
        "0 0 9 * * *",
        "UTC",
        "active",
    ] {
        assert!(row.contains(expected), "{expected:?} not in {row:?}");
    }
    let page: SchedulePage = cli
        .run(&["schedule", "list", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(page.schedules.len(), 1);
    let none: SchedulePage = cli
        .run(&["schedule", "list", "--paused", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(none.schedules.is_empty());

    // By name or by id, the same schedule.
    let shown = cli
        .run(&["schedule", "show", "daily-report", "-o", "table"])
        .await
        .ok();
    for expected in [
        id.as_str(),
        "0 0 9 * * * (UTC)",
        "buffer_one",
        "within 1h 0m",
        "Next fire",
    ] {
        assert!(
            shown.stdout.contains(expected),
            "{expected:?} not in:\n{}",
            shown.stdout
        );
    }
    let by_id: Schedule = cli
        .run(&["schedule", "show", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(by_id.id, created.id);

    let updated: Schedule = cli
        .run(&[
            "schedule",
            "update",
            "daily-report",
            "--cron",
            "0 30 8 * * 1-5",
            "--tz",
            "Europe/Berlin",
            "--no-catch-up-window",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        (updated.cron.as_str(), updated.time_zone.as_str()),
        ("0 30 8 * * 1-5", "Europe/Berlin")
    );
    assert_eq!(updated.catch_up_window_ms, None);
    assert!(updated.version > created.version);

    let paused = cli
        .run(&["schedule", "pause", "daily-report", "-o", "table"])
        .await
        .ok();
    assert_eq!(paused.stdout.trim(), "Paused schedule daily-report");
    let state: Schedule = cli
        .run(&["schedule", "show", "daily-report"])
        .await
        .ok()
        .json();
    assert!(state.paused && state.next_fire_at.is_none());
    let resumed: Schedule = cli
        .run(&["schedule", "resume", "daily-report", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(!resumed.paused && resumed.next_fire_at.is_some());

    let triggered: Triggered = cli
        .run(&["schedule", "trigger", "daily-report", "-o", "json"])
        .await
        .ok()
        .json();
    let runs: RunPage = cli
        .run(&["schedule", "runs", "daily-report", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        runs.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [triggered.id]
    );
    let runs_table = cli
        .run(&["schedule", "runs", "daily-report", "-o", "table"])
        .await
        .ok();
    assert!(
        runs_table.stdout.contains(&triggered.id.to_string()),
        "{}",
        runs_table.stdout
    );
    // `run list --schedule` takes the name too.
    let listed: Vec<Run> = cli
        .run(&["run", "list", "--schedule", "daily-report", "-o", "jsonl"])
        .await
        .ok()
        .json_lines();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        [triggered.id]
    );
    assert_eq!(listed[0].schedule_id, Some(created.id));

    let deleted = cli
        .run(&["schedule", "delete", "daily-report", "-o", "table"])
        .await
        .ok();
    assert!(
        deleted.stdout.contains("Deleted schedule daily-report"),
        "{}",
        deleted.stdout
    );
    let gone = cli.run(&["schedule", "show", "daily-report"]).await.code(3);
    assert!(gone.stderr.contains("Not found (404)"), "{}", gone.stderr);
    // Its runs stay.
    let run: Run = cli
        .run(&["run", "show", &triggered.id.to_string()])
        .await
        .ok()
        .json();
    assert_eq!(run.schedule_id, Some(created.id));
}

async fn schedule_mistakes_have_their_exit_codes(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    cli.run(&["schedule", "create", "w", "0 9 * * *", "--name", "taken"])
        .await
        .ok();
    let taken = cli
        .run(&["schedule", "create", "w", "0 9 * * *", "--name", "taken"])
        .await
        .code(4);
    assert!(
        taken.stderr.starts_with("error: Conflict (409)"),
        "{}",
        taken.stderr
    );
    let invalid = cli
        .run(&["schedule", "create", "w", "0 61 * * *"])
        .await
        .code(1);
    assert!(invalid.stderr.contains("(422)"), "{}", invalid.stderr);
    assert_eq!(
        invalid.stderr.lines().count(),
        1,
        "one line: {}",
        invalid.stderr
    );
    let nothing = cli.run(&["schedule", "update", "taken"]).await.code(2);
    assert!(
        nothing.stderr.contains("say what to change"),
        "{}",
        nothing.stderr
    );
    cli.run(&["schedule", "trigger", "nowhere"]).await.code(3);
    cli.run(&["run", "list", "--schedule", "nowhere"])
        .await
        .code(3);
}
