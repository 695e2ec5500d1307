//! End-to-end tests of cron schedules: a real server (in process, or the real binary so it
//! can be stopped and started), real workers, real HTTP, on PostgreSQL and on SQLite.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use kagzi::{Client, Overlap, Run, RunStatus, ScheduleId, Worker, WorkflowContext};
use serde_json::{Value, json};
use support::{ServerProcess, TestDb, eventually};
use tokio_util::sync::CancellationToken;

/// Starts a worker on `queue` that runs `tick` (returns its input at once) and `slow` (takes
/// `slow_ms`), until the returned token is cancelled.
async fn start_worker(url: &str, queue: &str, slow_ms: u64) -> CancellationToken {
    let mut worker = Worker::builder(url, queue)
        .max_concurrent(8)
        .build()
        .await
        .expect("worker");
    worker.register("tick", |_ctx: WorkflowContext, input: Value| async move {
        Ok(input)
    });
    worker.register(
        "slow",
        move |_ctx: WorkflowContext, input: Value| async move {
            tokio::time::sleep(Duration::from_millis(slow_ms)).await;
            Ok(input)
        },
    );
    let stop = CancellationToken::new();
    tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    stop
}

async fn runs_of(client: &Client, id: ScheduleId) -> Vec<Run> {
    let mut runs = client
        .schedules()
        .runs(id, None, None)
        .await
        .expect("schedule runs")
        .runs;
    runs.sort_by_key(|r| r.scheduled_at);
    runs
}

fn scheduled(run: &Run) -> DateTime<Utc> {
    run.scheduled_at.expect("a scheduled run has its due time")
}

async fn a_per_second_schedule_starts_runs_that_complete(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let stop = start_worker(&url, "ticks", 0).await;
    let client = Client::connect(&url).await.expect("client");
    let id = client
        .schedule("tick", "ticks", "* * * * * *", json!({"n": 1}))
        .name("ticker")
        .create()
        .await
        .expect("create");
    eventually(
        "three completed scheduled runs",
        Duration::from_secs(15),
        || {
            let client = client.clone();
            async move {
                runs_of(&client, id)
                    .await
                    .iter()
                    .filter(|r| r.status == RunStatus::Completed)
                    .count()
                    >= 3
            }
        },
    )
    .await;
    let runs = runs_of(&client, id).await;
    let mut seen = HashSet::new();
    for run in &runs {
        let at = scheduled(run);
        assert!(seen.insert(at), "one run per due time: {runs:#?}");
        assert_eq!(run.schedule_id, Some(id));
        assert_eq!(at, at.trunc_subsecs(0), "due times are whole seconds");
        let lateness = run.created_at - at;
        assert!(
            // Within a second of the due time, with room for a machine busy running tests.
            lateness >= chrono::Duration::zero()
                && lateness < chrono::Duration::milliseconds(1_500),
            "started {lateness} after its due time"
        );
        if run.status == RunStatus::Completed {
            assert_eq!(run.output, Some(json!({"n": 1})));
        }
    }
    let schedule = client.schedules().get("ticker").await.expect("by name");
    assert_eq!(schedule.id, id);
    assert!(schedule.last_fired_at.is_some());
    client.schedules().delete(id).await.expect("delete");
    let gone = client.schedules().get(id).await.expect_err("deleted");
    assert!(
        matches!(gone, kagzi::Error::Api { status: 404, .. }),
        "{gone:?}"
    );
    stop.cancel();
}

async fn pause_stops_firing_and_resume_continues_without_a_burst(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let client = Client::connect(&url).await.expect("client");
    // No worker and allow_all: every due time shows as one pending run.
    let id = client
        .schedule("tick", "paused", "* * * * * *", json!(null))
        .overlap(Overlap::AllowAll)
        .create()
        .await
        .expect("create");
    eventually("a first run", Duration::from_secs(5), || {
        let client = client.clone();
        async move { !runs_of(&client, id).await.is_empty() }
    })
    .await;
    let paused = client.schedules().pause(id).await.expect("pause");
    assert!(paused.paused && paused.next_fire_at.is_none());
    let at_pause = runs_of(&client, id).await.len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(
        runs_of(&client, id).await.len(),
        at_pause,
        "nothing fires while paused"
    );
    let resumed_at = Utc::now();
    let resumed = client.schedules().resume(id).await.expect("resume");
    assert!(!resumed.paused);
    assert!(resumed.next_fire_at.expect("a next due time") > resumed_at);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let runs = runs_of(&client, id).await;
    let after: Vec<_> = runs[at_pause..].iter().map(scheduled).collect();
    assert!(
        (1..=3).contains(&after.len()),
        "about one run a second after resuming, no burst: {after:?}"
    );
    assert!(
        after.iter().all(|at| *at > resumed_at),
        "no due time from the pause was started: {after:?}"
    );
}

