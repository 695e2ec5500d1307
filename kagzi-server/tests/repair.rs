//! End-to-end tests of changing and repairing runs in production: a `patched` deploy under a
//! run in flight, retrying a failed run after its bug is fixed, forking a run from a step,
//! bulk actions, pinning runs to a worker build, and the retention reaper — each on
//! PostgreSQL and on SQLite, with a real server, real workers and real HTTP.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kagzi::proto::{ForkRun, RunFilter};
use kagzi::{Client, RunId, RunStatus, StepStatus, Worker, WorkflowContext};
use kagzi_server::config::Retention;
use serde_json::json;
use support::{TestDb, eventually};

/// How many times each step's code ran, by step name.
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<HashMap<String, usize>>>);

impl Effects {
    fn bump(&self, key: &str) {
        *self
            .0
            .lock()
            .expect("lock")
            .entry(key.to_owned())
            .or_default() += 1;
    }

    fn count(&self, key: &str) -> usize {
        self.0.lock().expect("lock").get(key).copied().unwrap_or(0)
    }
}

async fn run_status(client: &Client, id: RunId) -> RunStatus {
    client.run(id).await.expect("run").status
}

async fn completed_keys(client: &Client, id: RunId) -> Vec<String> {
    client
        .steps(id)
        .await
        .expect("steps")
        .into_iter()
        .filter(|s| s.status == StepStatus::Completed && !s.key.starts_with("patch:"))
        .map(|s| s.key)
        .collect()
}

/// Version 1 of `order`: reserve, total, wait for `go`, ship the total.
fn order_v1(worker: &mut Worker, effects: &Effects) {
    let effects = effects.clone();
    worker.register("order", move |ctx: WorkflowContext, (): ()| {
        let effects = effects.clone();
        async move {
            let e = effects.clone();
            ctx.run("reserve", async move {
                e.bump("reserve");
                Ok(())
            })
            .await?;
            let e = effects.clone();
            let total: u64 = ctx
                .run("total", async move {
                    e.bump("total");
                    Ok(100)
                })
                .await?;
            let (): () = ctx.wait_for_signal("go").await?;
            Ok(total)
        }
    });
}

/// Version 2 of `order`: a tax is added to the total, guarded by the patch `tax`.
fn order_v2(worker: &mut Worker, effects: &Effects) {
    let effects = effects.clone();
    worker.register("order", move |ctx: WorkflowContext, (): ()| {
        let effects = effects.clone();
        async move {
            let e = effects.clone();
            ctx.run("reserve", async move {
                e.bump("reserve");
                Ok(())
            })
            .await?;
            let e = effects.clone();
            let total: u64 = if ctx.patched("tax") {
                ctx.run("total-with-tax", async move {
                    e.bump("total-with-tax");
                    Ok(118)
                })
                .await?
            } else {
                ctx.run("total", async move {
                    e.bump("total");
                    Ok(100)
                })
                .await?
            };
            let (): () = ctx.wait_for_signal("go").await?;
            Ok(total)
        }
    });
}

async fn a_patched_deploy_finishes_old_and_new_runs_each_their_own_way(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let effects = Effects::default();

    // Version 1 runs `old` until it waits for `go`, past the point the patch will guard.
    let mut v1 = Worker::builder(&url, "orders")
        .build_id("v1")
        .build()
        .await
        .expect("worker");
    order_v1(&mut v1, &effects);
    let (stop_v1, handle_v1) = support::spawn_worker(v1);
    let old = client.workflow("order", "orders", ()).await.expect("start");
    eventually(
        "the old run waits for go",
        Duration::from_secs(10),
        || async { run_status(&client, old).await == RunStatus::Waiting },
    )
    .await;
    stop_v1.cancel();
    handle_v1.await.expect("join").expect("v1 stops");
    let usage = client.patch_usage("order", "tax").await.expect("usage");
    assert_eq!(
        (usage.old_branch, usage.unmarked, usage.safe_to_remove),
        (0, 1, false),
        "before the patch ever answered, the run in flight may need the old branch"
    );

    // Version 2 is deployed; a new run takes the new branch.
    let mut v2 = Worker::builder(&url, "orders")
        .build_id("v2")
        .build()
        .await
        .expect("worker");
    order_v2(&mut v2, &effects);
    let (stop_v2, _handle_v2) = support::spawn_worker(v2);
    let new = client.workflow("order", "orders", ()).await.expect("start");
    eventually(
        "the new run waits for go",
        Duration::from_secs(10),
        || async { run_status(&client, new).await == RunStatus::Waiting },
    )
    .await;

    // Both are signalled and finish: the old run replays its recorded total, the new one taxes.
    client.signal(old, "go", ()).await.expect("signal");
    client.signal(new, "go", ()).await.expect("signal");
    let old_total: u64 = client.result(old).await.expect("old run completes");
    let new_total: u64 = client.result(new).await.expect("new run completes");
    assert_eq!((old_total, new_total), (100, 118));
    assert_eq!(
        completed_keys(&client, old).await,
        ["reserve", "total", "signal:go"]
    );
    assert_eq!(
        completed_keys(&client, new).await,
        ["reserve", "total-with-tax", "signal:go"]
    );
    assert_eq!(effects.count("total"), 1, "the old run's total ran once");
    assert_eq!(effects.count("reserve"), 2);
    let old_marker = client
        .steps(old)
        .await
        .expect("steps")
        .into_iter()
        .find(|s| s.key == "patch:tax")
        .expect("the old run's answer is journaled");
    assert_eq!(old_marker.output, Some(json!(false)));

    // With every run ended, the patch can be retired.
    let usage = client.patch_usage("order", "tax").await.expect("usage");
    assert!(usage.first_patched_at.is_some());
    assert_eq!(
        (usage.old_branch, usage.unmarked, usage.safe_to_remove),
        (0, 0, true)
    );
    stop_v2.cancel();
}

