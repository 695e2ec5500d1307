//! Run with: cargo run -p kagzi --example fanout
//!
//! Needs a Kagzi server (`cargo run -p kagzi-server`); `KAGZI_SERVER_URL` (default
//! `http://localhost:50051`) says where, `KAGZI_QUEUE` (default `default`) which queue to use.
//!
//! Fan-out and fan-in, two ways: parallel steps inside one run (`try_join!` of steps), and one
//! child run per document (`try_join_all` of `ctx.child`). Step keys and child starts are
//! assigned in call order, so a replay after a crash takes exactly the same path and never
//! starts a child twice.

use std::time::Duration;

use futures::future::try_join_all;
use kagzi::{Client, Worker, WorkflowContext};

/// One child run per document: counts its words.
async fn count_words(ctx: WorkflowContext, document: String) -> anyhow::Result<usize> {
    let words = ctx
        .run(
            "count",
            async move { Ok(document.split_whitespace().count()) },
        )
        .await?;
    Ok(words)
}

/// The parent: fans out to one child per document, and runs two independent steps in
/// parallel, then adds everything up.
async fn word_report(ctx: WorkflowContext, documents: Vec<String>) -> anyhow::Result<String> {
    let queue = std::env::var("KAGZI_QUEUE").unwrap_or_else(|_| "default".to_owned());
    let counts: Vec<usize> = try_join_all(
        documents
            .iter()
            .map(|document| ctx.child("count_words", &queue, document)),
    )
    .await?;
    let (longest, shortest) = futures::try_join!(
        ctx.run("longest", async {
            Ok(counts.iter().copied().max().unwrap_or(0))
        }),
        ctx.run("shortest", async {
            Ok(counts.iter().copied().min().unwrap_or(0))
        }),
    )?;
    let total: usize = counts.iter().sum();
    Ok(format!(
        "{} documents, {total} words (longest {longest}, shortest {shortest})",
        counts.len()
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("KAGZI_SERVER_URL").unwrap_or_else(|_| "http://localhost:50051".to_owned());
    let queue = std::env::var("KAGZI_QUEUE").unwrap_or_else(|_| "default".to_owned());

    let mut worker = Worker::builder(url.as_str(), queue.as_str())
        .max_concurrent(20)
        .build()
        .await?;
    worker.register("word_report", word_report);
    worker.register("count_words", count_words);
    let stop = worker.shutdown_handle();
    let worker_task = tokio::spawn(worker.run());

    let client = Client::connect(url.as_str()).await?;
    let documents = vec![
        "the quick brown fox".to_owned(),
        "jumps over".to_owned(),
        "the lazy dog and keeps on running".to_owned(),
    ];
    let run_id = client
        .workflow("word_report", queue.as_str(), documents)
        .await?;
    let report: String =
        tokio::time::timeout(Duration::from_secs(120), client.result(run_id)).await??;
    println!("{report}");

    stop.shutdown();
    worker_task.await??;
    Ok(())
}
