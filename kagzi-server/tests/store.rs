//! The store conformance suite: every test runs against PostgreSQL (a fresh database per
//! test) and against SQLite (a fresh in-memory database per test), through the `Store` trait.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use kagzi_server::model::{Lease, RunId, RunStatus, StepStatus, Task, Worker};
use kagzi_server::schedule::{CatchUp, Overlap, ScheduleId};
use kagzi_server::store::{
    Backoff, Claim, Completion, Error, Fork, NewRun, NewSchedule, NewWorker, PgStore, RunFilter,
    ScheduleFilter, ScheduleFire, ScheduleKey, ScheduleSpec, ScheduleUpdate, SqliteStore,
    StepReport, StepWrite, Store, Suspend, WorkerFilter, WorkerStatus,
};
use serde_json::json;
use sqlx::PgPool;

mod support;

const LEASE: chrono::Duration = chrono::Duration::seconds(30);

fn new_run(workflow: &str, input: serde_json::Value, now: DateTime<Utc>) -> NewRun {
    NewRun {
        workflow: workflow.to_owned(),
        queue: "default".to_owned(),
        input,
        retries: 0,
        available_at: now,
        parent_id: None,
        idempotency_key: None,
        idempotency_cutoff: None,
        deadline_at: None,
        retry_policy: None,
        claim: None,
    }
}

async fn worker(store: &dyn Store, workflows: &[&str]) -> Worker {
    let new = NewWorker {
        queue: "default".to_owned(),
        workflows: workflows.iter().map(|w| (*w).to_owned()).collect(),
        capacity: 10,
        hostname: Some("test".to_owned()),
        build_id: None,
        pinned_workflows: Vec::new(),
    };
    let id = store
        .register_worker(&new, Utc::now())
        .await
        .expect("register");
    store.get_worker(id).await.expect("worker exists")
}

/// The lease token under which `run` was claimed among `tasks`.
fn lease_of(tasks: &[Task], run: RunId) -> uuid::Uuid {
    tasks
        .iter()
        .find(|t| t.run_id == run)
        .expect("claimed")
        .lease_token
}

fn completed(key: &str, position: u32, output: serde_json::Value) -> StepReport {
    StepReport {
        key: key.to_owned(),
        position,
        status: StepStatus::Completed,
        output: Some(output),
        error: None,
        attempts: 1,
    }
}

async fn claim_takes_due_runs_in_batches_oldest_first(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let at = now + chrono::Duration::milliseconds(i);
        ids.push(
            store
                .create_run(&new_run("greet", json!(i), at), at)
                .await
                .expect("create")
                .id,
        );
    }
    let w = worker(&*store, &["greet"]).await;
    let later = now + chrono::Duration::seconds(1);
    let first = store
        .claim(&w, 3, later + LEASE, later)
        .await
        .expect("claim");
    assert_eq!(first.iter().map(|t| t.run_id).collect::<Vec<_>>(), ids[..3]);
    assert!(first.iter().all(|t| t.attempt == 1 && t.journal.is_empty()));
    let second = store
        .claim(&w, 3, later + LEASE, later)
        .await
        .expect("claim");
    assert_eq!(
        second.iter().map(|t| t.run_id).collect::<Vec<_>>(),
        ids[3..]
    );
    assert!(
        store
            .claim(&w, 3, later + LEASE, later)
            .await
            .expect("claim")
            .is_empty()
    );
    let run = store.get_run(ids[0]).await.expect("run");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.attempts, 1);
    assert!(run.started_at.is_some());
}

async fn a_claim_takes_the_oldest_due_runs_across_its_workers_workflows(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut ids = Vec::new();
    for (i, workflow) in ["greet", "wave", "wave", "greet", "wave", "greet"]
        .into_iter()
        .enumerate()
    {
        let at = now + chrono::Duration::milliseconds(i as i64);
        ids.push(
            store
                .create_run(&new_run(workflow, json!(i), at), at)
                .await
                .expect("create")
                .id,
        );
    }
    let w = worker(&*store, &["wave", "greet", "absent"]).await;
    let later = now + chrono::Duration::seconds(1);
    let mut taken = Vec::new();
    for expected in [4, 2, 0] {
        let tasks = store
            .claim(&w, 4, later + LEASE, later)
            .await
            .expect("claim");
        assert_eq!(tasks.len(), expected, "claimed {tasks:?}");
        taken.extend(tasks.into_iter().map(|t| t.run_id));
    }
    assert_eq!(taken, ids, "oldest first, whichever workflow");
    let later_still = later + chrono::Duration::minutes(1);
    store
        .create_run(&new_run("wave", json!("late"), later_still), now)
        .await
        .expect("create");
    let (tasks, next) = store
        .claim_or_next_due(&w, 4, later + LEASE, later)
        .await
        .expect("claim");
    assert!(tasks.is_empty());
    let next = next.expect("a run comes due later");
    assert!(
        (next - later_still).num_milliseconds().abs() < 1,
        "due {next}"
    );
}

async fn a_worker_with_the_most_workflows_registration_allows_claims(store: Arc<dyn Store>) {
    let now = Utc::now();
    let names: Vec<String> = (0..1000).map(|n| format!("flow-{n}")).collect();
    let run = store
        .create_run(&new_run("flow-999", json!(1), now), now)
        .await
        .expect("create");
    let w = worker(
        &*store,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let next = store
        .next_due(&w)
        .await
        .expect("next due")
        .expect("a run is due");
    assert!((next - now).num_milliseconds().abs() < 1, "due {next}");
    let tasks = store.claim(&w, 10, now + LEASE, now).await.expect("claim");
    assert_eq!(tasks.iter().map(|t| t.run_id).collect::<Vec<_>>(), [run.id]);
}

async fn claim_skips_runs_not_due_and_other_workflows_and_queues(store: Arc<dyn Store>) {
    let now = Utc::now();
    // Postgres keeps microseconds.
    let later = (now + chrono::Duration::minutes(5)).trunc_subsecs(6);
    let delayed = store
        .create_run(&new_run("greet", json!(1), later), now)
        .await
        .expect("create")
        .id;
    store
        .create_run(&new_run("other", json!(2), now), now)
        .await
        .expect("create");
    let mut elsewhere = new_run("greet", json!(3), now);
    elsewhere.queue = "elsewhere".to_owned();
    store.create_run(&elsewhere, now).await.expect("create");

    let w = worker(&*store, &["greet"]).await;
    assert!(
        store
            .claim(&w, 10, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.next_due(&w).await.expect("next due"), Some(later));
    let then = later + chrono::Duration::seconds(1);
    let tasks = store
        .claim(&w, 10, then + LEASE, then)
        .await
        .expect("claim");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].run_id, delayed);
}

async fn concurrent_claims_never_hand_out_a_run_twice(store: Arc<dyn Store>) {
    let now = Utc::now();
    for i in 0..60 {
        store
            .create_run(&new_run("greet", json!(i), now), now)
            .await
            .expect("create");
    }
    let w = worker(&*store, &["greet"]).await;
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (store, w) = (store.clone(), w.clone());
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let now = Utc::now();
                let tasks = store.claim(&w, 4, now + LEASE, now).await.expect("claim");
                if tasks.is_empty() {
                    return mine;
                }
                mine.extend(tasks.into_iter().map(|t| t.run_id));
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("claimer"));
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "every run claimed");
    assert_eq!(unique.len(), 60, "no run claimed twice");
}