async fn a_failed_run_is_retried_after_the_fix_as_the_same_run(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let effects = Effects::default();
    let fixed = Arc::new(AtomicBool::new(false));

    let mut worker = Worker::builder(&url, "repair")
        .build()
        .await
        .expect("worker");
    let (e, bug) = (effects.clone(), fixed.clone());
    worker.register("pay", move |ctx: WorkflowContext, (): ()| {
        let (e, fixed) = (e.clone(), bug.clone());
        async move {
            let seen = e.clone();
            ctx.run("reserve", async move {
                seen.bump("reserve");
                Ok(())
            })
            .await?;
            let seen = e.clone();
            ctx.run("charge", async move {
                seen.bump("charge");
                anyhow::ensure!(fixed.load(Ordering::SeqCst), "the card API changed");
                Ok(())
            })
            .await?;
            Ok("paid")
        }
    });
    let (stop, _handle) = support::spawn_worker(worker);

    let id = client.workflow("pay", "repair", ()).await.expect("start");
    let failed = client
        .wait(id, Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.attempts, 1);

    let err = client.retry(RunId::new()).await.expect_err("no such run");
    assert!(
        matches!(err, kagzi::Error::Api { status: 404, .. }),
        "{err:?}"
    );

    fixed.store(true, Ordering::SeqCst);
    let retried = client.retry(id).await.expect("retry");
    assert_eq!(retried.id, id, "the same run");
    assert_eq!(retried.status, RunStatus::Pending);
    let out: String = client.result(id).await.expect("the retry succeeds");
    assert_eq!(out, "paid");
    let run = client.run(id).await.expect("run");
    assert_eq!(run.attempts, 2, "attempts are counted on, not reset");
    assert_eq!(run.error, None);
    assert_eq!(effects.count("reserve"), 1, "the finished step was kept");
    assert_eq!(effects.count("charge"), 2);

    let again = client.retry(id).await.expect_err("completed");
    assert!(
        matches!(&again, kagzi::Error::Api { status: 409, .. }),
        "{again:?}"
    );
    stop.cancel();
}

