//! End-to-end tests: a real server over real HTTP, real workers from the SDK, real
//! databases — each test runs on PostgreSQL and on SQLite, a fresh database each time —
//! including the crash cases.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kagzi::{Client, RunId, RunStatus, Worker, WorkflowContext};
use serde_json::{Value, json};
use support::{ServerProcess, TestDb, eventually};

async fn completed_keys(client: &Client, run: RunId) -> Vec<String> {
    let steps = client.steps(run).await.expect("steps");
    steps
        .into_iter()
        .filter(|s| s.status == kagzi::StepStatus::Completed)
        .map(|s| s.key)
        .collect()
}

async fn a_workflow_runs_step_by_step_and_returns_its_typed_output(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let charges = Arc::new(AtomicUsize::new(0));

    let mut worker = Worker::builder(&url, "e2e")
        .max_concurrent(4)
        .build()
        .await
        .expect("worker");
    let counter = charges.clone();
    worker.register("checkout", move |ctx: WorkflowContext, amount: u32| {
        let counter = counter.clone();
        async move {
            let first = ctx
                .run("charge", async {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(amount)
                })
                .await?;
            let second = ctx
                .run("charge", async {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok(amount * 2)
                })
                .await?;
            let receipt: String = ctx
                .run(
                    "receipt",
                    async move { Ok(format!("paid {}", first + second)) },
                )
                .await?;
            Ok(receipt)
        }
    });
    let (stop, handle) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("checkout", "e2e", 10)
        .retries(2)
        .await
        .expect("start");
    let receipt: String = client.result(id).await.expect("result");
    assert_eq!(receipt, "paid 30");
    assert_eq!(charges.load(Ordering::SeqCst), 2);

    let steps = client.steps(id).await.expect("steps");
    let keys: Vec<(&str, u32, Option<&Value>)> = steps
        .iter()
        .map(|s| (s.key.as_str(), s.position, s.output.as_ref()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("charge", 0, Some(&json!(10))),
            ("charge#2", 1, Some(&json!(20))),
            ("receipt", 2, Some(&json!("paid 30"))),
        ]
    );
    let run = client.run(id).await.expect("run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.attempts, 1);
    assert_eq!(run.retries, 2);

    stop.cancel();
    handle
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}

async fn a_failed_run_is_retried_without_rerunning_finished_steps(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let effects = Arc::new(Mutex::new(HashMap::<String, usize>::new()));

    let mut worker = Worker::builder(&url, "retry")
        .build()
        .await
        .expect("worker");
    let seen = effects.clone();
    worker.register("flaky", move |ctx: WorkflowContext, (): ()| {
        let seen = seen.clone();
        async move {
            let bump = |key: &str| {
                *seen
                    .lock()
                    .expect("lock")
                    .entry(key.to_owned())
                    .or_default() += 1
            };
            ctx.run("reserve", async {
                bump("reserve");
                Ok(())
            })
            .await?;
            if ctx.attempt() == 1 {
                anyhow::bail!("the payment provider is down");
            }
            ctx.run("pay", async {
                bump("pay");
                Ok(())
            })
            .await?;
            Ok("done")
        }
    });
    let (stop, _handle) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("flaky", "retry", ())
        .retries(1)
        .await
        .expect("start");
    let out: String = client.result(id).await.expect("the retry succeeds");
    assert_eq!(out, "done");
    let run = client.run(id).await.expect("run");
    assert_eq!(run.attempts, 2);
    assert_eq!(run.error, None, "a completed run carries no stale error");
    let effects = effects.lock().expect("lock").clone();
    assert_eq!(
        effects.get("reserve"),
        Some(&1),
        "the finished step was not re-run"
    );
    assert_eq!(effects.get("pay"), Some(&1));

    // Without retries left, the run fails and the client says why.
    let failing = client.workflow("flaky", "retry", ()).await.expect("start");
    let err = client
        .result::<String>(failing)
        .await
        .expect_err("no retries");
    assert!(
        matches!(&err, kagzi::Error::RunFailed { message, .. } if message.contains("payment provider is down")),
        "{err:?}"
    );
    stop.cancel();
}

async fn cancelling_a_running_run_stops_it_within_a_heartbeat(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let after_cancel = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(tokio::sync::Notify::new());

    let mut worker = Worker::builder(&url, "cancel")
        .build()
        .await
        .expect("worker");
    let (ran, began) = (after_cancel.clone(), started.clone());
    worker.register("slow", move |ctx: WorkflowContext, (): ()| {
        let (ran, began) = (ran.clone(), began.clone());
        async move {
            ctx.run("wait", async {
                began.notify_one();
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            })
            .await?;
            ctx.run("after", async {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await?;
            Ok(())
        }
    });
    let (stop, _handle) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let id = client.workflow("slow", "cancel", ()).await.expect("start");
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the run started");
    let cancelled = client.cancel(id).await.expect("cancel");
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let err = client.result::<()>(id).await.expect_err("cancelled");
    assert!(matches!(err, kagzi::Error::RunCancelled { .. }), "{err:?}");
    // Heartbeats come every 300 ms here; give the worker a few to drop the run.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        after_cancel.load(Ordering::SeqCst),
        0,
        "no step ran after the cancel"
    );
    assert!(
        client.steps(id).await.expect("steps").is_empty(),
        "nothing recorded after the cancel"
    );
    stop.cancel();
}

/// A reclaimed lease fences the old holder: its late reports get 409 and change nothing.
async fn a_worker_whose_lease_was_reclaimed_gets_409_on_its_late_report(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(format!("{url}{path}"))
                .json(&body)
                .send()
                .await
                .expect("request")
        }
    };
    let json = |res: reqwest::Response| async move { res.json::<Value>().await.expect("JSON") };

    let run = json(
        post(
            "/v1/runs".into(),
            json!({"workflow": "w", "queue": "fence"}),
        )
        .await,
    )
    .await;
    let run_id = run["id"].as_str().expect("id").to_owned();
    let register = json!({"queue": "fence", "workflows": ["w"], "capacity": 1});
    let zombie = json(post("/v1/workers".into(), register.clone()).await).await;
    let zombie_id = zombie["id"].as_str().expect("id").to_owned();
    let claim = json(post(format!("/v1/workers/{zombie_id}/poll"), json!({"max": 1})).await).await;
    let old_token = claim["runs"][0]["lease_token"].clone();

    // The zombie stops heartbeating; the watchdog reclaims the run after the 2 s lease.
    let fresh = json(post("/v1/workers".into(), register).await).await;
    let fresh_id = fresh["id"].as_str().expect("id").to_owned();
    let reclaimed = json(
        post(
            format!("/v1/workers/{fresh_id}/poll"),
            json!({"max": 1, "timeout_ms": 10000}),
        )
        .await,
    )
    .await;
    assert_eq!(
        reclaimed["runs"][0]["run_id"],
        run_id.as_str(),
        "the run came back to another worker"
    );
    assert_eq!(reclaimed["runs"][0]["attempt"], 2);
    let new_token = reclaimed["runs"][0]["lease_token"].clone();

    let late_step = json!({"lease_token": old_token, "key": "a", "position": 0, "status": "completed", "output": "zombie"});
    let res = post(format!("/v1/runs/{run_id}/steps"), late_step).await;
    assert_eq!(res.status(), 409);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = post(
        format!("/v1/runs/{run_id}/complete"),
        json!({"lease_token": old_token, "output": "zombie"}),
    )
    .await;
    assert_eq!(res.status(), 409);
    let res = post(
        format!("/v1/runs/{run_id}/complete"),
        json!({"lease_token": new_token, "output": "fresh"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let run = json(
        http.get(format!("{url}/v1/runs/{run_id}"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(run["output"], "fresh");
    let steps = json(
        http.get(format!("{url}/v1/runs/{run_id}/steps"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        steps["steps"],
        json!([]),
        "the zombie's step was not recorded"
    );
}

// --- crash test (a): SIGKILL a worker process in the middle of a 5-step run -------------

const WORKER_URL_ENV: &str = "KAGZI_E2E_WORKER_URL";
const EFFECTS_ENV: &str = "KAGZI_E2E_EFFECTS";

/// Registers the five-step workflow whose every step execution appends its key to `effects`.
fn register_five_steps(worker: &mut Worker, effects: PathBuf) {
    worker.register("five_steps", move |ctx: WorkflowContext, input: u64| {
        let effects = effects.clone();
        async move {
            let mut total = input;
            for i in 1..=5u64 {
                let effects = effects.clone();
                total = ctx
                    .run(&format!("step{i}"), async move {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        append_line(&effects, &format!("step{i}"));
                        Ok(total + i)
                    })
                    .await?;
            }
            Ok(total)
        }
    });
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the effects log");
    writeln!(file, "{line}").expect("append to the effects log");
}

/// Not a test of its own: when the crash test re-runs this test binary with
/// `KAGZI_E2E_WORKER_URL` set, this entry point becomes the worker process it kills.
#[test]
fn e2e_worker_process_entry() {
    let Ok(url) = std::env::var(WORKER_URL_ENV) else {
        return;
    };
    let effects = PathBuf::from(std::env::var(EFFECTS_ENV).expect("effects path"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let mut worker = Worker::builder(url, "crash").build().await.expect("worker");
        register_five_steps(&mut worker, effects);
        worker
            .run_until(std::future::pending())
            .await
            .expect("worker runs until killed");
    });
}

async fn a_killed_worker_process_is_replaced_and_finished_steps_run_exactly_once(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let effects = std::env::temp_dir().join(format!("kagzi-effects-{}", uuid::Uuid::new_v4()));

    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "e2e_worker_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_URL_ENV, &url)
        .env(EFFECTS_ENV, &effects)
        .stdout(Stdio::null())
        .spawn()
        .expect("worker process starts");

    let client = Client::connect(&url).await.expect("client");
    let id = client
        .workflow("five_steps", "crash", 100u64)
        .await
        .expect("start");
    eventually("two steps recorded", Duration::from_secs(30), || async {
        completed_keys(&client, id).await.len() >= 2
    })
    .await;
    child.kill().expect("SIGKILL the worker");
    child.wait().expect("the worker is gone");
    // Let a report the process sent just before it died land before reading the journal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let finished_before_kill = completed_keys(&client, id).await;
    assert!(
        finished_before_kill.len() < 5,
        "the kill landed mid-run: {finished_before_kill:?}"
    );

    let mut worker = Worker::builder(&url, "crash")
        .build()
        .await
        .expect("worker");
    register_five_steps(&mut worker, effects.clone());
    let (stop, _handle) = support::spawn_worker(worker);
    let total: u64 = client
        .result(id)
        .await
        .expect("another worker finishes the run");
    assert_eq!(total, 100 + 1 + 2 + 3 + 4 + 5);
    stop.cancel();

    let log = std::fs::read_to_string(&effects).expect("effects log");
    let _ = std::fs::remove_file(&effects);
    let count = |key: &str| log.lines().filter(|l| *l == key).count();
    for key in &finished_before_kill {
        assert_eq!(
            count(key),
            1,
            "{key} finished before the kill and must not run again:\n{log}"
        );
    }
    for i in 1..=5 {
        assert!(
            count(&format!("step{i}")) >= 1,
            "step{i} ran at least once:\n{log}"
        );
    }
    let run = client.run(id).await.expect("run");
    assert_eq!(
        run.attempts, 2,
        "claimed by the killed worker, then by its replacement"
    );
}

// --- crash test (c): restart the server while 100 runs are in flight --------------------

/// Registers `triple`: three steps `a`, `b`, `c`, each taking `step` and doubling the input.
fn register_triple(worker: &mut Worker, step: Duration) {
    worker.register("triple", move |ctx: WorkflowContext, n: u64| async move {
        let mut acc = n;
        for name in ["a", "b", "c"] {
            acc = ctx
                .run(name, async move {
                    tokio::time::sleep(step).await;
                    Ok(acc * 2)
                })
                .await?;
        }
        Ok(acc)
    });
}

/// Waits for each `triple` run of `ids` (started with `n`) to complete with `n * 8`, each of
/// its steps recorded once; a wait that fails (the run is still going, or the connection
/// broke across a crash) is retried for up to a minute.
async fn assert_triples_completed(client: &Client, ids: Vec<(u64, RunId)>) {
    for (n, id) in ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let output = loop {
            match client.wait(id, Duration::from_secs(5)).await {
                Ok(run) if run.status == RunStatus::Completed => break run.output,
                Ok(run) => panic!("run {id} ended {:?}: {:?}", run.status, run.error),
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "run {id} did not complete: {e}"
                ),
            }
        };
        assert_eq!(output, Some(json!(n * 8)), "run {id} has the right output");
        let keys = completed_keys(client, id).await;
        assert_eq!(
            keys,
            vec!["a", "b", "c"],
            "run {id} recorded each step once"
        );
    }
}

async fn a_server_restart_with_100_runs_in_flight_loses_nothing(db: TestDb) {
    let db_url = db.url();
    let mut server = ServerProcess::start(&db_url, support::free_port()).await;
    let url = server.url.clone();

    let mut worker = Worker::builder(&url, "restart")
        .max_concurrent(20)
        .build()
        .await
        .expect("worker");
    register_triple(&mut worker, Duration::from_millis(40));
    let (stop, _handle) = support::spawn_worker(worker);

    let client = Client::connect(&url).await.expect("client");
    let mut ids = Vec::new();
    for n in 0..100u64 {
        ids.push((
            n,
            client
                .workflow("triple", "restart", n)
                .await
                .expect("start"),
        ));
    }
    eventually("some runs completed", Duration::from_secs(30), || async {
        let done = kagzi::RunFilter::default()
            .status(RunStatus::Completed)
            .limit(1000);
        client
            .list_runs(done)
            .await
            .is_ok_and(|page| page.runs.len() >= 10)
    })
    .await;
    server.restart().await;

    assert_triples_completed(&client, ids).await;
    stop.cancel();
}

// --- crash test (d): the database drops every connection while runs are in flight -------

/// Every connection of the server (pool and notification listener) is killed three times
/// while 100 runs are in flight, as a database restart would: nothing is lost, no step is
/// recorded twice, and wake-ups resume.
#[sqlx::test(migrations = false)]
async fn a_database_outage_with_runs_in_flight_loses_nothing(pool: sqlx::PgPool) {
    use sqlx::Connection;

    let db_url = support::database_url(&pool);
    let database = pool
        .connect_options()
        .get_database()
        .expect("the test database has a name")
        .to_owned();
    drop(pool);
    let server = ServerProcess::start(&db_url, support::free_port()).await;
    let url = server.url.clone();

    let mut worker = Worker::builder(&url, "outage")
        .max_concurrent(20)
        .build()
        .await
        .expect("worker");
    // 100 runs of three 150 ms steps, 20 at a time: at least 2.25 s of work, started before
    // the worker so that the outages below (within the first second) find runs in flight
    // however long the starts took.
    register_triple(&mut worker, Duration::from_millis(150));
    let client = Client::connect(&url).await.expect("client");
    let mut ids = Vec::new();
    for n in 0..100u64 {
        ids.push((
            n,
            client.workflow("triple", "outage", n).await.expect("start"),
        ));
    }
    let (stop, _handle) = support::spawn_worker(worker);
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("an admin connection");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let killed: i64 = sqlx::query_scalar(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
                                   where datname = $1 and pid <> pg_backend_pid()) t",
        )
        .bind(&database)
        .fetch_one(&mut admin)
        .await
        .expect("terminate the server's connections");
        assert!(killed > 0, "the server had connections to kill");
    }
    // Read straight from the database: through the server, the answer could come only
    // after it reconnected, and on a loaded machine every run may have ended by then.
    let mut conn = sqlx::PgConnection::connect(&db_url)
        .await
        .expect("a connection to the test database");
    let completed: i64 =
        sqlx::query_scalar("select count(*) from kagzi.runs where status = 'completed'")
            .fetch_one(&mut conn)
            .await
            .expect("count the completed runs");
    drop(conn);
    assert!(
        completed < 100,
        "runs were still in flight during the outages"
    );

    assert_triples_completed(&client, ids).await;
    stop.cancel();
}

// --- the README's example runs ----------------------------------------------------------

async fn the_simple_example_runs_against_a_real_server(db: TestDb) {
    let server = ServerProcess::start(&db.url(), support::free_port()).await;
    let stdout = support::run_example("simple", &server.url).await;
    assert!(
        stdout.contains("Hello, World!"),
        "example printed: {stdout}"
    );
}

#[sqlx::test(migrations = false)]
async fn an_oversized_step_result_fails_the_run_with_a_clear_error(pool: sqlx::PgPool) {
    let mut config = support::fast_config();
    config.max_payload_bytes = 1024;
    let server = support::start_server_with(pool, config).await;
    let url = support::url(&server);
    let blob_runs = Arc::new(AtomicUsize::new(0));

    let mut worker = Worker::builder(&url, "limits")
        .build()
        .await
        .expect("worker");
    let counter = blob_runs.clone();
    worker.register("big_step", move |ctx: WorkflowContext, (): ()| {
        let counter = counter.clone();
        async move {
            let small: u32 = ctx.run("small", async { Ok(1) }).await?;
            let blob: String = ctx
                .run("blob", async {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Ok("x".repeat(2000))
                })
                .await?;
            Ok(format!("{small} {}", blob.len()))
        }
    });
    worker.register("big_output", |_ctx: WorkflowContext, (): ()| async move {
        Ok("y".repeat(2000))
    });
    let (stop, handle) = support::spawn_worker(worker);
    let client = Client::connect(&url).await.expect("client");

    // Retries are allowed, but retrying cannot shrink the result: the run fails at once.
    let id = client
        .workflow("big_step", "limits", ())
        .retries(3)
        .await
        .expect("start");
    let run = client
        .wait(id, Duration::from_secs(20))
        .await
        .expect("the run ends; it does not hang or retry forever");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.attempts, 1, "not retried");
    let error = run.error.expect("an error");
    assert!(
        error.contains("step blob failed: its result is over the server's payload limit")
            && error.contains("the output of step blob is larger than the limit of 1024 bytes"),
        "{error}"
    );
    assert_eq!(blob_runs.load(Ordering::SeqCst), 1);
    let steps = client.steps(id).await.expect("steps");
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0].key, "small");
    assert_eq!(steps[1].key, "blob");
    assert_eq!(steps[1].status, kagzi::StepStatus::Failed);
    assert!(steps[1].output.is_none(), "nothing half-written");
    assert!(
        steps[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("over the server's payload limit"))
    );

    // An output over the limit fails the run the same way.
    let id = client
        .workflow("big_output", "limits", ())
        .retries(3)
        .await
        .expect("start");
    let run = client
        .wait(id, Duration::from_secs(20))
        .await
        .expect("ends");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.attempts, 1);
    assert!(
        run.error.as_deref().is_some_and(|e| e.contains(
            "the workflow's output is over the server's payload limit: output is larger than the limit of 1024 bytes"
        )),
        "{:?}",
        run.error
    );
    assert_eq!(run.output, None);

    // And an input over the limit is refused when the run is started.
    let refused = client
        .workflow("big_step", "limits", "z".repeat(2000))
        .await
        .expect_err("input over the limit");
    assert!(
        matches!(&refused, kagzi::Error::PayloadTooLarge { detail } if detail.contains("input is larger than the limit of 1024 bytes")),
        "{refused}"
    );

    stop.cancel();
    handle.await.expect("worker task").expect("worker stops");
}