async fn overlap_skip_never_overlaps_and_buffer_one_starts_when_the_previous_run_ends(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let stop = start_worker(&url, "overlap", 1_500).await;
    let client = Client::connect(&url).await.expect("client");
    let skip = client
        .schedule("slow", "overlap", "* * * * * *", json!("skip"))
        .create()
        .await
        .expect("create skip");
    let buffer = client
        .schedule("slow", "overlap", "* * * * * *", json!("buffer"))
        .overlap(Overlap::BufferOne)
        .create()
        .await
        .expect("create buffer");
    tokio::time::sleep(Duration::from_secs(6)).await;
    client.schedules().pause(skip).await.expect("pause");
    client.schedules().pause(buffer).await.expect("pause");
    eventually("every run ended", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let mut runs = runs_of(&client, skip).await;
            runs.extend(runs_of(&client, buffer).await);
            runs.iter().all(|r| r.status.is_terminal())
        }
    })
    .await;

    for (id, policy) in [(skip, "skip"), (buffer, "buffer_one")] {
        let runs = runs_of(&client, id).await;
        assert!(runs.len() >= 2, "{policy}: {runs:#?}");
        assert!(
            runs.len() <= 5,
            "{policy}: fewer runs than due times: {}",
            runs.len()
        );
        for pair in runs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let a_end = a.finished_at.expect("the earlier run finished");
            assert!(
                b.created_at >= a_end,
                "{policy}: run for {} started before the run for {} ended",
                scheduled(b),
                scheduled(a)
            );
            if policy == "buffer_one" {
                let gap = b.created_at - a_end;
                assert!(
                    gap < chrono::Duration::milliseconds(900),
                    "buffer_one: the buffered run started {gap} after the previous one ended"
                );
            }
        }
    }
    stop.cancel();
}

async fn after_downtime_catch_up_starts_only_the_most_recent_missed_times(db: TestDb) {
    let mut server = ServerProcess::start(&db.url(), support::free_port()).await;
    let client = Client::connect(&server.url).await.expect("client");
    // No worker and allow_all, so every started due time shows as one pending run; catch up
    // at most three missed due times.
    let id = client
        .schedule("tick", "catchup", "* * * * * *", json!(null))
        .overlap(Overlap::AllowAll)
        .catch_up_max(3)
        .create()
        .await
        .expect("create");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.kill();
    let down_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let up_at = Utc::now();
    server.restart().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let runs = runs_of(&client, id).await;
    let before: Vec<_> = runs.iter().filter(|r| r.created_at < down_at).collect();
    let after: Vec<_> = runs.iter().filter(|r| r.created_at >= up_at).collect();
    assert!(!before.is_empty(), "fired before the outage: {runs:#?}");
    let first = after
        .iter()
        .map(|r| r.created_at)
        .min()
        .expect("fired after the restart");
    // One fire starts its runs in one transaction, with one creation time.
    let burst: Vec<_> = after
        .iter()
        .filter(|r| r.created_at == first)
        .map(|r| scheduled(r))
        .collect();
    assert_eq!(
        burst.len(),
        3,
        "the three most recent missed due times: {burst:?}"
    );
    for pair in burst.windows(2) {
        assert_eq!(pair[1] - pair[0], chrono::Duration::seconds(1), "{burst:?}");
    }
    let last_before = before.iter().map(|r| scheduled(r)).max().expect("before");
    assert!(
        burst[0] - last_before >= chrono::Duration::seconds(2),
        "the older missed due times were dropped: last before {last_before}, burst {burst:?}"
    );
}

