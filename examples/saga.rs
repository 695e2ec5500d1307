//! Run with: cargo run -p kagzi --example saga
//!
//! Needs a Kagzi server (`cargo run -p kagzi-server`); `KAGZI_SERVER_URL` (default
//! `http://localhost:50051`) says where, `KAGZI_QUEUE` (default `default`) which queue to use.
//!
//! The saga pattern: a trip booking reserves a flight, then a hotel, then charges the card.
//! Each step that succeeded registers its compensation. When a later step fails for good (the
//! card is declined), the compensations run in reverse order, each as a durable step: a crash
//! in the middle of compensating resumes where it stopped and never undoes anything twice.

use std::time::Duration;

use kagzi::{Client, RetryPolicy, Worker, WorkflowContext};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Trip {
    traveller: String,
    card: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Booking {
    status: String,
    compensated: Vec<String>,
}

/// Compensations registered so far, run last-in first-out.
#[derive(Default)]
struct Compensations {
    undo: Vec<String>,
}

impl Compensations {
    fn push(&mut self, step: &str) {
        self.undo.push(step.to_owned());
    }

    /// Runs every compensation, newest first, each as a durable step.
    async fn run(self, ctx: &WorkflowContext) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        for step in self.undo.into_iter().rev() {
            let name = format!("undo_{step}");
            let undone: String = ctx
                .run(&name, async move { Ok(format!("cancelled {step}")) })
                .await?;
            done.push(undone);
        }
        Ok(done)
    }
}

async fn book_trip(ctx: WorkflowContext, trip: Trip) -> anyhow::Result<Booking> {
    let mut compensations = Compensations::default();

    let flight: String = ctx
        .run("reserve_flight", async { Ok("flight LH-401".to_owned()) })
        .await?;
    compensations.push("reserve_flight");

    let hotel: String = ctx
        .run("reserve_hotel", async { Ok("hotel Adlon".to_owned()) })
        .await?;
    compensations.push("reserve_hotel");

    // Retried a few times inside the run; a declined card fails for good.
    let card = trip.card.clone();
    let charged = ctx
        .step("charge_card")
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .run(move || {
            let card = card.clone();
            async move {
                if card == "declined" {
                    anyhow::bail!("card declined");
                }
                Ok(format!("charged {card}"))
            }
        })
        .await;

    match charged {
        Ok(receipt) => Ok(Booking {
            status: format!(
                "booked {flight} and {hotel} for {}: {receipt}",
                trip.traveller
            ),
            compensated: Vec::new(),
        }),
        Err(error) => Ok(Booking {
            status: format!("not booked: {error}"),
            compensated: compensations.run(&ctx).await?,
        }),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("KAGZI_SERVER_URL").unwrap_or_else(|_| "http://localhost:50051".to_owned());
    let queue = std::env::var("KAGZI_QUEUE").unwrap_or_else(|_| "default".to_owned());

    let mut worker = Worker::builder(url.as_str(), queue.as_str())
        .build()
        .await?;
    worker.register("book_trip", book_trip);
    let stop = worker.shutdown_handle();
    let worker_task = tokio::spawn(worker.run());

    let client = Client::connect(url.as_str()).await?;
    let trip = Trip {
        traveller: "Ada".to_owned(),
        card: "declined".to_owned(),
    };
    let run_id = client.workflow("book_trip", queue.as_str(), trip).await?;
    let booking: Booking =
        tokio::time::timeout(Duration::from_secs(120), client.result(run_id)).await??;
    println!("{}", booking.status);
    println!("compensated: {}", booking.compensated.join(", "));

    let steps = client.steps(run_id).await?;
    let keys: Vec<&str> = steps.iter().map(|s| s.key.as_str()).collect();
    println!("journal: {}", keys.join(" → "));

    stop.shutdown();
    worker_task.await??;
    Ok(())
}