async fn a_step_is_recorded_once_and_replayed_in_the_journal(store: Arc<dyn Store>) {
    let now = Utc::now();
    let id = store
        .create_run(&new_run("greet", json!({}), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);

    let first = store
        .record_step(id, task.lease_token, &completed("charge", 0, json!(1)), now)
        .await
        .expect("first report");
    assert_eq!(first.output, Some(json!(1)));
    let again = store
        .record_step(id, task.lease_token, &completed("charge", 0, json!(2)), now)
        .await
        .expect("second report");
    assert_eq!(again.output, Some(json!(1)), "the first write wins");

    // A failed entry is replaced by a later success.
    let failed = StepReport {
        status: StepStatus::Failed,
        output: None,
        error: Some("card declined".to_owned()),
        ..completed("notify", 1, json!(null))
    };
    store
        .record_step(id, task.lease_token, &failed, now)
        .await
        .expect("failed report");
    let ok = store
        .record_step(
            id,
            task.lease_token,
            &completed("notify", 1, json!("sent")),
            now,
        )
        .await
        .expect("success after failure");
    assert_eq!(ok.status, StepStatus::Completed);
    assert_eq!(ok.attempts, 2);

    // The run goes back to pending (its lease expires) and the next claim sees the journal.
    let expiry = now + LEASE + chrono::Duration::seconds(1);
    assert_eq!(store.expire_leases(expiry).await.expect("expire"), 1);
    let retry = store
        .claim(&w, 1, expiry + LEASE, expiry)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(retry.attempt, 2);
    let journal: Vec<_> = retry
        .journal
        .iter()
        .map(|j| (j.key.as_str(), j.output.clone()))
        .collect();
    assert_eq!(
        journal,
        vec![("charge", json!(1)), ("notify", json!("sent"))]
    );
}

/// A batch of reports from several runs is recorded as the reports would be one by one:
/// first write wins, a failed entry is replaced, a repeated key in the batch gets the first
/// value, and a report under a lost lease is refused without touching the others.
async fn a_batch_of_step_reports_keeps_every_rule_of_single_reports(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let mut runs = Vec::new();
    for i in 0..3 {
        let id = store
            .create_run(&new_run("greet", json!(i), now), now)
            .await
            .expect("create")
            .id;
        let task = store
            .claim(&w, 1, now + LEASE, now)
            .await
            .expect("claim")
            .remove(0);
        assert_eq!(task.run_id, id);
        runs.push((id, task.lease_token));
    }
    let (a, b, c) = (runs[0], runs[1], runs[2]);
    store
        .record_step(a.0, a.1, &completed("charge", 0, json!("old")), now)
        .await
        .expect("an earlier report");
    let failed = StepReport {
        status: StepStatus::Failed,
        output: None,
        error: Some("timeout".to_owned()),
        ..completed("fetch", 0, json!(null))
    };
    store
        .record_step(b.0, b.1, &failed, now)
        .await
        .expect("a failed report");
    // Run c's lease is taken over by a newer claim: its old token is stale.
    store.cancel_run(c.0, now).await.expect("cancel c");

    let write = |run: (kagzi_server::model::RunId, uuid::Uuid), report: StepReport| StepWrite {
        run: run.0,
        lease_token: run.1,
        report,
    };
    let writes = vec![
        write(a, completed("charge", 0, json!("new"))),
        write(a, completed("ship", 1, json!("first"))),
        write(b, completed("fetch", 0, json!("fetched"))),
        write(a, completed("ship", 1, json!("second"))),
        write(c, completed("charge", 0, json!("zombie"))),
        write(b, completed("store", 1, json!("stored"))),
    ];
    let results = store.record_steps(&writes, now).await;
    assert_eq!(results.len(), writes.len(), "one result per report");
    let outputs: Vec<Option<serde_json::Value>> = results
        .iter()
        .map(|r| r.as_ref().ok().and_then(|s| s.output.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            Some(json!("old")),
            Some(json!("first")),
            Some(json!("fetched")),
            Some(json!("first")),
            None,
            Some(json!("stored")),
        ]
    );
    assert!(
        matches!(results[4], Err(Error::LeaseLost(id)) if id == c.0),
        "{:?}",
        results[4]
    );
    let fetched = results[2].as_ref().expect("fetched");
    assert_eq!(
        (fetched.status, fetched.attempts),
        (StepStatus::Completed, 2)
    );
    assert!(
        store.list_steps(c.0).await.expect("steps of c").is_empty(),
        "the refused report wrote nothing"
    );
    let keys: Vec<String> = store
        .list_steps(a.0)
        .await
        .expect("steps of a")
        .into_iter()
        .map(|s| s.key)
        .collect();
    assert_eq!(keys, vec!["charge", "ship"]);
}

/// A batch of completions completes each run under its lease, wakes waiting parents, and
/// refuses a stale lease or a second completion of the same run without touching the others.
async fn a_batch_of_completions_keeps_every_rule_of_single_completions(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let parent = store
        .create_run(&new_run("greet", json!("parent"), now), now)
        .await
        .expect("create parent")
        .id;
    let parent_task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim parent")
        .remove(0);
    let mut ids = Vec::new();
    for i in 0..3 {
        let new = NewRun {
            parent_id: (i == 0).then_some(parent),
            ..new_run("greet", json!(i), now)
        };
        ids.push(store.create_run(&new, now).await.expect("create").id);
    }
    let tasks = store.claim(&w, 3, now + LEASE, now).await.expect("claim");
    let lease = |id| lease_of(&tasks, id);
    let wait = Suspend {
        child: Some(ids[0]),
        ..Suspend::default()
    };
    let waiting = store
        .suspend_run(parent, parent_task.lease_token, &wait, now)
        .await
        .expect("suspend");
    assert_eq!(waiting.status, RunStatus::Waiting);
    store.cancel_run(ids[2], now).await.expect("cancel");

    let complete = |id, output| Completion {
        run: id,
        lease_token: lease(id),
        output,
        steps: Vec::new(),
    };
    let batch = vec![
        complete(ids[0], json!("child")),
        complete(ids[1], json!("plain")),
        complete(ids[2], json!("cancelled meanwhile")),
        complete(ids[1], json!("twice")),
    ];
    let results = store.complete_runs(&batch, now).await;
    assert_eq!(results.len(), batch.len(), "one result per completion");
    let outputs: Vec<Option<serde_json::Value>> = results
        .iter()
        .map(|r| r.as_ref().ok().and_then(|run| run.output.clone()))
        .collect();
    assert_eq!(
        outputs,
        vec![Some(json!("child")), Some(json!("plain")), None, None]
    );
    assert!(
        matches!(results[2], Err(Error::LeaseLost(id)) if id == ids[2]),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(results[3], Err(Error::LeaseLost(id)) if id == ids[1]),
        "{:?}",
        results[3]
    );
    let plain = store.get_run(ids[1]).await.expect("run");
    assert_eq!(
        (plain.status, plain.output),
        (RunStatus::Completed, Some(json!("plain")))
    );
    assert_eq!(
        store.get_run(ids[2]).await.expect("run").status,
        RunStatus::Cancelled,
        "the refused completion changed nothing"
    );
    assert_eq!(
        store.get_run(parent).await.expect("parent").status,
        RunStatus::Pending,
        "the waiting parent was woken"
    );
}

/// A batch of starts starts each run as a single start would: in order, each claimable,
/// and an idempotency key (taken earlier or earlier in the batch) answers the existing run
/// or a conflict.
async fn a_batch_of_starts_keeps_every_rule_of_single_starts(store: Arc<dyn Store>) {
    let now = Utc::now();
    let keyed = |key: &str, input| NewRun {
        idempotency_key: Some(key.to_owned()),
        ..new_run("greet", input, now)
    };
    let earlier = store
        .create_run(&keyed("order-1", json!(1)), now)
        .await
        .expect("an earlier start");
    let batch = vec![
        new_run("greet", json!("plain"), now),
        keyed("order-1", json!(1)),
        keyed("order-2", json!(2)),
        keyed("order-2", json!(2)),
        keyed("order-1", json!("other input")),
        new_run("greet", json!("plain"), now),
    ];
    let results = store.create_runs(&batch, now).await;
    assert_eq!(results.len(), batch.len(), "one result per start");
    let created: Vec<Option<(bool, uuid::Uuid)>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|c| (c.existing, c.id.0)))
        .collect();
    assert_eq!(created[1], Some((true, earlier.id.0)), "the earlier run");
    assert_eq!(created[2].map(|c| c.0), Some(false), "a new keyed run");
    assert_eq!(
        created[3],
        created[2].map(|c| (true, c.1)),
        "the same run again"
    );
    assert!(
        matches!(results[4], Err(Error::Conflict(_))),
        "{:?}",
        results[4]
    );
    assert!(created[0].is_some_and(|c| !c.0) && created[5].is_some_and(|c| !c.0));
    assert_ne!(created[0], created[5], "two plain starts are two runs");

    let w = worker(&*store, &["greet"]).await;
    let claimed = store.claim(&w, 10, now + LEASE, now).await.expect("claim");
    let mut inputs: Vec<serde_json::Value> = claimed.into_iter().map(|t| t.input).collect();
    inputs.sort_by_key(|v| v.to_string());
    assert_eq!(
        inputs,
        vec![json!("plain"), json!("plain"), json!(1), json!(2)],
        "every new run is due, and no other"
    );
}

/// An idempotency key answers with its run until its retention window passes; then a start
/// with the key starts a new run, which holds the key from then on. A child run's key never
/// expires: a parent's replay must not start a second child.
async fn an_idempotency_key_expires_after_its_window_except_for_child_runs(store: Arc<dyn Store>) {
    let t0 = Utc::now();
    let later = t0 + chrono::Duration::hours(25);
    let keyed = |key: &str, cutoff: Option<DateTime<Utc>>| NewRun {
        idempotency_key: Some(key.to_owned()),
        idempotency_cutoff: cutoff,
        ..new_run("greet", json!("same input"), t0)
    };
    let first = store
        .create_run(&keyed("daily-report", None), t0)
        .await
        .expect("first start");
    let within = store
        .create_run(
            &keyed("daily-report", Some(t0 - chrono::Duration::hours(1))),
            t0,
        )
        .await
        .expect("start within the window");
    assert_eq!((within.id, within.existing), (first.id, true));

    // A day later the window (24 h) has passed: a new run takes the key.
    let cutoff = Some(later - chrono::Duration::hours(24));
    let second = store
        .create_run(&keyed("daily-report", cutoff), later)
        .await
        .expect("start after the window");
    assert!(!second.existing && second.id != first.id, "a new run");
    let again = store
        .create_run(&keyed("daily-report", cutoff), later)
        .await
        .expect("start again");
    assert_eq!(
        (again.id, again.existing),
        (second.id, true),
        "the new run holds the key"
    );
    assert!(
        store.get_run(first.id).await.is_ok(),
        "the old run is kept, only its key was released"
    );

    // A child run's key is kept however old it is.
    let parent = store
        .create_run(&new_run("greet", json!("parent"), t0), t0)
        .await
        .expect("parent")
        .id;
    let child = |cutoff| NewRun {
        parent_id: Some(parent),
        ..keyed("parent/child:greet", cutoff)
    };
    let started = store.create_run(&child(None), t0).await.expect("child");
    let replayed = store
        .create_run(&child(cutoff), later)
        .await
        .expect("the child start replayed a day later");
    assert_eq!((replayed.id, replayed.existing), (started.id, true));
}

/// A completion may carry steps not reported yet: they are recorded (first write wins)
/// before the run completes; under a lost lease neither happens.
async fn a_completion_records_the_steps_it_carries_first(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            store
                .create_run(&new_run("greet", json!(i), now), now)
                .await
                .expect("create")
                .id,
        );
    }
    let tasks = store.claim(&w, 3, now + LEASE, now).await.expect("claim");
    let lease = |id| lease_of(&tasks, id);
    store
        .record_step(
            ids[1],
            lease(ids[1]),
            &completed("charge", 0, json!("first")),
            now,
        )
        .await
        .expect("an earlier report");
    store.cancel_run(ids[2], now).await.expect("cancel");
    let carrying = |id, steps| Completion {
        run: id,
        lease_token: lease(id),
        output: json!("out"),
        steps,
    };
    let batch = [
        carrying(
            ids[0],
            vec![completed("a", 0, json!(1)), completed("b", 1, json!(2))],
        ),
        carrying(ids[1], vec![completed("charge", 0, json!("second"))]),
        carrying(ids[2], vec![completed("zombie", 0, json!(0))]),
    ];
    for results in [
        store.complete_runs(&batch[..1], now).await,
        store.complete_runs(&batch[1..], now).await,
    ] {
        assert!(!results.is_empty());
    }
    let steps = |id| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_steps(id)
                .await
                .expect("steps")
                .into_iter()
                .map(|s| (s.key, s.output))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        store.get_run(ids[0]).await.expect("run").status,
        RunStatus::Completed
    );
    assert_eq!(
        steps(ids[0]).await,
        vec![
            ("a".to_owned(), Some(json!(1))),
            ("b".to_owned(), Some(json!(2)))
        ]
    );
    assert_eq!(
        store.get_run(ids[1]).await.expect("run").status,
        RunStatus::Completed
    );
    assert_eq!(
        steps(ids[1]).await,
        vec![("charge".to_owned(), Some(json!("first")))],
        "the first write wins"
    );
    assert_eq!(
        store.get_run(ids[2]).await.expect("run").status,
        RunStatus::Cancelled
    );
    assert!(
        steps(ids[2]).await.is_empty(),
        "nothing written under a lost lease"
    );
}

