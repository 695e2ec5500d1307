//! Run with: cargo run -p kagzi --example simple
//!
//! Needs a Kagzi server: start one with `cargo run -p kagzi-server` (listens on port 50051
//! by default). `KAGZI_SERVER_URL` (default `http://localhost:50051`) says where it is and
//! `KAGZI_QUEUE` (default `default`) which queue to use.
//!
//! Starts a worker in the background, starts one run of the `greet` workflow, prints its
//! result, shuts the worker down and exits.

use std::time::Duration;

use kagzi::{Client, Worker, WorkflowContext, step, workflow};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Input {
    name: String,
}

#[derive(Serialize, Deserialize)]
struct Output {
    message: String,
}

/// A durable step: once its result is recorded, a replay (after a crash, on another
/// worker) reuses it instead of running it again.
#[step]
async fn compose_greeting(name: &str) -> anyhow::Result<String> {
    Ok(format!("Hello, {name}!"))
}

/// The workflow, registered as `greet` with input `Input` and output `Output`.
#[workflow]
async fn greet(_ctx: WorkflowContext, input: Input) -> anyhow::Result<Output> {
    let greeting = compose_greeting(&input.name).await?;
    Ok(Output { message: greeting })
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

    // Start a worker in the background.
    let mut worker = Worker::builder(url.as_str(), queue.as_str())
        .build()
        .await?;
    worker.add(greet);
    let stop = worker.shutdown_handle();
    let mut worker_task = tokio::spawn(worker.run());

    // Start a run and wait for its result.
    let client = Client::connect(url.as_str()).await?;
    let run = client
        .start(
            greet,
            Input {
                name: "World".to_string(),
            },
        )
        .queue(queue.as_str())
        .await?;
    println!("Started workflow: {}", run.id());

    let output = tokio::select! {
        output = tokio::time::timeout(Duration::from_secs(120), run.result()) => output??,
        stopped = &mut worker_task => anyhow::bail!("worker stopped early: {:?}", stopped?),
    };
    println!("{}", output.message);

    stop.shutdown();
    worker_task.await??;
    Ok(())
}
