//! Kagzi: durable workflows for Rust.
//!
//! Write workflows as ordinary `async fn`s; wrap each side effect in a step
//! ([`WorkflowContext::run`]). Every finished step is recorded on the Kagzi server, so a run
//! that is interrupted — worker killed, server restarted — resumes on another worker,
//! skipping the steps that already finished. Step side effects run at least once; their
//! recorded results are used exactly once.
//!
//! - [`Client`] starts runs and waits for their results.
//! - [`Worker`] executes runs with the workflow functions registered on it.
//! - [`WorkflowContext`] is what a workflow function uses to run steps.
//! - [`Client::schedule`] and [`Client::schedules`] start runs on a cron schedule.
//!
//! # Example
//!
//! ```no_run
//! use kagzi::{Client, Worker, WorkflowContext};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Input {
//!     name: String,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Output {
//!     message: String,
//! }
//!
//! async fn greet_workflow(ctx: WorkflowContext, input: Input) -> anyhow::Result<Output> {
//!     // This step survives server restarts.
//!     let greeting = ctx
//!         .run("greet", async { Ok(format!("Hello, {}!", input.name)) })
//!         .await?;
//!     Ok(Output { message: greeting })
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     // Start a worker in the background.
//!     let mut worker = Worker::builder("http://localhost:50051", "default")
//!         .build()
//!         .await?;
//!     worker.register("greet", greet_workflow);
//!     tokio::spawn(async move { worker.run().await });
//!
//!     // Start a run and wait for its result.
//!     let client = Client::connect("http://localhost:50051").await?;
//!     let run_id = client
//!         .workflow("greet", "default", Input { name: "World".to_string() })
//!         .await?;
//!     let output: Output = client.result(run_id).await?;
//!     println!("{}", output.message);
//!     Ok(())
//! }
//! ```

mod client;
mod context;
mod error;
mod http;
mod schedule;
mod suspend;
mod types;
mod worker;

pub use client::{Client, ClientBuilder, StartWorkflow};
pub use context::{RetryPolicy, StepBuilder, WorkflowContext};
pub use error::{Error, Result};
pub use schedule::{
    Overlap, Schedule, ScheduleBuilder, ScheduleFilter, ScheduleId, SchedulePage, ScheduleRef,
    ScheduleUpdate, Schedules,
};
pub use types::{Run, RunFilter, RunId, RunPage, RunStatus, Step, StepStatus};
pub use worker::{ShutdownHandle, Worker, WorkerBuilder};