#[sqlx::test(migrations = false)]
async fn with_api_keys_the_sdk_works_end_to_end(pool: sqlx::PgPool) {
    let mut config = support::fast_config();
    config.api_keys = vec!["old-key".into(), "new-key".into()];
    let server = support::start_server_with(pool, config).await;
    let url = support::url(&server);

    let mut worker = Worker::builder(&url, "keys")
        .api_key("new-key")
        .build()
        .await
        .expect("worker");
    worker.register("greet", |ctx: WorkflowContext, name: String| async move {
        let greeting = ctx
            .run("greet", async move { Ok(format!("Hello, {name}!")) })
            .await?;
        Ok(greeting)
    });
    let (stop, handle) = support::spawn_worker(worker);

    let client = Client::connect_with_key(&url, "old-key")
        .await
        .expect("client");
    let id = client
        .workflow("greet", "keys", "World")
        .await
        .expect("start with the old key");
    let greeting: String = client.result(id).await.expect("result");
    assert_eq!(greeting, "Hello, World!");

    let rotated = Client::builder(&url)
        .api_key("new-key")
        .connect()
        .await
        .expect("client");
    assert_eq!(
        rotated.run(id).await.expect("read with the new key").status,
        RunStatus::Completed
    );
    let wrong = Client::builder(&url)
        .api_key("stolen")
        .connect()
        .await
        .expect("healthz needs no key");
    let refused = wrong.run(id).await.expect_err("wrong key");
    assert!(
        matches!(&refused, kagzi::Error::Api { status: 401, detail, .. } if detail.contains("not valid")),
        "{refused}"
    );
    let keyless = Client::builder(&url)
        .api_key("")
        .connect()
        .await
        .expect("client");
    let refused = keyless.run(id).await.expect_err("no key");
    assert!(
        matches!(&refused, kagzi::Error::Api { status: 401, .. }),
        "{refused}"
    );
    assert!(!format!("{client:?} {rotated:?}").contains("-key"));

    stop.cancel();
    handle.await.expect("worker task").expect("worker stops");
}