async fn reports_under_an_expired_or_reclaimed_lease_are_refused_and_change_nothing(
    store: Arc<dyn Store>,
) {
    let now = Utc::now();
    let id = store
        .create_run(&new_run("greet", json!({}), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let old = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);

    // Expired but not yet reclaimed: refused.
    let after = now + LEASE + chrono::Duration::seconds(1);
    let err = store
        .record_step(id, old.lease_token, &completed("a", 0, json!(1)), after)
        .await
        .expect_err("expired lease");
    assert!(matches!(err, Error::LeaseLost(r) if r == id), "{err:?}");

    // Reclaimed by another worker: the old token is refused everywhere.
    store.expire_leases(after).await.expect("expire");
    let new = store
        .claim(&w, 1, after + LEASE, after)
        .await
        .expect("claim")
        .remove(0);
    assert_ne!(new.lease_token, old.lease_token);
    let zombie_step = completed("a", 0, json!("zombie"));
    let step = store
        .record_step(id, old.lease_token, &zombie_step, after)
        .await;
    assert!(matches!(step, Err(Error::LeaseLost(_))));
    let zombie_output = json!("zombie");
    let complete = store
        .complete_run(id, old.lease_token, &zombie_output, after)
        .await;
    assert!(matches!(complete, Err(Error::LeaseLost(_))));
    let fail = store.fail_run(id, old.lease_token, "zombie", true, backoff(), after);
    assert!(matches!(fail.await, Err(Error::LeaseLost(_))));
    assert!(
        store.list_steps(id).await.expect("steps").is_empty(),
        "nothing written"
    );
    assert_eq!(
        store.get_run(id).await.expect("run").status,
        RunStatus::Running
    );

    // The new holder completes normally.
    let run = store
        .complete_run(id, new.lease_token, &json!("ok"), after)
        .await
        .expect("complete");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("ok")));
    assert_eq!(run.attempts, 2);
    let unknown = kagzi_server::model::RunId::new();
    let missing = store
        .complete_run(unknown, new.lease_token, &json!(1), after)
        .await;
    assert!(matches!(missing, Err(Error::NotFound(_))));
}

fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    }
}

async fn a_failed_run_is_retried_with_backoff_then_fails(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut new = new_run("greet", json!({}), now);
    new.retries = 1;
    let id = store.create_run(&new, now).await.expect("create").id;
    let w = worker(&*store, &["greet"]).await;

    let first = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    let run = store
        .fail_run(id, first.lease_token, "boom", true, backoff(), now)
        .await
        .expect("fail");
    assert_eq!(run.status, RunStatus::Pending, "one retry left");
    assert_eq!(run.error.as_deref(), Some("boom"));
    assert!(
        store
            .claim(&w, 1, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty(),
        "backoff"
    );
    let due = store
        .next_due(&w)
        .await
        .expect("next due")
        .expect("a due time");
    let delay = (due - now).to_std().expect("in the future");
    assert!(
        delay >= Duration::from_millis(800) && delay <= Duration::from_millis(1200),
        "{delay:?}"
    );

    let second = store
        .claim(&w, 1, due + LEASE, due)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(second.attempt, 2);
    let run = store
        .fail_run(id, second.lease_token, "boom again", true, backoff(), due)
        .await;
    let run = run.expect("fail");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.as_deref(), Some("boom again"));
    assert!(run.finished_at.is_some());
}

