//! `/metrics` during a real workload, on PostgreSQL and on SQLite, parsed as Prometheus
//! parses it: the run counters equal the runs that started and ended, the queue gauges match
//! the runs that wait, the HTTP and store figures are there with bounded labels.

mod support;

use std::time::Duration;

use kagzi::{Client, RunStatus, Worker, WorkflowContext};
use prometheus_parse::{Scrape, Value};
use support::{TestDb, eventually};

async fn scrape(base: &str) -> (Scrape, String) {
    let answer = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(answer.status(), 200);
    let kind = answer.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    let text = answer.text().await.expect("body");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the text format");
    (scrape, text)
}

/// The value of the sample `name` whose labels include `labels` (0 when there is none).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn counters_and_gauges_follow_a_workload(db: TestDb) {
    // Both stores' tests share this process's recorder: names of their own keep them apart.
    let tag = match &db {
        TestDb::Postgres(_) => "pg",
        TestDb::Sqlite(_) => "lite",
    };
    let (queue, idle_queue) = (format!("metered-{tag}"), format!("nobody-{tag}"));
    let (ok, bad, idle) = (
        format!("ok-{tag}"),
        format!("bad-{tag}"),
        format!("idle-{tag}"),
    );
    let server = db.start_server().await;
    let base = support::url(&server);
    let client = Client::connect(&base).await.expect("client");
    let mut worker = Worker::builder(&base, &queue)
        .build()
        .await
        .expect("worker");
    worker.register(&ok, |ctx: WorkflowContext, (): ()| async move {
        let n: u32 = ctx.run("one", async { Ok(1) }).await?;
        Ok(n)
    });
    worker.register(&bad, |ctx: WorkflowContext, (): ()| async move {
        let (): () = ctx
            .run("charge", async { anyhow::bail!("declined") })
            .await?;
        Ok(())
    });
    let (stop, _worker) = support::spawn_worker(worker);

    let mut ended = Vec::new();
    for _ in 0..5 {
        ended.push(client.workflow(&ok, &queue, ()).await.expect("start"));
    }
    for _ in 0..2 {
        ended.push(client.workflow(&bad, &queue, ()).await.expect("start"));
    }
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(
            client
                .workflow(&idle, &idle_queue, ())
                .await
                .expect("start"),
        );
    }
    for id in &ended {
        eventually("the run ends", Duration::from_secs(10), || async {
            client.run(*id).await.expect("run").status.is_terminal()
        })
        .await;
    }

    let (m, text) = scrape(&base).await;
    let started = |w: &str| value(&m, "kagzi_runs_started_total", &[("workflow", w)]);
    assert_eq!(
        (started(&ok), started(&bad), started(&idle)),
        (5.0, 2.0, 3.0)
    );
    assert_eq!(
        value(
            &m,
            "kagzi_runs_completed_total",
            &[("workflow", &ok), ("queue", &queue)]
        ),
        5.0
    );
    assert_eq!(
        value(&m, "kagzi_runs_failed_total", &[("workflow", &bad)]),
        2.0
    );
    assert_eq!(
        value(&m, "kagzi_runs_completed_total", &[("workflow", &bad)]),
        0.0
    );
    let due = [("queue", idle_queue.as_str()), ("workflow", idle.as_str())];
    assert_eq!(value(&m, "kagzi_queue_due_runs", &due), 3.0);
    assert!(value(&m, "kagzi_queue_oldest_due_age_seconds", &due) > 0.0);
    assert_eq!(value(&m, "kagzi_workers_online", &[("queue", &queue)]), 1.0);
    assert!(value(&m, "kagzi_worker_free_slots", &[("queue", &queue)]) >= 1.0);
    assert!(value(&m, "kagzi_db_connections_max", &[]) >= 1.0);
    let http: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("kagzi_http_requests_total"))
        .collect();
    assert!(
        value(
            &m,
            "kagzi_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/runs/batch"),
                ("status", "200")
            ]
        ) >= 10.0,
        "{http:#?}"
    );
    assert!(value(&m, "kagzi_steps_recorded_total", &[("status", "completed")]) >= 5.0);
    assert!(
        text.contains(&format!(
            "kagzi_run_duration_seconds_bucket{{workflow=\"{ok}\""
        )),
        "a duration histogram per workflow"
    );
    assert!(
        text.contains(
            "kagzi_store_operation_duration_seconds_bucket{operation=\"claim_or_next_due\""
        )
    );
    assert!(
        value(&m, "kagzi_long_polls_waiting", &[("kind", "claim")]) >= 1.0,
        "the worker's poll waits"
    );
    for sample in &m.samples {
        for (name, value) in sample.labels.iter() {
            assert!(
                uuid::Uuid::parse_str(value).is_err() && !value.contains("/runs/0"),
                "{} has an id in its label {name}={value}",
                sample.metric
            );
        }
    }

    // A cancel counts, and the backlog gauge follows at the next scrape.
    client.cancel(waiting[0]).await.expect("cancel");
    assert_eq!(
        client.run(waiting[0]).await.expect("run").status,
        RunStatus::Cancelled
    );
    let (m, _) = scrape(&base).await;
    assert_eq!(
        value(&m, "kagzi_runs_cancelled_total", &[("workflow", &idle)]),
        1.0
    );
    assert_eq!(value(&m, "kagzi_queue_due_runs", &due), 2.0);
    stop.cancel();
}

both_stores!(counters_and_gauges_follow_a_workload);