async fn invalid_cron_and_unknown_schedules_get_problem_bodies(db: TestDb) {
    let server = db.start_server().await;
    let url = support::url(&server);
    let http = reqwest::Client::new();
    let bad = http
        .post(format!("{url}/v1/schedules"))
        .json(&json!({"workflow": "tick", "cron": "0 61 * * *"}))
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), 422);
    assert_eq!(
        bad.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
    let problem: Value = bad.json().await.expect("problem");
    let detail = problem["detail"].as_str().expect("detail");
    assert!(
        detail.contains("0 61 * * *") && detail.contains("invalid"),
        "{detail}"
    );
    let fields = http
        .post(format!("{url}/v1/schedules"))
        .json(&json!({"workflow": "tick", "cron": "* * *"}))
        .send()
        .await
        .expect("send");
    assert_eq!(fields.status(), 422);
    let problem: Value = fields.json().await.expect("problem");
    assert!(
        problem["detail"]
            .as_str()
            .expect("detail")
            .contains("has 3 fields"),
        "{problem}"
    );
    let zone = http
        .post(format!("{url}/v1/schedules"))
        .json(&json!({"workflow": "tick", "cron": "0 9 * * *", "time_zone": "Mars/Olympus"}))
        .send()
        .await
        .expect("send");
    assert_eq!(zone.status(), 422);
    for (method, path) in [
        (
            reqwest::Method::GET,
            "/v1/schedules/0190b5a0-0000-7000-8000-000000000001",
        ),
        (reqwest::Method::GET, "/v1/schedules/no-such-name"),
        (reqwest::Method::DELETE, "/v1/schedules/no-such-name"),
        (reqwest::Method::POST, "/v1/schedules/no-such-name/pause"),
        (reqwest::Method::POST, "/v1/schedules/no-such-name/resume"),
        (reqwest::Method::POST, "/v1/schedules/no-such-name/trigger"),
        (reqwest::Method::GET, "/v1/schedules/no-such-name/runs"),
    ] {
        let res = http
            .request(method.clone(), format!("{url}{path}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(res.status(), 404, "{method} {path}");
        let problem: Value = res.json().await.expect("problem");
        assert_eq!(problem["status"], 404);
        assert!(
            problem["detail"]
                .as_str()
                .expect("detail")
                .contains("schedule"),
            "{problem}"
        );
    }
    let patch = http
        .patch(format!("{url}/v1/schedules/no-such-name"))
        .json(&json!({"cron": "* * * * *"}))
        .send()
        .await
        .expect("send");
    assert_eq!(patch.status(), 404);

    // A valid schedule: a bad update is refused and changes nothing; a good one applies.
    let client = Client::connect(&url).await.expect("client");
    let id = client
        .schedule("tick", "q", "0 0 9 * * *", json!(null))
        .name("daily")
        .paused(true)
        .create()
        .await
        .expect("create");
    let refused = client
        .schedules()
        .update(id, &kagzi::ScheduleUpdate::default().cron("nope"))
        .await
        .expect_err("bad cron");
    assert!(
        matches!(refused, kagzi::Error::Api { status: 422, .. }),
        "{refused:?}"
    );
    let updated = client
        .schedules()
        .update(
            "daily",
            &kagzi::ScheduleUpdate::default().cron("*/5 * * * *"),
        )
        .await
        .expect("update");
    assert_eq!(updated.cron, "*/5 * * * *");
    assert!(updated.paused && updated.next_fire_at.is_none());
    let taken = client
        .schedule("tick", "q", "0 0 9 * * *", json!(null))
        .name("daily")
        .create()
        .await
        .expect_err("name taken");
    assert!(
        matches!(taken, kagzi::Error::Api { status: 409, .. }),
        "{taken:?}"
    );
    // Trigger starts a run at once, even while paused.
    let run = client.schedules().trigger("daily").await.expect("trigger");
    let run = client.run(run).await.expect("run");
    assert_eq!(run.schedule_id, Some(id));
    let listed = client
        .list_runs(kagzi::RunFilter::default().limit(10))
        .await
        .expect("list");
    assert_eq!(listed.runs[0].schedule_id, Some(id));
    let by_schedule: Value = http
        .get(format!("{url}/v1/runs?schedule_id={id}"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(by_schedule["runs"].as_array().expect("runs").len(), 1);
    assert_eq!(by_schedule["runs"][0]["schedule_id"], json!(id.to_string()));
    assert!(by_schedule["runs"][0]["scheduled_at"].is_string());
}

async fn the_scheduling_example_runs_against_a_real_server(db: TestDb) {
    let server = ServerProcess::start(&db.url(), support::free_port()).await;
    let stdout = support::run_example("scheduling", &server.url).await;
    assert!(
        stdout.contains("scheduled run"),
        "example printed: {stdout}"
    );
    assert!(
        stdout.contains("deleted schedule"),
        "example printed: {stdout}"
    );
}

both_stores!(
    a_per_second_schedule_starts_runs_that_complete,
    pause_stops_firing_and_resume_continues_without_a_burst,
    overlap_skip_never_overlaps_and_buffer_one_starts_when_the_previous_run_ends,
    after_downtime_catch_up_starts_only_the_most_recent_missed_times,
    invalid_cron_and_unknown_schedules_get_problem_bodies,
    the_scheduling_example_runs_against_a_real_server,
);

/// Two server processes on one PostgreSQL database, both running a scheduler, for several
/// seconds: every due time has exactly one run — none twice, none missing.
#[sqlx::test(migrations = false)]
async fn two_servers_on_one_database_start_exactly_one_run_per_due_time(pool: sqlx::PgPool) {
    let db_url = support::database_url(&pool);
    let a = ServerProcess::start(&db_url, support::free_port()).await;
    let b = ServerProcess::start(&db_url, support::free_port()).await;
    let client = Client::connect(&a.url).await.expect("client");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            client
                .schedule("tick", "replicas", "* * * * * *", json!(i))
                .overlap(Overlap::AllowAll)
                // A pass delayed by a busy machine catches up instead of leaving a gap.
                .catch_up_max(10)
                .create()
                .await
                .expect("create"),
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other = Client::connect(&b.url).await.expect("client");
    for id in ids {
        other.schedules().pause(id).await.expect("pause");
        let runs = runs_of(&other, id).await;
        let times: Vec<_> = runs.iter().map(scheduled).collect();
        assert!(times.len() >= 4, "fired about once a second: {times:?}");
        let distinct: HashSet<_> = times.iter().collect();
        assert_eq!(distinct.len(), times.len(), "no due time twice: {times:?}");
        for pair in times.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                chrono::Duration::seconds(1),
                "no due time missing: {times:?}"
            );
        }
    }
    drop((a, b));
}