async fn a_fork_from_step_3_of_5_reruns_only_steps_3_to_5(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let effects = Effects::default();

    let mut worker = Worker::builder(&url, "forks")
        .build()
        .await
        .expect("worker");
    let e = effects.clone();
    worker.register("five", move |ctx: WorkflowContext, base: u64| {
        let e = e.clone();
        async move {
            let mut total = base;
            for n in 1..=5_u64 {
                let seen = e.clone();
                let key = format!("s{n}");
                total = ctx
                    .run(&key.clone(), async move {
                        seen.bump(&key);
                        Ok(total + n)
                    })
                    .await?;
            }
            Ok(total)
        }
    });
    let (stop, _handle) = support::spawn_worker(worker);

    let original = client.workflow("five", "forks", 0).await.expect("start");
    let first: u64 = client.result(original).await.expect("completes");
    assert_eq!(first, 15);
    let before = client.steps(original).await.expect("steps");

    // The fork takes steps 1-2 from the journal (with their results) and a new input, which
    // only steps 3-5 see.
    let fork = client
        .fork(
            original,
            &ForkRun {
                from_step: Some("s3".into()),
                input: Some(json!(1000)),
                queue: None,
            },
        )
        .await
        .expect("fork");
    assert_ne!(fork.id, original);
    assert_eq!(fork.forked_from, Some(original));
    let forked: u64 = client.result(fork.id).await.expect("the fork completes");
    assert_eq!(
        forked, 15,
        "steps 1-2 replayed their results; 3-5 built on them"
    );
    for (key, runs) in [("s1", 1), ("s2", 1), ("s3", 2), ("s4", 2), ("s5", 2)] {
        assert_eq!(effects.count(key), runs, "{key}");
    }
    assert_eq!(
        completed_keys(&client, fork.id).await,
        ["s1", "s2", "s3", "s4", "s5"]
    );
    let after = client.steps(original).await.expect("steps");
    assert_eq!(before, after, "the original is untouched");
    assert_eq!(run_status(&client, original).await, RunStatus::Completed);

    // A step the run never recorded is a 404, and nothing is created.
    let err = client
        .fork(
            original,
            &ForkRun {
                from_step: Some("s9".into()),
                ..ForkRun::default()
            },
        )
        .await
        .expect_err("no such step");
    assert!(
        matches!(err, kagzi::Error::Api { status: 404, .. }),
        "{err:?}"
    );
    let page = client
        .list_runs(RunFilter {
            workflow: Some("five".into()),
            ..RunFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.runs.len(), 2);
    stop.cancel();
}

/// `job`: a step, a durable sleep (so the run is claimed twice), a step; each step says which
/// build ran it.
fn register_job(worker: &mut Worker, build: &'static str) {
    worker.register("job", move |ctx: WorkflowContext, (): ()| async move {
        let first: String = ctx
            .run("first", async move { Ok(build.to_owned()) })
            .await?;
        ctx.sleep("nap", Duration::from_millis(200)).await?;
        let second: String = ctx
            .run("second", async move { Ok(build.to_owned()) })
            .await?;
        Ok(vec![first, second])
    });
}

async fn build_worker(url: &str, build: &'static str) -> Worker {
    let mut worker = Worker::builder(url, "builds")
        .build_id(build)
        .pin("job")
        .build()
        .await
        .expect("worker");
    register_job(&mut worker, build);
    worker
}

async fn a_pinned_run_never_goes_to_a_worker_of_another_build(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");

    let (stop_v1, handle_v1) = support::spawn_worker(build_worker(&url, "v1").await);
    let old = client.workflow("job", "builds", ()).await.expect("start");
    eventually("v1 claims the run", Duration::from_secs(10), || async {
        client.run(old).await.expect("run").build_id.is_some()
    })
    .await;
    let run = client.run(old).await.expect("run");
    assert_eq!(run.build_id.as_deref(), Some("v1"));
    assert!(run.pinned);
    // v1 goes away while the run sleeps; only v2 is left polling.
    stop_v1.cancel();
    handle_v1.await.expect("join").expect("v1 stops");
    let (stop_v2, _handle_v2) = support::spawn_worker(build_worker(&url, "v2").await);
    let new = client.workflow("job", "builds", ()).await.expect("start");
    let new_out: Vec<String> = client.result(new).await.expect("v2 runs new runs");
    assert_eq!(new_out, ["v2", "v2"]);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let waiting = client.run(old).await.expect("run");
    assert_ne!(
        waiting.status,
        RunStatus::Completed,
        "a v2 worker must not finish a run pinned to v1"
    );

    // A v1 worker comes back and finishes it.
    let (stop_v1, _handle) = support::spawn_worker(build_worker(&url, "v1").await);
    let old_out: Vec<String> = client.result(old).await.expect("v1 finishes its run");
    assert_eq!(old_out, ["v1", "v1"]);
    let workers: serde_json::Value = reqwest::get(format!("{url}/v1/workers"))
        .await
        .expect("GET /v1/workers")
        .json()
        .await
        .expect("JSON");
    let builds: Vec<(&str, &serde_json::Value)> = workers["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| (w["build_id"].as_str().unwrap_or(""), &w["pinned_workflows"]))
        .collect();
    assert!(builds.contains(&("v2", &json!(["job"]))), "{workers}");
    stop_v1.cancel();
    stop_v2.cancel();
}

async fn bulk_cancel_and_retry_are_bounded_counted_and_idempotent(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    // No worker serves `later`: its runs stay pending.
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(client.workflow("later", "idle", n).await.expect("start"));
    }
    let other = client.workflow("other", "idle", ()).await.expect("start");
    let filter = RunFilter {
        workflow: Some("later".into()),
        limit: Some(3),
        ..RunFilter::default()
    };
    let first = client.cancel_where(&filter).await.expect("cancel");
    assert_eq!((first.changed.len(), first.more), (3, true));
    let second = client.cancel_where(&filter).await.expect("cancel");
    assert_eq!((second.changed.len(), second.more), (2, false));
    let third = client.cancel_where(&filter).await.expect("cancel");
    assert!(third.changed.is_empty(), "repeating changes nothing");
    for id in &ids {
        assert_eq!(run_status(&client, *id).await, RunStatus::Cancelled);
    }
    assert_eq!(run_status(&client, other).await, RunStatus::Pending);

    let retried = client
        .retry_where(&RunFilter {
            workflow: Some("later".into()),
            status: Some(RunStatus::Cancelled),
            ..RunFilter::default()
        })
        .await
        .expect("retry");
    assert_eq!((retried.changed.len(), retried.more), (5, false));
    for id in &ids {
        assert_eq!(run_status(&client, *id).await, RunStatus::Pending);
    }
    // A filter that names nothing would touch every run: refused.
    let err = client
        .cancel_where(&RunFilter::default())
        .await
        .expect_err("no filter");
    assert!(
        matches!(err, kagzi::Error::Api { status: 422, .. }),
        "{err:?}"
    );
}

async fn the_reaper_deletes_ended_runs_past_retention_and_keeps_the_rest(db: TestDb) {
    let mut config = support::fast_config();
    config.retention_completed = Retention(Some(Duration::from_millis(300)));
    config.retention_failed = Retention(None);
    config.retention_interval_ms = 100;
    let server = db.start_server_with(config).await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");

    let mut worker = Worker::builder(&url, "reap").build().await.expect("worker");
    worker.register("quick", |ctx: WorkflowContext, ok: bool| async move {
        ctx.run("only", async { Ok(()) }).await?;
        anyhow::ensure!(ok, "asked to fail");
        Ok(())
    });
    // A parent that ended while its child has not: deleting it would orphan the child.
    worker.register("parent", |ctx: WorkflowContext, (): ()| async move {
        let child: RunId = ctx.start_child("quick", "idle", true).await?;
        Ok(child)
    });
    let (stop, _handle) = support::spawn_worker(worker);

    let done = client.workflow("quick", "reap", true).await.expect("start");
    let failed = client
        .workflow("quick", "reap", false)
        .await
        .expect("start");
    let parent = client.workflow("parent", "reap", ()).await.expect("start");
    let child: RunId = client.result(parent).await.expect("the parent completes");
    client
        .wait(done, Duration::from_secs(10))
        .await
        .expect("ends");
    client
        .wait(failed, Duration::from_secs(10))
        .await
        .expect("ends");

    eventually(
        "the completed run is deleted",
        Duration::from_secs(10),
        || async {
            matches!(
                client.run(done).await,
                Err(kagzi::Error::Api { status: 404, .. })
            )
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        run_status(&client, failed).await,
        RunStatus::Failed,
        "never"
    );
    assert_eq!(
        run_status(&client, parent).await,
        RunStatus::Completed,
        "kept while its child has not ended"
    );
    assert_eq!(run_status(&client, child).await, RunStatus::Pending);

    // One ended run goes at once; a run that has not ended is refused.
    client.delete(failed).await.expect("delete");
    let err = client.run(failed).await.expect_err("gone");
    assert!(
        matches!(err, kagzi::Error::Api { status: 404, .. }),
        "{err:?}"
    );
    let err = client.delete(child).await.expect_err("not ended");
    assert!(
        matches!(err, kagzi::Error::Api { status: 409, .. }),
        "{err:?}"
    );
    let err = client
        .delete(parent)
        .await
        .expect_err("its child has not ended");
    assert!(
        matches!(err, kagzi::Error::Api { status: 409, .. }),
        "{err:?}"
    );
    stop.cancel();
}

both_stores!(
    a_patched_deploy_finishes_old_and_new_runs_each_their_own_way,
    a_failed_run_is_retried_after_the_fix_as_the_same_run,
    a_fork_from_step_3_of_5_reruns_only_steps_3_to_5,
    a_pinned_run_never_goes_to_a_worker_of_another_build,
    bulk_cancel_and_retry_are_bounded_counted_and_idempotent,
    the_reaper_deletes_ended_runs_past_retention_and_keeps_the_rest,
);
