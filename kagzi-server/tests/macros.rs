//! End-to-end tests of the macro style: `#[workflow]` and `#[step]` fns on a real server,
//! real workers and a fresh PostgreSQL database per test — typed starts and results,
//! recovery after a worker dies, parallel steps, and a workflow changed under a run.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kagzi::{Client, RunId, RunStatus, Worker, WorkflowContext, step, workflow};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use support::eventually;

async fn worker(url: &str, queue: &str) -> Worker {
    Worker::builder(url, queue)
        .build()
        .await
        .expect("worker builds")
}

/// The completed steps of `run`: key, position and output, in position order.
async fn journal(client: &Client, run: RunId) -> Vec<(String, u32, Value)> {
    client
        .steps(run)
        .await
        .expect("steps")
        .into_iter()
        .filter(|s| s.status == kagzi::StepStatus::Completed)
        .map(|s| (s.key, s.position, s.output.unwrap_or(Value::Null)))
        .collect()
}

/// Waits while `gate` is closed; how a test holds a run in the middle of its steps.
async fn wait_open(gate: &AtomicBool) {
    while !gate.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// --- typed start, typed result ----------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Receipt {
    line: String,
    total_cents: u64,
}

#[step]
async fn price(item: &str) -> anyhow::Result<u64> {
    Ok(match item {
        "tea" => 250,
        _ => 100,
    })
}

#[step(name = "format-line")]
async fn format_line(order: &Order, total_cents: u64) -> kagzi::Result<String> {
    Ok(format!(
        "{} x {} = {total_cents}",
        order.quantity, order.item
    ))
}

#[workflow(queue = "typed", retries = 2)]
async fn checkout(_ctx: WorkflowContext, order: Order) -> anyhow::Result<Receipt> {
    let unit = price(&order.item).await?;
    let total_cents = unit * u64::from(order.quantity);
    let line = format_line(&order, total_cents).await?;
    Ok(Receipt { line, total_cents })
}

async fn a_typed_start_returns_the_typed_result(db: support::TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = worker(&url, "typed").await;
    worker.add(checkout);
    let (stop, handle) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let run = client
        .start(
            checkout,
            Order {
                item: "tea".to_owned(),
                quantity: 3,
            },
        )
        .await
        .expect("start");
    let receipt: Receipt = run.result().await.expect("result");
    assert_eq!(
        receipt,
        Receipt {
            line: "3 x tea = 750".to_owned(),
            total_cents: 750
        }
    );
    let recorded = run.run().await.expect("run");
    assert_eq!(recorded.workflow, "checkout", "named after the fn");
    assert_eq!(recorded.queue, "typed", "the workflow's default queue");
    assert_eq!(recorded.retries, 2, "the workflow's default retries");
    assert_eq!(
        journal(&client, run.id()).await,
        vec![
            ("price".to_owned(), 0, json!(250)),
            ("format-line".to_owned(), 1, json!("3 x tea = 750")),
        ]
    );

    // The string API starts the same workflow by name, as curl or a schedule would.
    let id = client
        .workflow("checkout", "typed", json!({"item": "cake", "quantity": 2}))
        .await
        .expect("start by name");
    let receipt: Receipt = client.result(id).await.expect("result");
    assert_eq!(receipt.total_cents, 200);

    // A run whose input is not an `Order` fails at once, without retries.
    let id = client
        .workflow("checkout", "typed", json!("not an order"))
        .retries(3)
        .await
        .expect("start");
    let err = client.result::<Receipt>(id).await.expect_err("bad input");
    assert!(
        matches!(&err, kagzi::Error::RunFailed { message, .. } if message.contains("invalid workflow input")),
        "{err:?}"
    );
    assert_eq!(client.run(id).await.expect("run").attempts, 1);

    stop.cancel();
    handle.await.expect("worker task").expect("worker stops");
}

// --- a step finished before the worker died is not run again ----------------------------

static RESERVED: AtomicUsize = AtomicUsize::new(0);
static SHIPPED: AtomicUsize = AtomicUsize::new(0);
static SHIP_GATE: AtomicBool = AtomicBool::new(false);

