//! Commands over the operator routes: `GET /v1/workers`, `GET /v1/queues`,
//! `GET /v1/runs/counts`, `GET /v1/runs/{id}/signals`, and the `idempotency_key`,
//! `created_after` and `created_before` filters of `GET /v1/runs`.

use std::time::Duration;

use kagzi_proto::{QueueList, RunCounts, RunPage, SignalList, Started, WorkerPage, WorkerStatus};
use serde_json::json;

use crate::both_stores;
use crate::support::{QUEUE, TestDb, kagzi, start_worker, url};

both_stores!(
    worker_list_shows_the_running_worker,
    queue_list_shows_the_backlog_and_its_age,
    run_counts_count_by_status,
    run_signals_lists_what_was_sent,
    run_list_filters_by_key_and_time,
);

async fn worker_list_shows_the_running_worker(db: TestDb) {
    let server = db.start_server().await;
    let url = url(&server);
    let _worker = start_worker(&url).await.drop_guard();
    let cli = kagzi(&url);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page: WorkerPage = cli.run(&["worker", "list", "-o", "json"]).await.ok().json();
        if !page.workers.is_empty() {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker is never listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let worker = &page.workers[0];
    assert_eq!(
        (worker.queue.as_str(), worker.status),
        (QUEUE, WorkerStatus::Online)
    );
    assert!(worker.workflows.contains(&"greet".to_owned()));
    let table = cli
        .run(&["worker", "list", "--queue", QUEUE, "-o", "table"])
        .await
        .ok();
    let row = table
        .stdout
        .lines()
        .find(|l| l.contains(&worker.id.to_string()))
        .expect("listed");
    assert!(row.contains("online") && row.contains("greet"), "{row}");
    let offline: WorkerPage = cli
        .run(&["worker", "list", "--status", "offline", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(offline.workers.is_empty());
}

async fn queue_list_shows_the_backlog_and_its_age(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    for _ in 0..3 {
        cli.run(&["run", "start", "greet", "-q", "idle"]).await.ok();
    }
    cli.run(&["run", "start", "greet", "-q", "idle", "--delay", "1h"])
        .await
        .ok();
    let list: QueueList = cli.run(&["queue", "list", "-o", "json"]).await.ok().json();
    let idle = list
        .queues
        .iter()
        .find(|q| q.queue == "idle")
        .expect("the queue is listed");
    assert_eq!(
        (
            idle.workflow.as_str(),
            idle.due,
            idle.scheduled,
            idle.workers
        ),
        ("greet", 3, 1, 0)
    );
    assert!(idle.oldest_due_at.is_some());
    let table = cli.run(&["queue", "list", "-o", "table"]).await.ok();
    assert!(table.stdout.starts_with("QUEUE"), "{}", table.stdout);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("idle"))
        .expect("a row for idle");
    assert!(row.contains("greet") && row.contains('3'), "{row}");
}

async fn run_counts_count_by_status(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let mut last = None;
    for _ in 0..3 {
        let started: Started = cli
            .run(&["run", "start", "greet", "-q", "idle", "-o", "json"])
            .await
            .ok()
            .json();
        last = Some(started.id);
    }
    let last = last.expect("a run").to_string();
    cli.run(&["run", "cancel", &last]).await.ok();
    let counts: RunCounts = cli
        .run(&["run", "counts", "--workflow", "greet", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!((counts.pending, counts.cancelled, counts.total), (2, 1, 3));
    let table = cli.run(&["run", "counts", "-o", "table"]).await.ok();
    let pending = table
        .stdout
        .lines()
        .find(|l| l.starts_with("pending"))
        .expect("a pending row");
    assert!(pending.ends_with('2'), "{}", table.stdout);
}

async fn run_signals_lists_what_was_sent(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let started: Started = cli
        .run(&["run", "start", "approve", "-q", "idle", "-o", "json"])
        .await
        .ok()
        .json();
    let id = started.id.to_string();
    cli.run(&[
        "run",
        "signal",
        &id,
        "approve",
        "--data",
        r#"{"by": "ada"}"#,
    ])
    .await
    .ok();
    let list: SignalList = cli
        .run(&["run", "signals", &id, "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(list.signals.len(), 1);
    assert_eq!(
        (list.signals[0].name.as_str(), &list.signals[0].payload),
        ("approve", &json!({"by": "ada"}))
    );
    let table = cli.run(&["run", "signals", &id, "-o", "table"]).await.ok();
    assert!(
        table.stdout.contains("approve") && table.stdout.contains("(waiting)"),
        "{}",
        table.stdout
    );
}

async fn run_list_filters_by_key_and_time(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));
    let keyed: Started = cli
        .run(&[
            "run",
            "start",
            "greet",
            "-q",
            "idle",
            "--idempotency-key",
            "order-7",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    cli.run(&["run", "start", "greet", "-q", "idle"]).await.ok();
    let by_key: RunPage = cli
        .run(&["run", "list", "--idempotency-key", "order-7", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        by_key.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        [keyed.id]
    );
    let recent: RunPage = cli
        .run(&["run", "list", "--since", "1h", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(recent.runs.len(), 2);
    let old: RunPage = cli
        .run(&["run", "list", "--until", "1h", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(old.runs.is_empty());
    let future: RunPage = cli
        .run(&["run", "list", "--since", "2999-01-01", "-o", "json"])
        .await
        .ok()
        .json();
    assert!(future.runs.is_empty());
}
