//! Durable primitives end to end, on PostgreSQL and on SQLite: sleep, signals, child runs,
//! cancellation of a tree, run timeouts, retry policies and idempotent starts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kagzi::{Client, RetryPolicy, RunFilter, RunId, RunStatus, Worker, WorkflowContext};
use serde_json::json;
use support::{ServerProcess, TestDb};

async fn wait_for_status(client: &Client, id: RunId, status: RunStatus) -> kagzi::Run {
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(run) = client.run(id).await {
            if run.status == status {
                return run;
            }
            seen = Some(run.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("run {id} never reached {status:?}; last seen {seen:?}");
}

async fn a_sleeping_run_wakes_after_a_server_restart(db: TestDb) {
    let mut server = ServerProcess::start(&db.url(), support::free_port()).await;
    let url = server.url.clone();
    let after_sleep = Arc::new(AtomicUsize::new(0));

    let mut worker = Worker::builder(&url, "sleep")
        .build()
        .await
        .expect("worker");
    let counter = after_sleep.clone();
    worker.register("nap", move |ctx: WorkflowContext, (): ()| {
        let counter = counter.clone();
        async move {
            ctx.run("before", async { Ok(()) }).await?;
            ctx.sleep("nap", Duration::from_secs(2)).await?;
            ctx.run("after", async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await?;
            Ok("rested")
        }
    });
    let (stop, _worker) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let started = Instant::now();
    let id = client.workflow("nap", "sleep", ()).await.expect("start");
    let sleeping = wait_for_status(&client, id, RunStatus::Sleeping).await;
    assert!(
        sleeping.wake_at.is_some(),
        "a sleeping run shows its wake time"
    );

    server.restart().await;
    let out: String = client
        .result(id)
        .await
        .expect("the run wakes and completes");
    assert_eq!(out, "rested");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it slept: {:?}",
        started.elapsed()
    );
    assert_eq!(after_sleep.load(Ordering::SeqCst), 1);
    let keys: Vec<String> = client
        .steps(id)
        .await
        .expect("steps")
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys, vec!["before", "sleep:nap", "after"]);
    stop.cancel();
}

async fn signals_are_received_once_in_order_whenever_they_are_sent(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = Worker::builder(&url, "signals")
        .build()
        .await
        .expect("worker");
    worker.register("approvals", |ctx: WorkflowContext, (): ()| async move {
        let first: String = ctx.wait_for_signal("approve").await?;
        ctx.sleep("pause", Duration::from_millis(1500)).await?;
        let second: String = ctx.wait_for_signal("approve").await?;
        let third: String = ctx.wait_for_signal("approve").await?;
        Ok(vec![first, second, third])
    });
    let (stop, _worker) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("approvals", "signals", ())
        .await
        .expect("start");
    // Sent before the run ever waits: kept until received.
    client
        .signal(id, "approve", "before")
        .await
        .expect("signal");
    // Sent while the run sleeps.
    wait_for_status(&client, id, RunStatus::Sleeping).await;
    client
        .signal(id, "approve", "asleep")
        .await
        .expect("signal");
    // Sent while the run waits for it.
    let waiting = wait_for_status(&client, id, RunStatus::Waiting).await;
    assert_eq!(waiting.waiting_for.as_deref(), Some("signal:approve"));
    client
        .signal(id, "approve", "waiting")
        .await
        .expect("signal");

    let got: Vec<String> = client.result(id).await.expect("result");
    assert_eq!(
        got,
        vec!["before", "asleep", "waiting"],
        "each signal received once, in order"
    );
    let late = client
        .signal(id, "approve", "late")
        .await
        .expect_err("the run ended");
    assert!(
        matches!(late, kagzi::Error::Api { status: 409, .. }),
        "{late:?}"
    );
    stop.cancel();
}

async fn a_signal_wait_can_time_out(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = Worker::builder(&url, "timeouts")
        .build()
        .await
        .expect("worker");
    worker.register("maybe", |ctx: WorkflowContext, (): ()| async move {
        let got: Option<String> = ctx
            .wait_for_signal_timeout("ping", Duration::from_millis(500))
            .await?;
        Ok(got.unwrap_or_else(|| "timed out".to_owned()))
    });
    let (stop, _worker) = support::spawn_worker(worker);
    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("maybe", "timeouts", ())
        .await
        .expect("start");
    let out: String = client.result(id).await.expect("result");
    assert_eq!(out, "timed out");
    stop.cancel();
}

async fn a_childs_result_reaches_its_parent_after_the_parents_worker_died(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let child_runs = Arc::new(AtomicUsize::new(0));

    let mut children = Worker::builder(&url, "children")
        .build()
        .await
        .expect("worker");
    let counter = child_runs.clone();
    children.register("square", move |ctx: WorkflowContext, n: u64| {
        let counter = counter.clone();
        async move {
            ctx.run("count", async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await?;
            ctx.sleep("think", Duration::from_millis(800)).await?;
            Ok(n * n)
        }
    });
    let (stop_children, _c) = support::spawn_worker(children);

    let parent_worker = || async {
        let mut parents = Worker::builder(&url, "parents")
            .build()
            .await
            .expect("worker");
        parents.register(
            "sum_of_squares",
            |ctx: WorkflowContext, ns: Vec<u64>| async move {
                let squares = futures::future::try_join_all(
                    ns.iter()
                        .map(|n| ctx.child::<_, u64>("square", "children", n)),
                )
                .await?;
                Ok(squares.iter().sum::<u64>())
            },
        );
        parents
    };
    let (_stop_first, first) = support::spawn_worker(parent_worker().await);

    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("sum_of_squares", "parents", vec![1u64, 2, 3])
        .await
        .expect("start");
    wait_for_status(&client, id, RunStatus::Waiting).await;
    first.abort(); // the parent's worker dies while the parent waits for its children
    let kids = client
        .list_runs(RunFilter::default().parent(id))
        .await
        .expect("children");
    assert_eq!(kids.runs.len(), 3, "the link is visible in the API");
    assert!(kids.runs.iter().all(|k| k.parent_id == Some(id)));

    let (stop_second, _second) = support::spawn_worker(parent_worker().await);
    let sum: u64 = client.result(id).await.expect("the parent completes");
    assert_eq!(sum, 1 + 4 + 9);
    let kids = client
        .list_runs(RunFilter::default().parent(id))
        .await
        .expect("children");
    assert_eq!(kids.runs.len(), 3, "replay started no second child");
    assert!(kids.runs.iter().all(|k| k.status == RunStatus::Completed));
    assert_eq!(
        child_runs.load(Ordering::SeqCst),
        3,
        "each child ran its step once"
    );
    stop_children.cancel();
    stop_second.cancel();
}

async fn cancelling_a_parent_cancels_its_children(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = Worker::builder(&url, "tree").build().await.expect("worker");
    worker.register("parent", |ctx: WorkflowContext, (): ()| async move {
        let out: String = ctx.child("child", "tree", ()).await?;
        Ok(out)
    });
    worker.register("child", |ctx: WorkflowContext, (): ()| async move {
        ctx.sleep("forever", Duration::from_secs(3600)).await?;
        Ok("woke")
    });
    let (stop, _worker) = support::spawn_worker(worker);
    let client = Client::connect(&url).await.expect("client");
    let parent = client.workflow("parent", "tree", ()).await.expect("start");
    wait_for_status(&client, parent, RunStatus::Waiting).await;
    let kids = client
        .list_runs(RunFilter::default().parent(parent))
        .await
        .expect("children");
    let child = kids.runs.first().expect("one child").id;
    wait_for_status(&client, child, RunStatus::Sleeping).await;

    let cancelled = client.cancel(parent).await.expect("cancel");
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(
        client.run(child).await.expect("child").status,
        RunStatus::Cancelled
    );
    stop.cancel();
}

async fn a_run_timeout_fails_the_run_whatever_it_is_doing(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = Worker::builder(&url, "deadline")
        .build()
        .await
        .expect("worker");
    worker.register("slow", |ctx: WorkflowContext, (): ()| async move {
        ctx.sleep("long", Duration::from_secs(60)).await?;
        Ok(())
    });
    let (stop, _worker) = support::spawn_worker(worker);
    let client = Client::connect(&url).await.expect("client");
    let started = Instant::now();
    let id = client
        .workflow("slow", "deadline", ())
        .timeout(Duration::from_millis(700))
        .await
        .expect("start");
    let err = client.result::<()>(id).await.expect_err("timed out");
    assert!(
        matches!(&err, kagzi::Error::RunFailed { message, .. } if message.contains("timed out")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it did not wait for the sleep"
    );
    stop.cancel();
}

async fn a_retry_policy_bounds_attempts_and_skips_non_retryable_errors(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let mut worker = Worker::builder(&url, "policy")
        .build()
        .await
        .expect("worker");
    worker.register(
        "always_fails",
        |ctx: WorkflowContext, kind: String| async move {
            Err::<(), _>(anyhow::anyhow!("{kind} on attempt {}", ctx.attempt()))
        },
    );
    let (stop, _worker) = support::spawn_worker(worker);
    let client = Client::connect(&url).await.expect("client");
    let policy = RetryPolicy {
        max_attempts: 3,
        initial_interval: Duration::from_millis(20),
        backoff_coefficient: 2.0,
        max_interval: Duration::from_millis(100),
    };
    let flaky = client
        .workflow("always_fails", "policy", "transient")
        .retry_policy(policy, &["card declined"])
        .await
        .expect("start");
    assert!(client.result::<()>(flaky).await.is_err());
    let run = client.run(flaky).await.expect("run");
    assert_eq!((run.status, run.attempts), (RunStatus::Failed, 3));
    assert_eq!(run.error.as_deref(), Some("transient on attempt 3"));

    let fatal = client
        .workflow("always_fails", "policy", "card declined")
        .retry_policy(policy, &["card declined"])
        .await
        .expect("start");
    assert!(client.result::<()>(fatal).await.is_err());
    assert_eq!(
        client.run(fatal).await.expect("run").attempts,
        1,
        "not retried"
    );
    stop.cancel();
}

async fn duplicate_starts_with_one_idempotency_key_create_one_run(db: TestDb) {
    let server = db.start_server().await;
    let client = Client::connect(support::url(&server))
        .await
        .expect("client");
    let first = client
        .workflow("w", "idem", json!({"order": 7}))
        .idempotency_key("order-7")
        .await
        .expect("start");
    let again = client
        .workflow("w", "idem", json!({"order": 7}))
        .idempotency_key("order-7")
        .await
        .expect("start");
    assert_eq!(first, again);
    let runs = client
        .list_runs(RunFilter::default().queue("idem"))
        .await
        .expect("list");
    assert_eq!(runs.runs.len(), 1);
    assert_eq!(runs.runs[0].idempotency_key.as_deref(), Some("order-7"));
    let other = client
        .workflow("w", "idem", json!({"order": 8}))
        .idempotency_key("order-7")
        .await;
    assert!(
        matches!(other, Err(kagzi::Error::Api { status: 409, .. })),
        "{other:?}"
    );
    // A cancelled run still holds its key.
    client.cancel(first).await.expect("cancel");
    let after = client
        .workflow("w", "idem", json!({"order": 7}))
        .idempotency_key("order-7")
        .await;
    assert_eq!(after.expect("start"), first);
}

both_stores!(
    a_sleeping_run_wakes_after_a_server_restart,
    signals_are_received_once_in_order_whenever_they_are_sent,
    a_signal_wait_can_time_out,
    a_childs_result_reaches_its_parent_after_the_parents_worker_died,
    cancelling_a_parent_cancels_its_children,
    a_run_timeout_fails_the_run_whatever_it_is_doing,
    a_retry_policy_bounds_attempts_and_skips_non_retryable_errors,
    duplicate_starts_with_one_idempotency_key_create_one_run,
);