#[step]
async fn reserve(sku: &str) -> anyhow::Result<String> {
    RESERVED.fetch_add(1, Ordering::SeqCst);
    Ok(format!("reservation for {sku}"))
}

#[step]
async fn ship(reservation: &str) -> anyhow::Result<String> {
    wait_open(&SHIP_GATE).await;
    SHIPPED.fetch_add(1, Ordering::SeqCst);
    Ok(format!("shipped {reservation}"))
}

#[workflow]
async fn fulfil(_ctx: WorkflowContext, sku: String) -> anyhow::Result<String> {
    let reservation = reserve(&sku).await?;
    ship(&reservation).await
}

async fn a_step_finished_before_the_worker_died_is_not_run_again(db: support::TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");

    let mut first = worker(&url, "crash").await;
    first.add(fulfil);
    let (_stop, first) = support::spawn_worker(first);
    let run = client
        .start(fulfil, "sku-1".to_owned())
        .queue("crash")
        .retries(0)
        .await
        .expect("start");
    eventually("reserve recorded", Duration::from_secs(20), || async {
        journal(&client, run.id()).await.len() == 1
    })
    .await;
    // The worker dies mid-run: no deregistration, no more heartbeats; its 2 s lease lapses.
    first.abort();
    let _ = first.await;
    assert_eq!(RESERVED.load(Ordering::SeqCst), 1);

    SHIP_GATE.store(true, Ordering::SeqCst);
    let mut second = worker(&url, "crash").await;
    second.add(fulfil);
    let (stop, _second) = support::spawn_worker(second);
    let shipped: String = run
        .result()
        .await
        .expect("the replacement finishes the run");
    assert_eq!(shipped, "shipped reservation for sku-1");
    assert_eq!(
        RESERVED.load(Ordering::SeqCst),
        1,
        "reserve finished before the crash and was replayed, not re-run"
    );
    assert_eq!(SHIPPED.load(Ordering::SeqCst), 1);
    assert_eq!(run.run().await.expect("run").attempts, 2);
    stop.cancel();
}

// --- parallel steps replay with the same keys -------------------------------------------

static FETCHED: AtomicUsize = AtomicUsize::new(0);
static SQUARED: AtomicUsize = AtomicUsize::new(0);
static SUM_GATE: AtomicBool = AtomicBool::new(false);

/// Upper-cases `name` after `ms`, so parallel calls finish out of call order.
#[step]
async fn fetch(name: &str, ms: u64) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    FETCHED.fetch_add(1, Ordering::SeqCst);
    Ok(name.to_uppercase())
}

#[step]
async fn square(n: u64) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_millis(50 - n * 10)).await;
    SQUARED.fetch_add(1, Ordering::SeqCst);
    Ok(n * n)
}

#[step]
async fn total(parts: &[u64]) -> anyhow::Result<u64> {
    wait_open(&SUM_GATE).await;
    Ok(parts.iter().sum())
}

#[workflow]
async fn fan_out(_ctx: WorkflowContext) -> anyhow::Result<(String, u64)> {
    let (a, b) = futures::try_join!(fetch("a", 150), fetch("b", 0))?;
    let squares = futures::future::try_join_all((1..=3).map(square)).await?;
    let sum = total(&squares).await?;
    Ok((a + &b, sum))
}

