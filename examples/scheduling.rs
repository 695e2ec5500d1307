//! Run with: cargo run -p kagzi --example scheduling
//!
//! Needs a Kagzi server: start one with `cargo run -p kagzi-server` (listens on port 50051
//! by default). `KAGZI_SERVER_URL` (default `http://localhost:50051`) says where it is and
//! `KAGZI_QUEUE` (default `default`) which queue to use.
//!
//! Creates a schedule that fires every second, runs a worker for it, waits until three
//! scheduled runs have completed, prints them, deletes the schedule and exits.

use std::time::Duration;

use kagzi::{Client, Overlap, RunStatus, Worker, WorkflowContext};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Report {
    team: String,
}

async fn report_workflow(ctx: WorkflowContext, input: Report) -> anyhow::Result<String> {
    let summary = ctx
        .run("summarize", async move {
            Ok(format!("report for {} ready", input.team))
        })
        .await?;
    Ok(summary)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kagzi=info".into()),
        )
        .init();
    let url =
        std::env::var("KAGZI_SERVER_URL").unwrap_or_else(|_| "http://localhost:50051".to_owned());
    let queue = std::env::var("KAGZI_QUEUE").unwrap_or_else(|_| "default".to_owned());

    let mut worker = Worker::builder(url.as_str(), queue.as_str())
        .build()
        .await?;
    worker.register("report", report_workflow);
    let stop = worker.shutdown_handle();
    let mut worker_task = tokio::spawn(worker.run());

    // Every second (six fields: seconds first). Five fields — "0 9 * * *" — fire on minutes.
    let client = Client::connect(url.as_str()).await?;
    let schedule_id = client
        .schedule(
            "report",
            queue.as_str(),
            "* * * * * *",
            Report {
                team: "ops".to_owned(),
            },
        )
        .overlap(Overlap::Skip)
        .create()
        .await?;
    println!("created schedule {schedule_id}");

    let wait_for_runs = async {
        loop {
            let page = client
                .schedules()
                .runs(schedule_id, Some(RunStatus::Completed), None)
                .await?;
            if page.runs.len() >= 3 {
                return anyhow::Ok(page.runs);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut runs = tokio::select! {
        runs = tokio::time::timeout(Duration::from_secs(60), wait_for_runs) => runs??,
        stopped = &mut worker_task => anyhow::bail!("worker stopped early: {:?}", stopped?),
    };
    client.schedules().delete(schedule_id).await?;
    runs.sort_by_key(|run| run.scheduled_at);
    for run in &runs {
        let scheduled_at = run
            .scheduled_at
            .map(|at| at.to_rfc3339())
            .unwrap_or_default();
        let output = run.output.clone().unwrap_or_default();
        println!("scheduled run {} for {scheduled_at}: {output}", run.id);
    }
    println!("deleted schedule {schedule_id}");

    stop.shutdown();
    worker_task.await??;
    Ok(())
}