async fn a_non_retryable_failure_ends_the_run_at_once(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut new = new_run("greet", json!({}), now);
    new.retries = 5;
    let id = store.create_run(&new, now).await.expect("create").id;
    let w = worker(&*store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    let run = store
        .fail_run(id, task.lease_token, "bad input", false, backoff(), now)
        .await;
    assert_eq!(run.expect("fail").status, RunStatus::Failed);
}

async fn heartbeats_extend_held_leases_and_name_the_lost_ones(store: Arc<dyn Store>) {
    let now = Utc::now();
    let a = store
        .create_run(&new_run("greet", json!(1), now), now)
        .await
        .expect("create")
        .id;
    let b = store
        .create_run(&new_run("greet", json!(2), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let tasks = store.claim(&w, 2, now + LEASE, now).await.expect("claim");
    let leases: Vec<Lease> = tasks
        .iter()
        .map(|t| Lease {
            run_id: t.run_id,
            lease_token: t.lease_token,
        })
        .collect();

    store.cancel_run(b, now).await.expect("cancel");
    let lost = store
        .heartbeat(w.id, &leases, now + LEASE * 2, now)
        .await
        .expect("heartbeat");
    assert_eq!(lost, vec![b]);

    // a's lease now outlives its first expiry: the watchdog leaves it alone.
    let past_first_expiry = now + LEASE + chrono::Duration::seconds(1);
    assert_eq!(
        store
            .expire_leases(past_first_expiry)
            .await
            .expect("expire"),
        0
    );
    let token = leases
        .iter()
        .find(|l| l.run_id == a)
        .expect("a's lease")
        .lease_token;
    store
        .complete_run(a, token, &json!("ok"), past_first_expiry)
        .await
        .expect("still held");

    let unknown = kagzi_server::model::WorkerId::new();
    let err = store
        .heartbeat(unknown, &[], now + LEASE, now)
        .await
        .expect_err("unknown worker");
    assert!(matches!(err, Error::NotFound(_)));
}

async fn deregistering_a_worker_hands_its_runs_back(store: Arc<dyn Store>) {
    let now = Utc::now();
    let id = store
        .create_run(&new_run("greet", json!(1), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(
        store
            .deregister_worker(w.id, now)
            .await
            .expect("deregister"),
        1
    );
    assert_eq!(
        store.get_run(id).await.expect("run").status,
        RunStatus::Pending
    );
    let late = store
        .complete_run(id, task.lease_token, &json!(1), now)
        .await;
    assert!(matches!(late, Err(Error::LeaseLost(_))));
    let other = worker(&*store, &["greet"]).await;
    assert_eq!(
        store
            .claim(&other, 1, now + LEASE, now)
            .await
            .expect("claim")
            .len(),
        1
    );
}

async fn cancel_ends_pending_and_running_runs_but_not_finished_ones(store: Arc<dyn Store>) {
    let now = Utc::now();
    let pending = store
        .create_run(&new_run("greet", json!(1), now), now)
        .await
        .expect("create")
        .id;
    let run = store.cancel_run(pending, now).await.expect("cancel");
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.finished_at.is_some());
    let again = store
        .cancel_run(pending, now)
        .await
        .expect_err("already cancelled");
    assert!(matches!(again, Error::Conflict(_)), "{again:?}");
    let unknown = store
        .cancel_run(kagzi_server::model::RunId::new(), now)
        .await;
    assert!(matches!(unknown, Err(Error::NotFound(_))));
}

async fn listing_filters_and_pages_newest_first(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut greets = Vec::new();
    for i in 0..5 {
        greets.push(
            store
                .create_run(&new_run("greet", json!(i), now), now)
                .await
                .expect("create")
                .id,
        );
        store
            .create_run(&new_run("other", json!(i), now), now)
            .await
            .expect("create");
    }
    greets.reverse();
    let mut filter = RunFilter {
        workflow: Some("greet".to_owned()),
        limit: 2,
        ..RunFilter::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list_runs(&filter).await.expect("list");
        if page.is_empty() {
            break;
        }
        filter.before = page.last().map(|r| r.id);
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, greets);
    let by_status = RunFilter {
        status: Some(RunStatus::Running),
        limit: 10,
        ..RunFilter::default()
    };
    assert!(store.list_runs(&by_status).await.expect("list").is_empty());
}

async fn listing_filters_by_key_and_time_range(store: Arc<dyn Store>) {
    let t0: DateTime<Utc> = "2026-11-26T09:00:00Z".parse().expect("a time");
    let mut ids = Vec::new();
    for i in 0..4 {
        // A run made an hour apart from the previous one, as the server makes them.
        let at = t0 + chrono::Duration::hours(i);
        let mut new = new_run("greet", json!(i), at);
        new.idempotency_key = Some(format!("order-{i}"));
        ids.push(store.create_run(&new, at).await.expect("create").id);
    }
    let listed = |filter: RunFilter| {
        let store = Arc::clone(&store);
        async move {
            let runs = store.list_runs(&filter).await.expect("list");
            runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    let by_key = RunFilter {
        idempotency_key: Some("order-2".to_owned()),
        limit: 10,
        ..RunFilter::default()
    };
    assert_eq!(listed(by_key).await, [ids[2]]);
    let range = RunFilter {
        created_after: Some(t0 + chrono::Duration::hours(1)),
        created_before: Some(t0 + chrono::Duration::hours(3)),
        limit: 10,
        ..RunFilter::default()
    };
    assert_eq!(
        listed(range).await,
        [ids[2], ids[1]],
        "newest first, end excluded"
    );
    let since = RunFilter {
        created_after: Some(t0 + chrono::Duration::minutes(90)),
        limit: 10,
        ..RunFilter::default()
    };
    assert_eq!(listed(since).await, [ids[3], ids[2]]);
}

async fn counts_by_status_stop_at_the_cap(store: Arc<dyn Store>) {
    let now = Utc::now();
    for i in 0..5 {
        store
            .create_run(&new_run("greet", json!(i), now), now)
            .await
            .expect("create");
    }
    let other = store
        .create_run(&new_run("other", json!(0), now), now)
        .await
        .expect("create");
    store.cancel_run(other.id, now).await.expect("cancel");
    let w = worker(&*store, &["greet"]).await;
    store.claim(&w, 2, now + LEASE, now).await.expect("claim");

    let all = store
        .count_runs(&RunFilter::default(), 100)
        .await
        .expect("count");
    assert_eq!(
        (all.pending, all.running, all.cancelled, all.total),
        (3, 2, 1, 6)
    );
    assert!(!all.capped);
    let greets = RunFilter {
        workflow: Some("greet".to_owned()),
        status: Some(RunStatus::Failed),
        ..RunFilter::default()
    };
    let capped = store.count_runs(&greets, 2).await.expect("count");
    assert_eq!(
        (capped.pending, capped.running, capped.cancelled),
        (2, 2, 0)
    );
    assert!(capped.capped, "3 pending counted to the cap of 2");
}

async fn a_runs_signals_are_listed_with_how_they_were_received(store: Arc<dyn Store>) {
    let now = Utc::now();
    let run = store
        .create_run(&new_run("greet", json!(null), now), now)
        .await
        .expect("create")
        .id;
    assert!(store.list_signals(run).await.expect("list").is_empty());
    store
        .send_signal(run, "approve", &json!({"by": "ada"}), now)
        .await
        .expect("send");
    store
        .send_signal(run, "approve", &json!({"by": "bob"}), now)
        .await
        .expect("send");
    let w = worker(&*store, &["greet"]).await;
    let tasks = store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    store
        .receive_signal(
            run,
            lease_of(&tasks, run),
            "approve",
            "signal:approve",
            0,
            now,
        )
        .await
        .expect("receive");
    let signals = store.list_signals(run).await.expect("list");
    assert_eq!(signals.len(), 2);
    assert_eq!(signals[0].payload, json!({"by": "ada"}));
    assert_eq!(signals[0].received_as.as_deref(), Some("signal:approve"));
    assert_eq!(signals[1].received_as, None, "the second one still waits");
    let unknown = store.list_signals(RunId::new()).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))));
}

async fn workers_are_listed_with_the_runs_they_hold(store: Arc<dyn Store>) {
    let now = Utc::now();
    for i in 0..3 {
        store
            .create_run(&new_run("greet", json!(i), now), now)
            .await
            .expect("create");
    }
    let first = worker(&*store, &["greet"]).await;
    let second = worker(&*store, &["greet", "wave"]).await;
    store
        .claim(&first, 2, now + LEASE, now)
        .await
        .expect("claim");
    store
        .deregister_worker(second.id, now)
        .await
        .expect("deregister");
    let all = store
        .list_workers(&WorkerFilter {
            limit: 10,
            ..WorkerFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|w| w.worker.id).collect::<Vec<_>>(),
        [second.id, first.id],
        "newest first"
    );
    assert_eq!((all[1].runs_held, all[1].status), (2, WorkerStatus::Online));
    assert_eq!(all[0].status, WorkerStatus::Offline);
    assert_eq!(all[0].worker.workflows, ["greet", "wave"]);
    let online = store
        .list_workers(&WorkerFilter {
            status: Some(WorkerStatus::Online),
            limit: 10,
            ..WorkerFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(online.len(), 1);
}

async fn queue_stats_count_the_runs_in_flight_and_the_workers(store: Arc<dyn Store>) {
    let now = Utc::now();
    for i in 0..3 {
        store
            .create_run(&new_run("greet", json!(i), now), now)
            .await
            .expect("create");
    }
    let later = now + chrono::Duration::hours(1);
    store
        .create_run(&new_run("greet", json!(9), later), now)
        .await
        .expect("create a delayed run");
    let ended = store
        .create_run(&new_run("wave", json!(0), now), now)
        .await
        .expect("create");
    store.cancel_run(ended.id, now).await.expect("cancel");
    let w = worker(&*store, &["greet", "idle"]).await;
    store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    let stats = store.queue_stats(now).await.expect("stats");
    let names: Vec<_> = stats.iter().map(|s| s.workflow.as_str()).collect();
    assert_eq!(names, ["greet", "idle"], "an ended run is not counted");
    let greet = &stats[0];
    assert_eq!(
        (greet.due, greet.scheduled, greet.running, greet.workers),
        (2, 1, 1, 1)
    );
    assert!(greet.oldest_due_at.is_some_and(|at| at <= now));
    assert_eq!((stats[1].due, stats[1].workers), (0, 1));
}

/// A worker of `build`, pinning `pinned` of its workflows.
async fn worker_of_build(
    store: &dyn Store,
    workflows: &[&str],
    build: Option<&str>,
    pinned: &[&str],
) -> Worker {
    let new = NewWorker {
        queue: "default".to_owned(),
        workflows: workflows.iter().map(|w| (*w).to_owned()).collect(),
        capacity: 10,
        hostname: None,
        build_id: build.map(str::to_owned),
        pinned_workflows: pinned.iter().map(|w| (*w).to_owned()).collect(),
    };
    let id = store
        .register_worker(&new, Utc::now())
        .await
        .expect("register");
    store.get_worker(id).await.expect("worker exists")
}

async fn a_retried_run_keeps_its_journal_and_gets_its_retries_again(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut new = new_run("greet", json!({}), now);
    new.retries = 0;
    let id = store.create_run(&new, now).await.expect("create").id;
    let w = worker(&*store, &["greet"]).await;
    let first = store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    let lease = lease_of(&first, id);
    store
        .record_step(id, lease, &completed("a", 0, json!(1)), now)
        .await
        .expect("step");
    let failed = store
        .fail_run(id, lease, "boom", true, backoff(), now)
        .await
        .expect("fail");
    assert_eq!(failed.status, RunStatus::Failed, "no retries");

    let retried = store.retry_run(id, now).await.expect("retry");
    assert_eq!((retried.status, retried.attempts), (RunStatus::Pending, 1));
    let again = store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    assert_eq!(again[0].attempt, 2, "attempts count on");
    assert_eq!(again[0].journal.len(), 1, "the finished step is replayed");
    let stale = store
        .record_step(id, lease, &completed("b", 1, json!(2)), now)
        .await;
    assert!(
        matches!(stale, Err(Error::LeaseLost(_))),
        "the old attempt is fenced"
    );
    let refused = store.retry_run(id, now).await;
    assert!(
        matches!(refused, Err(Error::Conflict(_))),
        "a running run is not retried"
    );
    let failed = store
        .fail_run(id, again[0].lease_token, "boom", true, backoff(), now)
        .await
        .expect("fail");
    assert_eq!(
        failed.status,
        RunStatus::Failed,
        "the retry policy counted again from 0"
    );
    let unknown = store.retry_run(RunId::new(), now).await;
    assert!(matches!(unknown, Err(Error::NotFound(_))));
}

async fn a_fork_copies_the_journal_before_its_step_and_leaves_the_original(store: Arc<dyn Store>) {
    let now = Utc::now();
    let id = store
        .create_run(&new_run("greet", json!({"n": 1}), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let tasks = store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    let lease = lease_of(&tasks, id);
    for (position, key) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let position = u32::try_from(position).expect("small");
        store
            .record_step(id, lease, &completed(key, position, json!(position)), now)
            .await
            .expect("step");
    }
    store
        .complete_run(id, lease, &json!("done"), now)
        .await
        .expect("complete");
    let fork = Fork {
        from_step: Some("c".to_owned()),
        input: Some(json!({"n": 2})),
        queue: None,
    };
    let forked = store.fork_run(id, &fork, now).await.expect("fork");
    assert_eq!(
        (forked.status, forked.forked_from),
        (RunStatus::Pending, Some(id))
    );
    assert_eq!(forked.input, json!({"n": 2}));
    let claimed = store.claim(&w, 1, now + LEASE, now).await.expect("claim");
    assert_eq!(claimed[0].run_id, forked.id);
    assert_eq!(claimed[0].attempt, 1);
    let keys: Vec<&str> = claimed[0].journal.iter().map(|j| j.key.as_str()).collect();
    assert_eq!(
        keys,
        ["a", "b"],
        "steps before c, handed to the fork's first attempt"
    );
    assert_eq!(
        store.list_steps(id).await.expect("steps").len(),
        5,
        "original untouched"
    );
    let whole = store
        .fork_run(id, &Fork::default(), now)
        .await
        .expect("fork from the start");
    assert!(store.list_steps(whole.id).await.expect("steps").is_empty());
    let missing = Fork {
        from_step: Some("zz".to_owned()),
        ..Fork::default()
    };
    assert!(matches!(
        store.fork_run(id, &missing, now).await,
        Err(Error::NotFound(_))
    ));
}

async fn only_ended_runs_without_running_children_are_deleted(store: Arc<dyn Store>) {
    let now = Utc::now();
    let parent = store
        .create_run(&new_run("greet", json!(null), now), now)
        .await
        .expect("create")
        .id;
    let mut child = new_run("greet", json!(null), now);
    child.parent_id = Some(parent);
    let child = store.create_run(&child, now).await.expect("create").id;
    assert!(matches!(
        store.delete_run(parent).await,
        Err(Error::Conflict(_))
    ));
    store
        .send_signal(parent, "x", &json!(1), now)
        .await
        .expect("signal");
    // Cancel the parent alone: its child stays pending.
    let w = worker(&*store, &["greet"]).await;
    let tasks = store.claim(&w, 2, now + LEASE, now).await.expect("claim");
    store
        .complete_run(parent, lease_of(&tasks, parent), &json!(1), now)
        .await
        .expect("complete");
    let kept = store.delete_run(parent).await;
    assert!(
        matches!(kept, Err(Error::Conflict(ref m)) if m.contains("child")),
        "{kept:?}"
    );
    store
        .complete_run(child, lease_of(&tasks, child), &json!(1), now)
        .await
        .expect("complete");
    store.delete_run(parent).await.expect("deleted");
    assert!(matches!(
        store.get_run(parent).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.list_signals(parent).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store.get_run(child).await.expect("child kept").parent_id,
        None
    );
}

async fn the_reaper_deletes_ended_runs_past_their_window_in_batches(store: Arc<dyn Store>) {
    let now = Utc::now();
    let old = now - chrono::Duration::days(10);
    let w = worker(&*store, &["greet"]).await;
    let mut ended = Vec::new();
    for i in 0..5 {
        let id = store
            .create_run(&new_run("greet", json!(i), old), old)
            .await
            .expect("create")
            .id;
        ended.push(id);
    }
    let tasks = store.claim(&w, 5, old + LEASE, old).await.expect("claim");
    for id in &ended {
        store
            .complete_run(*id, lease_of(&tasks, *id), &json!(1), old)
            .await
            .expect("complete");
    }
    let recent = store
        .create_run(&new_run("greet", json!(9), now), now)
        .await
        .expect("create")
        .id;
    let cutoff = now - chrono::Duration::days(7);
    assert_eq!(
        store
            .reap_runs(RunStatus::Failed, cutoff, 10)
            .await
            .expect("reap"),
        0,
        "another status's window"
    );
    assert_eq!(
        store
            .reap_runs(RunStatus::Completed, cutoff, 3)
            .await
            .expect("reap"),
        3
    );
    assert_eq!(
        store
            .reap_runs(RunStatus::Completed, cutoff, 3)
            .await
            .expect("reap"),
        2
    );
    assert_eq!(
        store
            .reap_runs(RunStatus::Completed, cutoff, 3)
            .await
            .expect("reap"),
        0
    );
    assert!(
        store.get_run(recent).await.is_ok(),
        "a run that has not ended stays"
    );
    assert!(store.list_steps(ended[0]).await.is_err());
}

async fn bulk_actions_change_only_matching_runs_and_repeat_harmlessly(store: Arc<dyn Store>) {
    let now = Utc::now();
    let mut greets = Vec::new();
    for i in 0..3 {
        greets.push(
            store
                .create_run(&new_run("greet", json!(i), now), now)
                .await
                .expect("create")
                .id,
        );
    }
    let other = store
        .create_run(&new_run("other", json!(0), now), now)
        .await
        .expect("create")
        .id;
    let filter = RunFilter {
        workflow: Some("greet".to_owned()),
        limit: 2,
        ..RunFilter::default()
    };
    let first = store.cancel_runs(&filter, now).await.expect("cancel");
    assert_eq!((first.changed.len(), first.more), (2, true));
    let second = store.cancel_runs(&filter, now).await.expect("cancel");
    assert_eq!((second.changed.len(), second.more), (1, false));
    assert!(
        store
            .cancel_runs(&filter, now)
            .await
            .expect("again")
            .changed
            .is_empty()
    );
    assert_eq!(
        store.get_run(other).await.expect("run").status,
        RunStatus::Pending
    );
    let retried = store
        .retry_runs(
            &RunFilter {
                workflow: Some("greet".to_owned()),
                limit: 10,
                ..RunFilter::default()
            },
            now,
        )
        .await
        .expect("retry");
    let mut changed = retried.changed.clone();
    changed.sort();
    let mut expected = greets.clone();
    expected.sort();
    assert_eq!(changed, expected);
}

async fn a_pinned_run_is_claimed_only_by_workers_of_its_build(store: Arc<dyn Store>) {
    let now = Utc::now();
    let old = worker_of_build(&*store, &["greet", "wave"], Some("v1"), &["greet"]).await;
    let new = worker_of_build(&*store, &["greet", "wave"], Some("v2"), &["greet"]).await;
    let plain = worker_of_build(&*store, &["greet", "wave"], None, &[]).await;
    let greet = store
        .create_run(&new_run("greet", json!(0), now), now)
        .await
        .expect("create")
        .id;
    let wave = store
        .create_run(&new_run("wave", json!(0), now), now)
        .await
        .expect("create")
        .id;
    let tasks = store.claim(&old, 2, now + LEASE, now).await.expect("claim");
    assert_eq!(tasks.len(), 2);
    let greet_run = store.get_run(greet).await.expect("run");
    assert_eq!(
        (greet_run.build_id.as_deref(), greet_run.pinned),
        (Some("v1"), true)
    );
    let wave_run = store.get_run(wave).await.expect("run");
    assert_eq!(
        (wave_run.build_id.as_deref(), wave_run.pinned),
        (Some("v1"), false)
    );
    // Both go back to pending; only v1 may take the pinned one.
    store
        .deregister_worker(old.id, now)
        .await
        .expect("deregister");
    let taken_by_new = store.claim(&new, 5, now + LEASE, now).await.expect("claim");
    assert_eq!(
        taken_by_new.iter().map(|t| t.run_id).collect::<Vec<_>>(),
        [wave]
    );
    assert!(
        store
            .claim(&plain, 5, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(
        store.next_due(&plain).await.expect("next due"),
        None,
        "no busy wake-ups"
    );
    let again = worker_of_build(&*store, &["greet"], Some("v1"), &[]).await;
    let taken = store
        .claim(&again, 5, now + LEASE, now)
        .await
        .expect("claim");
    assert_eq!(taken.iter().map(|t| t.run_id).collect::<Vec<_>>(), [greet]);
}

async fn patch_usage_says_when_no_run_needs_the_old_branch(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let old = store
        .create_run(&new_run("greet", json!(0), now), now)
        .await
        .expect("create")
        .id;
    let usage = store.patch_usage("greet", "tax").await.expect("usage");
    assert_eq!(
        (usage.unmarked, usage.safe_to_remove),
        (1, false),
        "before any answer"
    );
    let later = now + chrono::Duration::seconds(1);
    let new = store
        .create_run(&new_run("greet", json!(1), later), later)
        .await
        .expect("create")
        .id;
    let tasks = store
        .claim(&w, 2, later + LEASE, later)
        .await
        .expect("claim");
    store
        .record_step(
            old,
            lease_of(&tasks, old),
            &completed("patch:tax", 0, json!(false)),
            later,
        )
        .await
        .expect("old branch");
    store
        .record_step(
            new,
            lease_of(&tasks, new),
            &completed("patch:tax", 0, json!(true)),
            later,
        )
        .await
        .expect("new branch");
    let usage = store.patch_usage("greet", "tax").await.expect("usage");
    assert_eq!((usage.old_branch, usage.unmarked), (1, 0));
    assert!(usage.first_patched_at.is_some() && !usage.safe_to_remove);
    store
        .complete_run(old, lease_of(&tasks, old), &json!(1), later)
        .await
        .expect("complete");
    assert!(
        store
            .patch_usage("greet", "tax")
            .await
            .expect("usage")
            .safe_to_remove
    );
}

async fn migrating_twice_is_harmless(store: Arc<dyn Store>) {
    store
        .migrate()
        .await
        .expect("second migration run is a no-op");
}

fn schedule_spec(workflow: &str, overlap: Overlap) -> ScheduleSpec {
    ScheduleSpec {
        workflow: workflow.to_owned(),
        queue: "default".to_owned(),
        cron: "* * * * * *".to_owned(),
        time_zone: "UTC".to_owned(),
        input: json!({"report": true}),
        retries: 2,
        overlap,
        catch_up: CatchUp::default(),
    }
}

/// A per-second schedule first due at `first`.
async fn schedule_at(
    store: &dyn Store,
    overlap: Overlap,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
) -> kagzi_server::schedule::Schedule {
    let new = NewSchedule {
        id: ScheduleId::new(),
        name: None,
        spec: schedule_spec("report", overlap),
        paused: false,
        next_fire_at: Some(first),
    };
    store
        .create_schedule(&new, now)
        .await
        .expect("create schedule")
}

fn whole_second() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1)
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

async fn schedule_runs(store: &dyn Store, id: ScheduleId) -> Vec<kagzi_server::model::Run> {
    let filter = RunFilter {
        schedule_id: Some(id),
        limit: 1000,
        ..RunFilter::default()
    };
    store.list_runs(&filter).await.expect("list runs")
}

async fn schedules_are_stored_named_uniquely_listed_and_found_by_id_or_name(store: Arc<dyn Store>) {
    let now = Utc::now();
    let new = NewSchedule {
        id: ScheduleId::new(),
        name: Some("nightly".to_owned()),
        spec: schedule_spec("report", Overlap::BufferOne),
        paused: true,
        next_fire_at: None,
    };
    let created = store.create_schedule(&new, now).await.expect("create");
    assert_eq!(created.id, new.id);
    assert_eq!(created.overlap, Overlap::BufferOne);
    assert_eq!(created.input, json!({"report": true}));
    assert!(created.paused && created.next_fire_at.is_none());
    assert_eq!(created.catch_up(), CatchUp::default());
    let by_name = store
        .get_schedule(&ScheduleKey::Name("nightly".to_owned()))
        .await
        .expect("by name");
    assert_eq!(by_name, created);
    let mut again = new.clone();
    again.id = ScheduleId::new();
    let taken = store
        .create_schedule(&again, now)
        .await
        .expect_err("name taken");
    assert!(matches!(taken, Error::Conflict(_)), "{taken:?}");
    let other = schedule_at(&*store, Overlap::Skip, whole_second(), now).await;
    let all = store
        .list_schedules(&ScheduleFilter {
            limit: 10,
            ..ScheduleFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        all.iter().map(|s| s.id).collect::<Vec<_>>(),
        [other.id, created.id]
    );
    let paused = store
        .list_schedules(&ScheduleFilter {
            paused: Some(true),
            limit: 10,
            ..ScheduleFilter::default()
        })
        .await
        .expect("list paused");
    assert_eq!(
        paused.iter().map(|s| s.id).collect::<Vec<_>>(),
        [created.id]
    );
    let missing = store
        .get_schedule(&ScheduleKey::Id(ScheduleId::new()))
        .await
        .expect_err("unknown");
    assert!(matches!(missing, Error::NotFound(_)), "{missing:?}");
}

async fn firing_starts_one_run_per_due_time_and_a_stale_plan_changes_nothing(
    store: Arc<dyn Store>,
) {
    let t0 = whole_second();
    let schedule = schedule_at(&*store, Overlap::AllowAll, t0, t0 - secs(1)).await;
    assert_eq!(store.next_schedule_fire().await.expect("next"), Some(t0));
    assert!(
        store
            .due_schedules(t0 - secs(1), 10)
            .await
            .expect("due")
            .is_empty()
    );
    let due = store.due_schedules(t0, 10).await.expect("due");
    assert_eq!(due.iter().map(|s| s.id).collect::<Vec<_>>(), [schedule.id]);
    let fire = ScheduleFire {
        id: schedule.id,
        version: schedule.version,
        due: vec![t0],
        next_fire_at: Some(t0 + secs(1)),
    };
    let outcome = store.fire_schedule(&fire, t0).await.expect("fire");
    assert!(outcome.applied);
    assert_eq!(outcome.started.len(), 1);
    let runs = schedule_runs(&*store, schedule.id).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, outcome.started[0].0);
    assert_eq!(runs[0].schedule_id, Some(schedule.id));
    assert_eq!(runs[0].scheduled_at, Some(t0));
    assert_eq!((runs[0].workflow.as_str(), runs[0].retries), ("report", 2));
    assert_eq!(runs[0].input, json!({"report": true}));
    // The same plan again (another replica's): nothing happens.
    let stale = store.fire_schedule(&fire, t0).await.expect("fire again");
    assert!(!stale.applied && stale.started.is_empty());
    assert_eq!(schedule_runs(&*store, schedule.id).await.len(), 1);
    let moved = store
        .get_schedule(&ScheduleKey::Id(schedule.id))
        .await
        .expect("get");
    assert_eq!(moved.next_fire_at, Some(t0 + secs(1)));
    assert_eq!(moved.last_fired_at, Some(t0));
    assert!(moved.version > schedule.version);
    // Even a plan from the new version cannot start a second run for a due time.
    let repeat = ScheduleFire {
        version: moved.version,
        ..fire
    };
    let outcome = store.fire_schedule(&repeat, t0).await.expect("fire repeat");
    assert!(outcome.applied && outcome.started.is_empty());
    assert_eq!(schedule_runs(&*store, schedule.id).await.len(), 1);
}

async fn concurrent_fires_of_one_plan_start_exactly_one_run(store: Arc<dyn Store>) {
    let t0 = whole_second();
    let schedule = schedule_at(&*store, Overlap::AllowAll, t0, t0 - secs(1)).await;
    let fire = ScheduleFire {
        id: schedule.id,
        version: schedule.version,
        due: vec![t0],
        next_fire_at: Some(t0 + secs(1)),
    };
    let fires = (0..8).map(|_| {
        let (store, fire) = (store.clone(), fire.clone());
        tokio::spawn(async move { store.fire_schedule(&fire, t0).await.expect("fire") })
    });
    let outcomes = futures::future::join_all(fires).await;
    let applied = outcomes
        .into_iter()
        .filter(|o| o.as_ref().expect("task").applied)
        .count();
    assert_eq!(applied, 1);
    assert_eq!(schedule_runs(&*store, schedule.id).await.len(), 1);
}

/// Fires `schedule` (as read now) for `due` at `now`.
async fn fire_now(
    store: &dyn Store,
    id: ScheduleId,
    due: &[DateTime<Utc>],
    now: DateTime<Utc>,
) -> kagzi_server::store::FireOutcome {
    let current = store.get_schedule(&ScheduleKey::Id(id)).await.expect("get");
    let fire = ScheduleFire {
        id,
        version: current.version,
        due: due.to_vec(),
        next_fire_at: Some(now + secs(1)),
    };
    store.fire_schedule(&fire, now).await.expect("fire")
}

async fn finish_all(store: &dyn Store, now: DateTime<Utc>) {
    let w = worker(store, &["report"]).await;
    for task in store.claim(&w, 100, now + LEASE, now).await.expect("claim") {
        store
            .complete_run(task.run_id, task.lease_token, &json!(null), now)
            .await
            .expect("complete");
    }
}

async fn overlap_policies_skip_buffer_or_allow_while_a_run_is_unfinished(store: Arc<dyn Store>) {
    let t0 = whole_second();
    // skip: a second due time while the first run is pending is dropped.
    let skip = schedule_at(&*store, Overlap::Skip, t0, t0).await;
    assert_eq!(fire_now(&*store, skip.id, &[t0], t0).await.started.len(), 1);
    let skipped = fire_now(&*store, skip.id, &[t0 + secs(1)], t0 + secs(1)).await;
    assert_eq!((skipped.started.len(), skipped.skipped), (0, 1));
    finish_all(&*store, t0 + secs(1)).await;
    let after = fire_now(&*store, skip.id, &[t0 + secs(2)], t0 + secs(2)).await;
    assert_eq!(after.started.len(), 1);
    finish_all(&*store, t0 + secs(2)).await;

    // buffer_one: one due time waits for the running run, further ones are dropped.
    let buffer = schedule_at(&*store, Overlap::BufferOne, t0, t0).await;
    let first = fire_now(&*store, buffer.id, &[t0], t0).await;
    assert_eq!(first.started.len(), 1);
    let held = fire_now(&*store, buffer.id, &[t0 + secs(1)], t0 + secs(1)).await;
    assert_eq!(held.buffered, Some(t0 + secs(1)));
    assert_eq!(held.blocked_by, Some(first.started[0].0));
    let dropped = fire_now(&*store, buffer.id, &[t0 + secs(2)], t0 + secs(2)).await;
    assert_eq!((dropped.buffered, dropped.skipped), (Some(t0 + secs(1)), 1));
    assert!(
        store
            .due_schedules(t0 + secs(2), 10)
            .await
            .expect("due")
            .iter()
            .any(|s| s.id == buffer.id),
        "a buffered schedule stays due"
    );
    finish_all(&*store, t0 + secs(2)).await;
    let released = fire_now(&*store, buffer.id, &[], t0 + secs(2)).await;
    assert_eq!(
        released.started.iter().map(|s| s.1).collect::<Vec<_>>(),
        [t0 + secs(1)]
    );
    assert_eq!(released.buffered, None);

    // allow_all: every due time starts.
    let all = schedule_at(&*store, Overlap::AllowAll, t0, t0).await;
    fire_now(&*store, all.id, &[t0], t0).await;
    let both = fire_now(&*store, all.id, &[t0 + secs(1), t0 + secs(2)], t0 + secs(2)).await;
    assert_eq!(both.started.len(), 2);
    assert_eq!(schedule_runs(&*store, all.id).await.len(), 3);
}

async fn pause_resume_update_trigger_and_delete(store: Arc<dyn Store>) {
    let t0 = whole_second();
    let schedule = schedule_at(&*store, Overlap::Skip, t0, t0).await;
    let paused = store
        .set_schedule_paused(schedule.id, true, None, t0)
        .await
        .expect("pause");
    assert!(paused.paused && paused.next_fire_at.is_none());
    assert!(
        store
            .due_schedules(t0 + secs(60), 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(store.next_schedule_fire().await.expect("next"), None);
    // A plan made before the pause does nothing.
    let stale = ScheduleFire {
        id: schedule.id,
        version: schedule.version,
        due: vec![t0],
        next_fire_at: Some(t0 + secs(1)),
    };
    assert!(!store.fire_schedule(&stale, t0).await.expect("fire").applied);
    let resumed = store
        .set_schedule_paused(schedule.id, false, Some(t0 + secs(60)), t0 + secs(59))
        .await
        .expect("resume");
    assert!(!resumed.paused);
    assert_eq!(resumed.next_fire_at, Some(t0 + secs(60)));

    let mut spec = schedule_spec("other", Overlap::AllowAll);
    spec.cron = "0 0 9 * * *".to_owned();
    let update = ScheduleUpdate {
        spec,
        next_fire_at: Some(t0 + secs(3600)),
    };
    let conflict = store
        .update_schedule(schedule.id, schedule.version, &update, t0)
        .await
        .expect_err("stale version");
    assert!(matches!(conflict, Error::Conflict(_)), "{conflict:?}");
    let updated = store
        .update_schedule(schedule.id, resumed.version, &update, t0)
        .await
        .expect("update");
    assert_eq!(
        (updated.workflow.as_str(), updated.cron.as_str()),
        ("other", "0 0 9 * * *")
    );
    assert_eq!(updated.overlap, Overlap::AllowAll);

    let run = store
        .trigger_schedule(schedule.id, t0)
        .await
        .expect("trigger");
    let triggered = store.get_run(run).await.expect("run");
    assert_eq!(triggered.schedule_id, Some(schedule.id));
    assert_eq!(triggered.scheduled_at, Some(t0));
    assert_eq!(triggered.workflow, "other");

    store.delete_schedule(schedule.id).await.expect("delete");
    let gone = store
        .delete_schedule(schedule.id)
        .await
        .expect_err("deleted");
    assert!(matches!(gone, Error::NotFound(_)), "{gone:?}");
    let gone = store
        .trigger_schedule(schedule.id, t0)
        .await
        .expect_err("deleted");
    assert!(matches!(gone, Error::NotFound(_)), "{gone:?}");
    assert_eq!(
        store.get_run(run).await.expect("run stays").schedule_id,
        Some(schedule.id)
    );
}

async fn a_suspended_run_sleeps_until_its_wake_time(store: Arc<dyn Store>) {
    let now = Utc::now().trunc_subsecs(6);
    let id = store
        .create_run(&new_run("greet", json!({}), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&*store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    let wake = now + chrono::Duration::seconds(60);
    let sleep = Suspend {
        until: Some(wake),
        ..Suspend::default()
    };
    let run = store
        .suspend_run(id, task.lease_token, &sleep, now)
        .await
        .expect("suspend");
    assert_eq!((run.status, run.wake_at), (RunStatus::Sleeping, Some(wake)));
    let late = store
        .complete_run(id, task.lease_token, &json!(1), now)
        .await;
    assert!(
        matches!(late, Err(Error::LeaseLost(_))),
        "the suspension ended the lease"
    );
    assert!(
        store
            .claim(&w, 1, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(store.next_due(&w).await.expect("next due"), Some(wake));
    let woken = store.claim(&w, 1, wake + LEASE, wake).await.expect("claim");
    assert_eq!(woken.len(), 1, "claimable at its wake time");
    assert_eq!(woken[0].attempt, 2);
    let run = store.get_run(id).await.expect("run");
    assert_eq!((run.status, run.wake_at), (RunStatus::Running, None));
}

/// A child that ends while its parent is suspending must never leave the parent waiting:
/// either the suspension sees the child ended or the child's end wakes the parent.
async fn a_child_ending_while_its_parent_suspends_always_wakes_it(store: Arc<dyn Store>) {
    let w = worker(&*store, &["parent", "child"]).await;
    for round in 0..40 {
        let now = Utc::now();
        let parent = store
            .create_run(&new_run("parent", json!(round), now), now)
            .await
            .expect("create parent")
            .id;
        let parent_task = store
            .claim(&w, 1, now + LEASE, now)
            .await
            .expect("claim parent")
            .remove(0);
        let child = store
            .create_run(
                &NewRun {
                    parent_id: Some(parent),
                    ..new_run("child", json!(round), now)
                },
                now,
            )
            .await
            .expect("create child")
            .id;
        // Odd rounds end the child in a batch with an unrelated run.
        let other = store
            .create_run(&new_run("child", json!("other"), now), now)
            .await
            .expect("create other")
            .id;
        let tasks = store.claim(&w, 2, now + LEASE, now).await.expect("claim");
        let lease = |id| lease_of(&tasks, id);
        let completions = vec![
            Completion {
                run: child,
                lease_token: lease(child),
                output: json!("done"),
                steps: Vec::new(),
            },
            Completion {
                run: other,
                lease_token: lease(other),
                output: json!("other"),
                steps: Vec::new(),
            },
        ];
        let wait = Suspend {
            child: Some(child),
            ..Suspend::default()
        };
        let end_child = async {
            if round % 2 == 0 {
                vec![
                    store
                        .complete_run(child, lease(child), &completions[0].output, now)
                        .await,
                ]
            } else {
                store.complete_runs(&completions, now).await
            }
        };
        let (suspended, ended) = tokio::join!(
            store.suspend_run(parent, parent_task.lease_token, &wait, now),
            end_child,
        );
        suspended.expect("suspend");
        for end in ended {
            assert_eq!(end.expect("complete").status, RunStatus::Completed);
        }
        let parent = store.get_run(parent).await.expect("parent");
        assert_eq!(
            parent.status,
            RunStatus::Pending,
            "round {round}: the parent of an ended child is due again"
        );
        store.cancel_run(parent.id, now).await.expect("cancel");
    }
}

async fn signals_are_kept_received_in_order_and_wake_a_waiting_run(store: Arc<dyn Store>) {
    let now = Utc::now();
    let id = store
        .create_run(&new_run("greet", json!({}), now), now)
        .await
        .expect("create")
        .id;
    store
        .send_signal(id, "go", &json!(1), now)
        .await
        .expect("signal before the wait");
    let w = worker(&*store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    let first = store
        .receive_signal(id, task.lease_token, "go", "signal:go", 0, now)
        .await
        .expect("receive")
        .expect("the early signal was kept");
    assert_eq!(first.output, Some(json!({"payload": 1})));
    let none = store
        .receive_signal(id, task.lease_token, "go", "signal:go#2", 1, now)
        .await;
    assert!(
        none.expect("receive").is_none(),
        "each signal is received once"
    );

    let wait = Suspend {
        signal: Some("go".to_owned()),
        ..Suspend::default()
    };
    let run = store
        .suspend_run(id, task.lease_token, &wait, now)
        .await
        .expect("suspend");
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.waiting_for.as_deref(), Some("signal:go"));
    assert!(
        store
            .claim(&w, 1, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty()
    );
    store
        .send_signal(id, "go", &json!(2), now)
        .await
        .expect("signal");
    store
        .send_signal(id, "go", &json!(3), now)
        .await
        .expect("signal");
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("woken")
        .remove(0);
    let second = store
        .receive_signal(id, task.lease_token, "go", "signal:go#2", 1, now)
        .await;
    assert_eq!(
        second.expect("receive").and_then(|s| s.output),
        Some(json!({"payload": 2}))
    );
    let third = store
        .receive_signal(id, task.lease_token, "go", "signal:go#3", 2, now)
        .await;
    assert_eq!(
        third.expect("receive").and_then(|s| s.output),
        Some(json!({"payload": 3}))
    );

    // A suspension whose signal is already there leaves the run due at once.
    store
        .send_signal(id, "go", &json!(4), now)
        .await
        .expect("signal");
    let run = store
        .suspend_run(id, task.lease_token, &wait, now)
        .await
        .expect("suspend");
    assert_eq!(run.status, RunStatus::Pending);

    store.cancel_run(id, now).await.expect("cancel");
    let ended = store.send_signal(id, "go", &json!(5), now).await;
    assert!(matches!(ended, Err(Error::Conflict(_))), "{ended:?}");
    let unknown = store
        .send_signal(kagzi_server::model::RunId::new(), "go", &json!(5), now)
        .await;
    assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
}

/// A start written claimed (direct dispatch) is running under the claim's lease at once: no
/// claim hands it out again, its holder reports under the lease, and heartbeats keep it.
async fn a_start_written_claimed_is_running_under_its_lease(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let claim = |token| Claim {
        worker: w.id,
        build_id: None,
        pinned: false,
        lease_token: token,
        lease_expires_at: now + LEASE,
    };
    let token = uuid::Uuid::new_v4();
    let one = store
        .create_run(
            &NewRun {
                claim: Some(claim(token)),
                ..new_run("greet", json!("direct"), now)
            },
            now,
        )
        .await
        .expect("create claimed");
    assert!(one.claimed && !one.existing);
    let run = store.get_run(one.id).await.expect("run");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.attempts, 1);
    assert!(run.started_at.is_some());
    assert!(
        store
            .claim(&w, 10, now + LEASE, now)
            .await
            .expect("claim")
            .is_empty(),
        "a run written claimed is not claimable"
    );
    let beat = store
        .heartbeat(
            w.id,
            &[Lease {
                run_id: one.id,
                lease_token: token,
            }],
            now + LEASE,
            now,
        )
        .await
        .expect("heartbeat");
    assert!(beat.is_empty(), "the worker holds the run: {beat:?}");
    store
        .record_step(one.id, token, &completed("a", 0, json!(1)), now)
        .await
        .expect("a step under the claim's lease");
    let done = store
        .complete_run(one.id, token, &json!("hi"), now)
        .await
        .expect("complete under the claim's lease");
    assert_eq!(done.status, RunStatus::Completed);

    // In a batch: claimed, pending, and a claimed start whose key names an earlier run.
    let keyed = NewRun {
        idempotency_key: Some("k".to_owned()),
        ..new_run("greet", json!("keyed"), now)
    };
    let first = store.create_run(&keyed, now).await.expect("keyed start");
    let batch = [
        NewRun {
            claim: Some(claim(uuid::Uuid::new_v4())),
            ..new_run("greet", json!(1), now)
        },
        new_run("greet", json!(2), now),
        NewRun {
            claim: Some(claim(uuid::Uuid::new_v4())),
            ..keyed.clone()
        },
    ];
    let results: Vec<_> = store
        .create_runs(&batch, now)
        .await
        .into_iter()
        .map(|r| r.expect("start"))
        .collect();
    assert_eq!(
        results
            .iter()
            .map(|c| (c.claimed, c.existing))
            .collect::<Vec<_>>(),
        [(true, false), (false, false), (false, true)]
    );
    assert_eq!(results[2].id, first.id);
    let mut statuses = Vec::new();
    for id in [results[0].id, results[1].id, first.id] {
        statuses.push(store.get_run(id).await.expect("run").status);
    }
    assert_eq!(
        statuses,
        [RunStatus::Running, RunStatus::Pending, RunStatus::Pending],
        "the earlier run of the key is left as it was"
    );
    let claimed = store.claim(&w, 10, now + LEASE, now).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|t| t.run_id).collect::<HashSet<_>>(),
        HashSet::from([results[1].id, first.id]),
        "only the runs written pending are claimed"
    );
}

/// A poll's one question before it waits: claim, or else when the next run comes due.
async fn an_empty_claim_says_when_the_next_run_comes_due(store: Arc<dyn Store>) {
    let now = Utc::now();
    let w = worker(&*store, &["greet"]).await;
    let (tasks, next) = store
        .claim_or_next_due(&w, 10, now + LEASE, now)
        .await
        .expect("claim");
    assert!(tasks.is_empty());
    assert_eq!(next, None, "nothing waits");
    let later = now + chrono::Duration::seconds(60);
    for (workflow, at) in [("greet", later), ("other", now)] {
        let new = NewRun {
            available_at: at,
            ..new_run(workflow, json!(workflow), now)
        };
        store.create_run(&new, now).await.expect("create");
    }
    let (tasks, next) = store
        .claim_or_next_due(&w, 10, now + LEASE, now)
        .await
        .expect("claim");
    assert!(tasks.is_empty(), "the run is not due yet");
    let next = next.expect("a run comes due");
    assert!(
        (next - later).num_milliseconds().abs() < 1,
        "due at {next}, not {later}"
    );
    let due = store
        .create_run(&new_run("greet", json!("now"), now), now)
        .await
        .expect("create");
    let (tasks, next) = store
        .claim_or_next_due(&w, 10, now + LEASE, now)
        .await
        .expect("claim");
    assert_eq!(tasks.iter().map(|t| t.run_id).collect::<Vec<_>>(), [due.id]);
    assert_eq!(next, None, "a claim that took runs says nothing more");
}

/// Runs each named test against both stores.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = false)]
                async fn $name(pool: PgPool) {
                    let store = PgStore::new(pool);
                    store.migrate().await.expect("migrations apply");
                    super::$name(Arc::new(store)).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let store = SqliteStore::open("sqlite::memory:").await.expect("in-memory SQLite");
                    store.migrate().await.expect("migrations apply");
                    super::$name(Arc::new(store)).await;
                }
            )*
        }
    };
}

conformance!(
    a_suspended_run_sleeps_until_its_wake_time,
    a_child_ending_while_its_parent_suspends_always_wakes_it,
    signals_are_kept_received_in_order_and_wake_a_waiting_run,
    claim_takes_due_runs_in_batches_oldest_first,
    claim_skips_runs_not_due_and_other_workflows_and_queues,
    a_claim_takes_the_oldest_due_runs_across_its_workers_workflows,
    a_worker_with_the_most_workflows_registration_allows_claims,
    concurrent_claims_never_hand_out_a_run_twice,
    a_step_is_recorded_once_and_replayed_in_the_journal,
    a_batch_of_step_reports_keeps_every_rule_of_single_reports,
    a_batch_of_completions_keeps_every_rule_of_single_completions,
    a_batch_of_starts_keeps_every_rule_of_single_starts,
    a_completion_records_the_steps_it_carries_first,
    an_idempotency_key_expires_after_its_window_except_for_child_runs,
    reports_under_an_expired_or_reclaimed_lease_are_refused_and_change_nothing,
    a_failed_run_is_retried_with_backoff_then_fails,
    a_non_retryable_failure_ends_the_run_at_once,
    heartbeats_extend_held_leases_and_name_the_lost_ones,
    deregistering_a_worker_hands_its_runs_back,
    cancel_ends_pending_and_running_runs_but_not_finished_ones,
    listing_filters_and_pages_newest_first,
    listing_filters_by_key_and_time_range,
    counts_by_status_stop_at_the_cap,
    a_runs_signals_are_listed_with_how_they_were_received,
    workers_are_listed_with_the_runs_they_hold,
    queue_stats_count_the_runs_in_flight_and_the_workers,
    a_retried_run_keeps_its_journal_and_gets_its_retries_again,
    a_fork_copies_the_journal_before_its_step_and_leaves_the_original,
    only_ended_runs_without_running_children_are_deleted,
    the_reaper_deletes_ended_runs_past_their_window_in_batches,
    bulk_actions_change_only_matching_runs_and_repeat_harmlessly,
    a_pinned_run_is_claimed_only_by_workers_of_its_build,
    patch_usage_says_when_no_run_needs_the_old_branch,
    migrating_twice_is_harmless,
    schedules_are_stored_named_uniquely_listed_and_found_by_id_or_name,
    firing_starts_one_run_per_due_time_and_a_stale_plan_changes_nothing,
    concurrent_fires_of_one_plan_start_exactly_one_run,
    overlap_policies_skip_buffer_or_allow_while_a_run_is_unfinished,
    pause_resume_update_trigger_and_delete,
    a_start_written_claimed_is_running_under_its_lease,
    an_empty_claim_says_when_the_next_run_comes_due,
);

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let path = std::env::temp_dir().join(format!("kagzi-lock-{}.db", uuid::Uuid::new_v4()));
    let url = format!("sqlite://{}", path.display());
    let first = SqliteStore::open(&url)
        .await
        .expect("the first opens the file");
    let second = SqliteStore::open(&url)
        .await
        .expect_err("the second is refused");
    assert!(matches!(second, Error::Locked(_)), "{second:?}");
    assert!(
        second
            .to_string()
            .contains("in use by another Kagzi server"),
        "{second}"
    );
    drop(first);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
}

/// A migrated store over a pool of one connection to the test database, and that pool: the
/// statements measured and the statistics read then share one backend.
async fn on_one_connection(pool: &PgPool) -> (PgPool, PgStore) {
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .expect("a one-connection pool");
    let store = PgStore::new(one.clone());
    store.migrate().await.expect("migrations apply");
    (one, store)
}

/// Index entries and table rows of `kagzi.runs` read so far by the one connection of `pool`.
async fn runs_tuples_read(pool: &PgPool) -> i64 {
    // This backend's pending statistics are flushed as the statement's transaction ends, so
    // the next statement (on the same connection) reads them.
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .expect("flush statistics");
    sqlx::query_scalar(
        "select (select coalesce(seq_tup_read, 0) from pg_stat_user_tables
                 where relid = 'kagzi.runs'::regclass)
              + (select coalesce(sum(idx_tup_read), 0)::int8 from pg_stat_user_indexes
                 where relid = 'kagzi.runs'::regclass)",
    )
    .fetch_one(pool)
    .await
    .expect("statistics of kagzi.runs")
}

/// Statements of this database that failed (rolled back) so far, once the one connection of
/// `pool` has flushed its statistics.
async fn failed_statements(pool: &PgPool) -> i64 {
    runs_tuples_read(pool).await;
    sqlx::query_scalar(
        "select xact_rollback from pg_stat_database where datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("statistics of the database")
}

/// PostgreSQL only: large payloads are stored compressed with LZ4, which PostgreSQL
/// compresses and decompresses several times faster than its default (pglz). This
/// PostgreSQL is built with LZ4, as the distributions' packages are; one built without it
/// keeps pglz and would fail this test.
#[sqlx::test(migrations = false)]
async fn large_payloads_are_stored_compressed_with_lz4(pool: PgPool) {
    let store = PgStore::new(pool.clone());
    store.migrate().await.expect("migrations apply");
    let now = Utc::now();
    let large = json!({"text": "a durable workflow ".repeat(2_000)});
    let id = store
        .create_run(&new_run("greet", large.clone(), now), now)
        .await
        .expect("create")
        .id;
    let w = worker(&store, &["greet"]).await;
    let task = store
        .claim(&w, 1, now + LEASE, now)
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(task.input, large, "the input reads back whole");
    let step = store
        .record_step(
            id,
            task.lease_token,
            &completed("fetch", 0, large.clone()),
            now,
        )
        .await
        .expect("step");
    assert_eq!(
        step.output,
        Some(large),
        "the step's result reads back whole"
    );

    let methods: (Option<String>, Option<String>) = sqlx::query_as(
        "select pg_column_compression(r.input), pg_column_compression(s.output)
         from kagzi.runs r join kagzi.steps s on s.run_id = r.id
         where r.id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("compression methods");
    assert_eq!(
        methods,
        (Some("lz4".to_owned()), Some("lz4".to_owned())),
        "the run's input and the step's result are compressed with LZ4"
    );
}

/// PostgreSQL only: the server's connections to PostgreSQL send at once (`TCP_NODELAY`).
/// Without it, a message that leaves in more than one piece waits for PostgreSQL's delayed
/// acknowledgement, about 40 ms: over TLS (`sslmode=prefer`, the default) that is every
/// message past one 16 KiB record, as a batch of starts or reports or a large input makes.
/// sqlx 0.9.0 stopped setting it; 0.9.1 sets it again. The connection is found
/// among this process's sockets by the port PostgreSQL sees it come from.
#[cfg(target_os = "linux")]
#[sqlx::test(migrations = false)]
async fn database_connections_send_without_waiting_for_acknowledgements(pool: PgPool) {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

    let store = PgStore::connect(&support::database_url(&pool), 1)
        .await
        .expect("the server's pool connects");
    let client_port: Option<i32> = sqlx::query_scalar("select inet_client_port()")
        .fetch_one(store.pool())
        .await
        .expect("the connection's port");
    let Some(client_port) = client_port else {
        eprintln!("DATABASE_URL names a Unix socket, which has no Nagle algorithm to turn off");
        return;
    };
    let client_port = u16::try_from(client_port).expect("a TCP port");

    let this_process = pidfd_open(getpid(), PidfdFlags::empty()).expect("a pidfd of this process");
    let mut found = 0;
    for entry in std::fs::read_dir("/proc/self/fd").expect("this process's descriptors") {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // A copy of the descriptor (it may have closed since the listing: then skip it).
        let Ok(socket) = pidfd_getfd(&this_process, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let addresses = rustix::net::getsockname(&socket)
            .ok()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok())
            .zip(
                rustix::net::getpeername(&socket)
                    .ok()
                    .flatten()
                    .and_then(|a| std::net::SocketAddr::try_from(a).ok()),
            );
        let Some((local, peer)) = addresses else {
            continue;
        };
        if local.port() == client_port && peer.port() == pool.connect_options().get_port() {
            found += 1;
            let nodelay = rustix::net::sockopt::tcp_nodelay(&socket).expect("TCP_NODELAY");
            assert!(
                nodelay,
                "the connection from port {client_port} waits to fill packets (Nagle's algorithm)"
            );
        }
    }
    assert_eq!(
        found, 1,
        "the connection from port {client_port} is one of this process's sockets"
    );
}

/// PostgreSQL only: a batch of step reports, heartbeats or completions reads the runs it
/// names, not every run in flight. With thousands of runs held by other workers in a table
/// not analyzed since (as after a burst), a plain join of the batch with the runs was planned
/// as a scan of every running run: on such a table W1 fell from ~1,800 to ~160 workflows/s.
#[sqlx::test(migrations = false)]
async fn batch_writes_read_their_own_runs_not_every_run_in_flight(pool: PgPool) {
    let (one, store) = on_one_connection(&pool).await;
    let now = Utc::now();
    let held_elsewhere = 5_000;
    sqlx::query(
        "insert into kagzi.runs (id, workflow, queue, status, input, retries, available_at,
                                 created_at, updated_at, attempts, lease_token,
                                 lease_expires_at, started_at, worker_id)
         select gen_random_uuid(), 'busy', 'elsewhere', 'running', 'null', 0, $1, $1, $1, 1,
                gen_random_uuid(), $1 + interval '1 hour', $1, gen_random_uuid()
         from generate_series(1, $2)",
    )
    .bind(now)
    .bind(held_elsewhere)
    .execute(&one)
    .await
    .expect("runs held by other workers");

    let w = worker(&store, &["greet"]).await;
    for n in 0..4 {
        store
            .create_run(&new_run("greet", json!(n), now), now)
            .await
            .expect("create");
    }
    let (tasks, _) = store
        .claim_or_next_due(&w, 10, now + LEASE, now)
        .await
        .expect("claim");
    assert_eq!(tasks.len(), 4, "the worker holds its four runs");

    // Several rounds, so PostgreSQL's choice between custom and generic plans is covered.
    let failed_before = failed_statements(&one).await;
    let before = runs_tuples_read(&one).await;
    for round in 0..8u32 {
        let writes: Vec<StepWrite> = tasks
            .iter()
            .map(|t| StepWrite {
                run: t.run_id,
                lease_token: t.lease_token,
                report: completed(&format!("step-{round}"), round, json!(round)),
            })
            .collect();
        for result in store.record_steps(&writes, now).await {
            result.expect("a step under a held lease");
        }
    }
    let leases: Vec<Lease> = tasks
        .iter()
        .map(|t| Lease {
            run_id: t.run_id,
            lease_token: t.lease_token,
        })
        .collect();
    for _ in 0..8 {
        let lost = store
            .heartbeat(w.id, &leases, now + LEASE * 2, now)
            .await
            .expect("heartbeat");
        assert!(lost.is_empty(), "no lease was lost: {lost:?}");
    }
    let completions: Vec<Completion> = tasks
        .iter()
        .map(|t| Completion {
            run: t.run_id,
            lease_token: t.lease_token,
            output: json!("done"),
            steps: vec![completed("last", 8, json!("last"))],
        })
        .collect();
    for result in store.complete_runs(&completions, now).await {
        let run = result.expect("a completion under a held lease");
        assert_eq!(run.status, RunStatus::Completed);
    }
    let read = runs_tuples_read(&one).await - before;
    assert_eq!(
        failed_statements(&one).await,
        failed_before,
        "every batch was written by its own statement (a failed batch statement is retried \
         one by one, which would hide it)"
    );
    assert!(
        read < i64::from(held_elsewhere) / 10,
        "17 batches over 4 runs read {read} run tuples with {held_elsewhere} runs held elsewhere"
    );
}

/// PostgreSQL only: a poll reads the due runs of its own workflows, not a backlog of another
/// workflow in the same queue. With `workflow` only a filter on the due index, each claim
/// and each empty poll read past every one of the 5,000 runs of a workflow no worker polls.
#[sqlx::test(migrations = false)]
async fn a_poll_never_reads_another_workflows_backlog(pool: PgPool) {
    let (one, store) = on_one_connection(&pool).await;
    let now = Utc::now();
    let backlog = 5_000;
    sqlx::query(
        "insert into kagzi.runs (id, workflow, queue, status, input, retries, available_at,
                                 created_at, updated_at, attempts)
         select gen_random_uuid(), 'unpolled', 'default', 'pending', 'null', 0,
                $1 - interval '1 hour' + g * interval '1 ms', $1, $1, 0
         from generate_series(1, $2) g",
    )
    .bind(now)
    .bind(backlog)
    .execute(&one)
    .await
    .expect("a backlog of a workflow no worker polls");
    let mut ids = Vec::new();
    for n in 0..3 {
        let run = store
            .create_run(&new_run("greet", json!(n), now), now)
            .await
            .expect("create");
        ids.push(run.id);
    }
    let w = worker(&store, &["greet", "wave"]).await;

    let before = runs_tuples_read(&one).await;
    let (tasks, _) = store
        .claim_or_next_due(&w, 10, now + LEASE, now)
        .await
        .expect("claim");
    assert_eq!(tasks.iter().map(|t| t.run_id).collect::<Vec<_>>(), ids);
    for _ in 0..5 {
        let (tasks, next) = store
            .claim_or_next_due(&w, 10, now + LEASE, now)
            .await
            .expect("an empty poll");
        assert!(tasks.is_empty() && next.is_none(), "{tasks:?} {next:?}");
        assert_eq!(store.next_due(&w).await.expect("next due"), None);
    }
    let read = runs_tuples_read(&one).await - before;
    assert!(
        read < i64::from(backlog) / 10,
        "a claim and 5 empty polls read {read} run tuples beside a backlog of {backlog}"
    );
}