async fn parallel_steps_replay_with_the_same_keys(db: support::TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");

    let mut first = worker(&url, "fanout").await;
    first.add(fan_out);
    let (_stop, first) = support::spawn_worker(first);
    let run = client
        .start(fan_out, ())
        .queue("fanout")
        .await
        .expect("start");
    eventually(
        "the parallel steps recorded",
        Duration::from_secs(20),
        || async { journal(&client, run.id()).await.len() == 5 },
    )
    .await;
    first.abort();
    let _ = first.await;
    let before = journal(&client, run.id()).await;
    // Keys and positions follow the calls, not the order in which the steps finished.
    assert_eq!(
        before,
        vec![
            ("fetch".to_owned(), 0, json!("A")),
            ("fetch#2".to_owned(), 1, json!("B")),
            ("square".to_owned(), 2, json!(1)),
            ("square#2".to_owned(), 3, json!(4)),
            ("square#3".to_owned(), 4, json!(9)),
        ]
    );

    SUM_GATE.store(true, Ordering::SeqCst);
    let mut second = worker(&url, "fanout").await;
    second.add(fan_out);
    let (stop, _second) = support::spawn_worker(second);
    let output: (String, u64) = run.result().await.expect("result");
    assert_eq!(output, ("AB".to_owned(), 14));
    assert_eq!(
        FETCHED.load(Ordering::SeqCst),
        2,
        "replayed, not re-fetched"
    );
    assert_eq!(
        SQUARED.load(Ordering::SeqCst),
        3,
        "replayed, not re-squared"
    );
    let after = journal(&client, run.id()).await;
    assert_eq!(after[..5], before[..], "the replay found the same keys");
    assert_eq!(after[5], ("total".to_owned(), 5, json!(14)));
    stop.cancel();
}

// --- a workflow changed under a run in flight -------------------------------------------

static CHARGE_GATE: AtomicBool = AtomicBool::new(false);
static REFUNDED: AtomicUsize = AtomicUsize::new(0);

#[step]
async fn authorize(cents: u64) -> anyhow::Result<u64> {
    Ok(cents)
}

#[step]
async fn capture(cents: u64) -> anyhow::Result<u64> {
    wait_open(&CHARGE_GATE).await;
    Ok(cents)
}

#[step]
async fn refund(cents: u64) -> anyhow::Result<u64> {
    REFUNDED.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

/// Version 1: authorize, then capture.
#[workflow(name = "payment")]
async fn payment_v1(_ctx: WorkflowContext, cents: u64) -> anyhow::Result<u64> {
    authorize(cents).await?;
    capture(cents).await
}

/// Version 2, deployed while a version 1 run is in flight: refunds first.
#[workflow(name = "payment")]
async fn payment_v2(_ctx: WorkflowContext, cents: u64) -> anyhow::Result<u64> {
    refund(cents).await?;
    capture(cents).await
}

async fn a_changed_workflow_replayed_against_an_old_journal_fails_with_non_determinism(
    db: support::TestDb,
) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");

    let mut old = worker(&url, "deploy").await;
    old.add(payment_v1);
    let (_stop, old) = support::spawn_worker(old);
    let run = client
        .start(payment_v1, 500)
        .queue("deploy")
        .retries(3)
        .await
        .expect("start");
    eventually("authorize recorded", Duration::from_secs(20), || async {
        journal(&client, run.id()).await.len() == 1
    })
    .await;
    old.abort();
    let _ = old.await;

    CHARGE_GATE.store(true, Ordering::SeqCst);
    let mut new = worker(&url, "deploy").await;
    new.add(payment_v2);
    let (stop, _new) = support::spawn_worker(new);
    let err = run.result().await.expect_err("the replay diverges");
    let kagzi::Error::RunFailed { message, .. } = &err else {
        panic!("expected RunFailed, got {err:?}");
    };
    assert!(
        message.contains("non-deterministic")
            && message.contains("\"authorize\"")
            && message.contains("\"refund\""),
        "the error names both keys: {message}"
    );
    let failed = run.run().await.expect("run");
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(
        failed.attempts, 2,
        "not retried, although 3 retries were allowed"
    );
    assert_eq!(REFUNDED.load(Ordering::SeqCst), 0, "the new step never ran");
    stop.cancel();
}

// The workflows here count their side effects in statics, so each test runs once, on
// PostgreSQL; the stores themselves are covered by the conformance and end-to-end suites.
postgres_only!(
    a_changed_workflow_replayed_against_an_old_journal_fails_with_non_determinism,
    a_typed_start_returns_the_typed_result,
    a_step_finished_before_the_worker_died_is_not_run_again,
    parallel_steps_replay_with_the_same_keys,
);