/// Starts made at the same moment travel together, and reports from many runs too; each
/// is still answered on its own.
async fn many_starts_and_reports_at_once_are_each_answered_on_their_own(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    let starts = (0..200u64).map(|i| {
        let client = client.clone();
        async move {
            let started = match i {
                // An invalid start among valid ones is refused alone.
                100 => client.workflow(" ", "many", json!(i)).await,
                // Two starts with one idempotency key make one run.
                150 | 151 => {
                    client
                        .workflow("double", "many", json!(150))
                        .idempotency_key("one-run")
                        .await
                }
                _ => client.workflow("double", "many", json!(i)).await,
            };
            (i, started)
        }
    });
    let started: Vec<(u64, kagzi::Result<RunId>)> = futures::future::join_all(starts).await;
    let mut ids = HashMap::new();
    for (i, result) in started {
        match (i, result) {
            (100, Err(kagzi::Error::Api { status, detail, .. })) => {
                assert_eq!(status, 422);
                assert!(detail.contains("workflow must not be empty"), "{detail}");
            }
            (100, other) => panic!("the invalid start was not refused: {other:?}"),
            (i, Ok(id)) => {
                ids.insert(i, id);
            }
            (i, Err(e)) => panic!("start {i} failed: {e}"),
        }
    }
    assert_eq!(ids.len(), 199);
    assert_eq!(ids[&150], ids[&151], "one run per idempotency key");
    let distinct: std::collections::HashSet<RunId> = ids.values().copied().collect();
    assert_eq!(distinct.len(), 198);

    let mut worker = Worker::builder(&url, "many")
        .max_concurrent(50)
        .build()
        .await
        .expect("worker");
    worker.register("double", |ctx: WorkflowContext, i: u64| async move {
        let doubled: u64 = ctx.run("double", async move { Ok(i * 2) }).await?;
        let plus: u64 = ctx.run("plus", async move { Ok(doubled + 1) }).await?;
        Ok(plus)
    });
    let stop = worker.shutdown_handle();
    let running = tokio::spawn(worker.run());
    for (i, id) in ids.iter().filter(|(i, _)| **i != 151) {
        let run = client
            .wait(*id, Duration::from_secs(60))
            .await
            .expect("run ends");
        assert_eq!(run.status, RunStatus::Completed, "run {i}: {:?}", run.error);
        assert_eq!(run.output, Some(json!(i * 2 + 1)), "run {i}");
        assert_eq!(
            completed_keys(&client, *id).await,
            vec!["double", "plus"],
            "run {i} recorded each step once"
        );
    }
    stop.shutdown();
    running
        .await
        .expect("worker task")
        .expect("worker stops cleanly");
}

both_stores!(
    a_workflow_runs_step_by_step_and_returns_its_typed_output,
    a_failed_run_is_retried_without_rerunning_finished_steps,
    cancelling_a_running_run_stops_it_within_a_heartbeat,
    a_worker_whose_lease_was_reclaimed_gets_409_on_its_late_report,
    a_killed_worker_process_is_replaced_and_finished_steps_run_exactly_once,
    a_server_restart_with_100_runs_in_flight_loses_nothing,
    the_simple_example_runs_against_a_real_server,
    many_starts_and_reports_at_once_are_each_answered_on_their_own,
);
