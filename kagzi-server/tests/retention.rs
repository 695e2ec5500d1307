//! Retention under load: the reaper deleting 200,000 ended runs leaves the latency of a
//! one-step run (the benchmark's W2) where it was, and under a steady workload with a short
//! retention the runs table and the SQLite file stop growing.

mod support;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use kagzi::{Client, Worker, WorkflowContext};
use kagzi_server::config::Retention;
use serde_json::Value;
use sqlx::PgPool;
use support::{TestDb, eventually};

/// Ended runs seeded for the reaper, each with one step.
const SEEDED: i64 = 200_000;

/// Registers `one_step`: one step, then done, as W2 runs.
fn one_step(worker: &mut Worker) {
    worker.register("one_step", |ctx: WorkflowContext, _: Value| async move {
        let n: u32 = ctx.run("only", async { Ok(1) }).await?;
        Ok(n)
    });
}

/// The median of `n` sequential runs' start-to-result times, in milliseconds.
async fn median_latency_ms(client: &Client, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let began = Instant::now();
        let run = client.workflow("one_step", "w2", ()).await.expect("start");
        let _: u32 = client.result(run).await.expect("result");
        times.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A config whose reaper deletes completed runs older than `completed` (none when `None`).
fn config(completed: Option<Duration>, interval_ms: u64) -> kagzi_server::Config {
    let mut config = support::fast_config();
    config.retention_completed = Retention(completed);
    config.retention_failed = Retention(None);
    config.retention_cancelled = Retention(None);
    config.retention_interval_ms = interval_ms;
    config
}

#[sqlx::test(migrations = false)]
async fn reaping_200k_ended_runs_leaves_w2_latency_unchanged(pool: PgPool) {
    let db = TestDb::Postgres(pool.clone());
    let server = db.start_server_with(config(None, 60_000)).await;
    sqlx::query(
        "insert into kagzi.runs (id, workflow, queue, status, input, output, attempts, retries,
                                 available_at, created_at, started_at, finished_at, updated_at)
         select gen_random_uuid(), 'archived', 'old', 'completed', 'null', '1', 1, 0,
                t, t, t, t + interval '1 second', t + interval '1 second'
         from (select now() - interval '30 days' + n * interval '1 millisecond' as t
               from generate_series(1, $1) n) s",
    )
    .bind(SEEDED)
    .execute(&pool)
    .await
    .expect("seed runs");
    sqlx::query(
        "insert into kagzi.steps (run_id, key, position, status, output, created_at, finished_at)
         select id, 'only', 0, 'completed', '1', created_at, finished_at
         from kagzi.runs where workflow = 'archived'",
    )
    .execute(&pool)
    .await
    .expect("seed steps");
    sqlx::query("analyze")
        .execute(&pool)
        .await
        .expect("analyze");

    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let mut worker = Worker::builder(&url, "w2").build().await.expect("worker");
    one_step(&mut worker);
    let (stop, handle) = support::spawn_worker(worker);
    median_latency_ms(&client, 30).await; // warm up
    let quiet = median_latency_ms(&client, 200).await;
    stop.cancel();
    handle.await.expect("join").expect("worker stops");
    server.shutdown().await.expect("shutdown");

    // The same database, now with a reaper that finds 200,000 runs past their retention.
    let server = db
        .start_server_with(config(Some(Duration::from_secs(86_400)), 50))
        .await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let mut worker = Worker::builder(&url, "w2").build().await.expect("worker");
    one_step(&mut worker);
    let (stop, handle) = support::spawn_worker(worker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = count(
        &pool,
        "select count(*) from kagzi.runs where workflow = 'archived'",
    )
    .await;
    let reaping = median_latency_ms(&client, 200).await;
    let after = count(
        &pool,
        "select count(*) from kagzi.runs where workflow = 'archived'",
    )
    .await;
    println!(
        "W2 p50: {quiet:.2} ms quiet, {reaping:.2} ms while the reaper deleted {} runs",
        before - after
    );
    assert!(after < before, "the reaper ran during the measurement");
    assert!(
        reaping <= quiet * 1.5 + 1.0,
        "W2 p50 {reaping:.2} ms while reaping, {quiet:.2} ms without"
    );
    eventually(
        "every seeded run is deleted",
        Duration::from_secs(120),
        || async {
            count(
                &pool,
                "select count(*) from kagzi.runs where workflow = 'archived'",
            )
            .await
                == 0
        },
    )
    .await;
    assert_eq!(
        count(&pool, "select count(*) from kagzi.steps where key = 'only' and run_id not in (select id from kagzi.runs)").await,
        0,
        "their steps went with them"
    );
    stop.cancel();
    handle.await.expect("join").expect("worker stops");
}

/// Six rounds of 300 runs with a 500 ms retention; each round waits until the reaper has
/// taken its runs away, so the runs kept stay level. Answers, per round, the milliseconds until its runs were gone and the SQLite file's size.
async fn steady_workload_stops_growing(db: &TestDb) -> (Vec<i64>, Vec<u64>) {
    let server = db
        .start_server_with(config(Some(Duration::from_millis(500)), 100))
        .await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let mut worker = Worker::builder(&url, "w2")
        .max_concurrent(50)
        .build()
        .await
        .expect("worker");
    one_step(&mut worker);
    let (stop, handle) = support::spawn_worker(worker);
    let (mut reaped_ms, mut sizes) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let runs = futures::future::join_all(
            (0..300).map(|_| client.workflow("one_step", "w2", ()).into_future()),
        )
        .await;
        for run in runs {
            let _: u32 = client.result(run.expect("start")).await.expect("result");
        }
        // Past the retention the reaper takes the round's runs away; under a loaded machine
        // a pass may come late, so wait for it (bounded) rather than for a fixed time.
        let reaped = Instant::now();
        eventually(
            "the round's runs are reaped",
            Duration::from_secs(20),
            || async {
                let page = client
                    .list_runs(
                        kagzi::proto::RunFilter::default()
                            .workflow("one_step")
                            .limit(1000),
                    )
                    .await
                    .expect("list");
                page.runs.is_empty()
            },
        )
        .await;
        reaped_ms.push(i64::try_from(reaped.elapsed().as_millis()).unwrap_or(i64::MAX));
        if let TestDb::Sqlite(path) = db {
            let wal = path.with_extension("db-wal");
            let size = std::fs::metadata(path).map_or(0, |m| m.len())
                + std::fs::metadata(&wal).map_or(0, |m| m.len());
            sizes.push(size);
        }
    }
    stop.cancel();
    handle.await.expect("join").expect("worker stops");
    (reaped_ms, sizes)
}

#[sqlx::test(migrations = false)]
async fn under_a_steady_workload_the_runs_table_stops_growing_postgres(pool: PgPool) {
    // Each round's runs were reaped before the next began (steady_workload_stops_growing
    // waits for it), so the table holds at most one round.
    let (reaped_ms, _) = steady_workload_stops_growing(&TestDb::Postgres(pool)).await;
    println!("ms until each round's runs were reaped: {reaped_ms:?}");
}

#[tokio::test]
async fn under_a_steady_workload_the_sqlite_file_stops_growing() {
    let db = TestDb::sqlite();
    let (reaped_ms, sizes) = steady_workload_stops_growing(&db).await;
    println!("ms until each round's runs were reaped: {reaped_ms:?}; file bytes: {sizes:?}");
    // Freed pages (and the WAL, once checkpointed) are reused: after the first rounds the
    // database and its WAL add (almost) nothing.
    assert!(
        sizes[5] <= sizes[2] + sizes[2] / 10,
        "the file grew from {} to {} bytes",
        sizes[2],
        sizes[5]
    );
}
