//! HTTP tests through the router (no socket), each against its own fresh database.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kagzi_server::{AppState, Config, PgStore, Store, app};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

async fn router(pool: PgPool) -> Router {
    router_with(pool, Config::defaults()).await
}

async fn router_with(pool: PgPool, config: Config) -> Router {
    let store = PgStore::new(pool);
    store.migrate().await.expect("migrations apply");
    app(AppState::new(std::sync::Arc::new(store), config))
}

/// Sends a bare request and answers with the raw response.
async fn raw(app: &Router, req: Request<Body>) -> axum::response::Response {
    app.clone().oneshot(req).await.expect("router answers")
}

async fn text(res: axum::response::Response) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("UTF-8 body")
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn send(app: &Router, method: Method, uri: &str, body: Option<Body>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(body.unwrap_or_else(Body::empty)).expect("request");
    reply(app.clone().oneshot(req).await.expect("router answers")).await
}

async fn reply(res: axum::response::Response) -> Reply {
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    };
    Reply {
        status,
        content_type,
        body,
    }
}

async fn post(app: &Router, uri: &str, body: Value) -> Reply {
    send(app, Method::POST, uri, Some(Body::from(body.to_string()))).await
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Method::GET, uri, None).await
}

/// Asserts a problem+json answer with `status` whose detail mentions `needle`.
fn assert_problem(reply: &Reply, status: StatusCode, needle: &str) {
    assert_eq!(reply.status, status, "{:?}", reply.body);
    assert_eq!(reply.content_type, "application/problem+json");
    assert_eq!(reply.body["status"], status.as_u16());
    assert!(
        reply.body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:kagzi:problem:"))
    );
    assert!(reply.body["title"].is_string());
    let detail = reply.body["detail"].as_str().expect("detail");
    assert!(
        detail.contains(needle),
        "detail {detail:?} should mention {needle:?}"
    );
}

async fn run_count(app: &Router) -> usize {
    get(app, "/v1/runs?limit=1000").await.body["runs"]
        .as_array()
        .expect("runs")
        .len()
}

#[sqlx::test(migrations = false)]
async fn start_read_and_list_a_run(pool: PgPool) {
    let app = router(pool).await;
    let started = post(
        &app,
        "/v1/runs",
        json!({"workflow": "greet", "input": {"name": "World"}}),
    )
    .await;
    assert_eq!(started.status, StatusCode::CREATED);
    assert_eq!(started.body["status"], "pending");
    let id = started.body["id"].as_str().expect("id");

    let run = get(&app, &format!("/v1/runs/{id}")).await;
    assert_eq!(run.status, StatusCode::OK);
    assert_eq!(run.body["workflow"], "greet");
    assert_eq!(run.body["queue"], "default");
    assert_eq!(run.body["input"], json!({"name": "World"}));
    assert_eq!(run.body["attempts"], 0);
    assert_eq!(run.body["output"], Value::Null);

    let listed = get(&app, "/v1/runs?workflow=greet&status=pending").await;
    assert_eq!(listed.body["runs"][0]["id"], id);
    assert_eq!(listed.body["next_cursor"], Value::Null);
    let steps = get(&app, &format!("/v1/runs/{id}/steps")).await;
    assert_eq!(steps.body, json!({"steps": []}));
    let waited = get(&app, &format!("/v1/runs/{id}/result?timeout_ms=10")).await;
    assert_eq!(
        waited.body["status"], "pending",
        "not terminal: answered after the timeout"
    );
}

#[sqlx::test(migrations = false)]
async fn list_pages_with_a_cursor(pool: PgPool) {
    let app = router(pool).await;
    for i in 0..3 {
        post(&app, "/v1/runs", json!({"workflow": "w", "input": i})).await;
    }
    let first = get(&app, "/v1/runs?limit=2").await;
    assert_eq!(first.body["runs"].as_array().expect("runs").len(), 2);
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = get(&app, &format!("/v1/runs?limit=2&cursor={cursor}")).await;
    assert_eq!(second.body["runs"].as_array().expect("runs").len(), 1);
    assert_eq!(second.body["runs"][0]["input"], 0, "oldest last");
    assert_eq!(second.body["next_cursor"], Value::Null);
    assert_problem(
        &get(&app, "/v1/runs?limit=0").await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    let bad_status = get(&app, "/v1/runs?status=sleepy").await;
    assert_problem(&bad_status, StatusCode::BAD_REQUEST, "pending");
}

#[sqlx::test(migrations = false)]
async fn bad_input_gets_a_problem_body_and_writes_nothing(pool: PgPool) {
    let app = router(pool).await;
    let raw = |s: &'static str| Some(Body::from(s));
    let malformed = send(&app, Method::POST, "/v1/runs", raw("{\"workflow\": ")).await;
    assert_problem(&malformed, StatusCode::BAD_REQUEST, "parse");
    let missing = post(&app, "/v1/runs", json!({"input": 1})).await;
    assert_problem(
        &missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing field `workflow`",
    );
    let mistyped = post(
        &app,
        "/v1/runs",
        json!({"workflow": "w", "retries": "three"}),
    )
    .await;
    assert_problem(&mistyped, StatusCode::UNPROCESSABLE_ENTITY, "retries");
    let unknown_field = post(&app, "/v1/runs", json!({"workflow": "w", "retry": 3})).await;
    assert_problem(
        &unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field `retry`",
    );
    let empty = post(&app, "/v1/runs", json!({"workflow": " "})).await;
    assert_problem(
        &empty,
        StatusCode::UNPROCESSABLE_ENTITY,
        "workflow must not be empty",
    );

    let req = Request::post("/v1/runs")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(json!({"workflow": "w"}).to_string()))
        .expect("request");
    let wrong_type = reply(app.clone().oneshot(req).await.expect("answer")).await;
    assert_problem(
        &wrong_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type",
    );

    assert_eq!(run_count(&app).await, 0, "nothing was written");
}

#[sqlx::test(migrations = false)]
async fn payloads_over_two_mib_are_refused_with_413(pool: PgPool) {
    let app = router(pool).await;
    let limit = 2 * 1024 * 1024;
    // Just over the limit as a payload, but inside the body limit's envelope.
    let input = "x".repeat(limit);
    let over = post(&app, "/v1/runs", json!({"workflow": "w", "input": input})).await;
    assert_problem(
        &over,
        StatusCode::PAYLOAD_TOO_LARGE,
        "input is larger than the limit of 2097152 bytes",
    );
    // Far over: refused while reading the body.
    let huge = "x".repeat(limit * 2);
    let huge = post(&app, "/v1/runs", json!({"workflow": "w", "input": huge})).await;
    assert_problem(
        &huge,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body is larger than the limit",
    );
    assert_eq!(run_count(&app).await, 0, "nothing was written");
    // Just under the limit is fine.
    let under = "x".repeat(limit - 2);
    let ok = post(&app, "/v1/runs", json!({"workflow": "w", "input": under})).await;
    assert_eq!(ok.status, StatusCode::CREATED);
}

#[sqlx::test(migrations = false)]
async fn unknown_runs_routes_and_methods_are_problems(pool: PgPool) {
    let app = router(pool).await;
    let id = "01900000-0000-7000-8000-000000000000";
    assert_problem(
        &get(&app, &format!("/v1/runs/{id}")).await,
        StatusCode::NOT_FOUND,
        id,
    );
    assert_problem(
        &get(&app, &format!("/v1/runs/{id}/steps")).await,
        StatusCode::NOT_FOUND,
        id,
    );
    assert_problem(
        &get(&app, &format!("/v1/runs/{id}/result")).await,
        StatusCode::NOT_FOUND,
        id,
    );
    let cancel = post(&app, &format!("/v1/runs/{id}/cancel"), json!({})).await;
    assert_problem(&cancel, StatusCode::NOT_FOUND, id);
    // A worker that never registered, asked twice (the server keeps only registrations it
    // found).
    for _ in 0..2 {
        let poll = post(&app, &format!("/v1/workers/{id}/poll"), json!({"max": 1})).await;
        assert_problem(&poll, StatusCode::NOT_FOUND, id);
    }
    assert_problem(
        &get(&app, "/v1/runs/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "UUID",
    );
    assert_problem(
        &get(&app, "/v1/nothing").await,
        StatusCode::NOT_FOUND,
        "no route for GET /v1/nothing",
    );
    let wrong_method = send(&app, Method::DELETE, "/v1/runs", None).await;
    assert_problem(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, "DELETE");
    let worker = "01900000-0000-7000-8000-000000000001";
    let poll = post(
        &app,
        &format!("/v1/workers/{worker}/poll"),
        json!({"max": 1}),
    )
    .await;
    assert_problem(&poll, StatusCode::NOT_FOUND, worker);
}

#[sqlx::test(migrations = false)]
async fn the_worker_protocol_claims_records_and_fences(pool: PgPool) {
    let app = router(pool).await;
    let run = post(&app, "/v1/runs", json!({"workflow": "greet", "input": "x"})).await;
    let run_id = run.body["id"].as_str().expect("id").to_owned();
    let reg = json!({"queue": "default", "workflows": ["greet"], "capacity": 4});
    let worker = post(&app, "/v1/workers", reg).await;
    assert_eq!(worker.status, StatusCode::CREATED);
    assert!(
        worker.body["heartbeat_interval_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    let worker_id = worker.body["id"].as_str().expect("worker id").to_owned();

    let poll = post(
        &app,
        &format!("/v1/workers/{worker_id}/poll"),
        json!({"max": 4}),
    )
    .await;
    let task = &poll.body["runs"][0];
    assert_eq!(task["run_id"], run_id.as_str());
    assert_eq!(task["attempt"], 1);
    let token = task["lease_token"].as_str().expect("token").to_owned();

    let step = json!({"lease_token": token, "key": "a", "position": 0, "status": "completed", "output": 1});
    let recorded = post(&app, &format!("/v1/runs/{run_id}/steps"), step).await;
    assert_eq!(recorded.status, StatusCode::OK);
    assert_eq!(recorded.body["output"], 1);
    let stale = json!({"lease_token": uuid::Uuid::new_v4(), "output": "zombie"});
    let refused = post(&app, &format!("/v1/runs/{run_id}/complete"), stale).await;
    assert_problem(&refused, StatusCode::CONFLICT, "not held under this lease");

    let hb = json!({"runs": [{"run_id": run_id, "lease_token": token}]});
    let beat = post(&app, &format!("/v1/workers/{worker_id}/heartbeat"), hb).await;
    assert_eq!(beat.body, json!({"lost": []}));

    // A completion may carry steps; a bad one refuses the whole completion, writing nothing.
    let bad_step = json!({"lease_token": token, "output": "hi",
                          "steps": [{"key": "b", "position": 1, "output": 2},
                                    {"key": " ", "position": 2, "output": 3}]});
    let refused = post(&app, &format!("/v1/runs/{run_id}/complete"), bad_step).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "key");
    let zombie = json!({"lease_token": uuid::Uuid::new_v4(), "output": "hi",
                        "steps": [{"key": "b", "position": 1, "output": "zombie"}]});
    let refused = post(&app, &format!("/v1/runs/{run_id}/complete"), zombie).await;
    assert_problem(&refused, StatusCode::CONFLICT, "not held under this lease");
    let steps = get(&app, &format!("/v1/runs/{run_id}/steps")).await;
    assert_eq!(
        steps.body["steps"].as_array().map(Vec::len),
        Some(1),
        "refused completions wrote no step: {}",
        steps.body
    );

    let done = post(
        &app,
        &format!("/v1/runs/{run_id}/complete"),
        json!({"lease_token": token, "output": "hi",
               "steps": [{"key": "b", "position": 1, "output": 2}]}),
    )
    .await;
    assert_eq!(done.body["status"], "completed");
    let steps = get(&app, &format!("/v1/runs/{run_id}/steps")).await;
    let recorded: Vec<(Value, Value)> = steps.body["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["key"].clone(), s["output"].clone()))
        .collect();
    assert_eq!(
        recorded,
        vec![(json!("a"), json!(1)), (json!("b"), json!(2))],
        "the carried step was recorded with the completion"
    );
    let result = get(&app, &format!("/v1/runs/{run_id}/result")).await;
    assert_eq!(result.body["output"], "hi");
    let cancel = post(&app, &format!("/v1/runs/{run_id}/cancel"), json!({})).await;
    assert_problem(&cancel, StatusCode::CONFLICT, "already ended as completed");

    let empty = post(
        &app,
        &format!("/v1/workers/{worker_id}/poll"),
        json!({"max": 1, "timeout_ms": 0}),
    )
    .await;
    assert_eq!(empty.body, json!({"runs": []}));
    let bad_max = post(
        &app,
        &format!("/v1/workers/{worker_id}/poll"),
        json!({"max": 0}),
    )
    .await;
    assert_problem(
        &bad_max,
        StatusCode::UNPROCESSABLE_ENTITY,
        "max must be between 1",
    );
    let gone = send(
        &app,
        Method::DELETE,
        &format!("/v1/workers/{worker_id}"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
}

/// Registers a worker on the default queue for `workflows`; answers its id.
async fn register(app: &Router, workflows: &[&str], capacity: u32) -> String {
    let reg = json!({"queue": "default", "workflows": workflows, "capacity": capacity});
    let worker = post(app, "/v1/workers", reg).await;
    assert_eq!(worker.status, StatusCode::CREATED, "{}", worker.body);
    worker.body["id"].as_str().expect("worker id").to_owned()
}

/// Polls as `worker` in the background.
fn poll_in_background(app: &Router, worker: &str, body: Value) -> tokio::task::JoinHandle<Reply> {
    let (app, uri) = (app.clone(), format!("/v1/workers/{worker}/poll"));
    tokio::spawn(async move { post(&app, &uri, body).await })
}

/// Waits until `n` polls wait on the default queue.
async fn polls_waiting(state: &AppState, n: usize) {
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while state.dispatcher.waiting("default") != n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the polls wait");
}

#[sqlx::test(migrations = false)]
async fn a_start_is_handed_straight_to_a_poll_waiting_for_it(pool: PgPool) {
    let store = PgStore::new(pool);
    store.migrate().await.expect("migrations apply");
    let state = AppState::new(std::sync::Arc::new(store), Config::defaults());
    let app = app(state.clone());
    let greeter = register(&app, &["greet"], 2).await;
    let other = register(&app, &["other"], 2).await;
    let others_poll = poll_in_background(&app, &other, json!({"max": 2, "timeout_ms": 30000}));
    let poll = poll_in_background(&app, &greeter, json!({"max": 2, "timeout_ms": 30000}));
    polls_waiting(&state, 2).await;

    // A delayed start is not due, so no poll takes it.
    let later = json!({"workflow": "greet", "input": "later", "delay_ms": 60000});
    let delayed = post(&app, "/v1/runs", later).await;
    assert_eq!(delayed.status, StatusCode::CREATED);
    assert_eq!(delayed.body["status"], "pending");
    let start = json!({"workflow": "greet", "input": "now", "idempotency_key": "k"});
    let started = post(&app, "/v1/runs", start.clone()).await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.body);
    assert_eq!(
        started.body["status"], "running",
        "handed to the waiting worker"
    );
    let run_id = started.body["id"].as_str().expect("id").to_owned();
    let answer = poll.await.expect("poll");
    let tasks = answer.body["runs"].as_array().expect("runs");
    assert_eq!(tasks.len(), 1, "{}", answer.body);
    assert_eq!(tasks[0]["run_id"], run_id.as_str());
    assert_eq!(tasks[0]["input"], "now");
    assert_eq!(tasks[0]["attempt"], 1);
    assert_eq!(tasks[0]["journal"], json!([]));
    let token = tasks[0]["lease_token"].as_str().expect("token").to_owned();
    let run = get(&app, &format!("/v1/runs/{run_id}")).await;
    assert_eq!(run.body["status"], "running");
    assert_eq!(run.body["attempts"], 1);

    // The same key again while a poll waits: the earlier run, and nothing handed over.
    let next_poll = poll_in_background(&app, &greeter, json!({"max": 1, "timeout_ms": 1000}));
    polls_waiting(&state, 2).await;
    let again = post(&app, "/v1/runs", start).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["id"], run_id.as_str());
    assert_eq!(again.body["status"], "running");
    assert_eq!(next_poll.await.expect("poll").body, json!({"runs": []}));

    // The worker reports under the lease it was handed; the result waiter gets the run.
    let waiter = {
        let (app, uri) = (
            app.clone(),
            format!("/v1/runs/{run_id}/result?timeout_ms=30000"),
        );
        tokio::spawn(async move { get(&app, &uri).await })
    };
    let done = post(
        &app,
        &format!("/v1/runs/{run_id}/complete"),
        json!({"lease_token": token, "output": "hi"}),
    )
    .await;
    assert_eq!(done.body["status"], "completed", "{}", done.body);
    let result = waiter.await.expect("result");
    assert_eq!(result.body["status"], "completed");
    assert_eq!(result.body["output"], "hi");
    // The other worker was handed none of those, only a run of its own workflow.
    let own = post(&app, "/v1/runs", json!({"workflow": "other"})).await;
    assert_eq!(own.body["status"], "running");
    let answer = others_poll.await.expect("poll");
    let tasks = answer.body["runs"].as_array().expect("runs");
    assert_eq!(tasks.len(), 1, "{}", answer.body);
    assert_eq!(tasks[0]["run_id"], own.body["id"]);
    assert_eq!(state.dispatcher.waiting("default"), 0);

    // A poll whose request went away (the worker hung up) is not handed anything.
    let gone = poll_in_background(&app, &greeter, json!({"max": 1, "timeout_ms": 30000}));
    polls_waiting(&state, 1).await;
    gone.abort();
    polls_waiting(&state, 0).await;
    let unclaimed = post(&app, "/v1/runs", json!({"workflow": "greet"})).await;
    assert_eq!(unclaimed.body["status"], "pending");
}

/// Starts `n` runs, registers a worker and claims them: `(run id, lease token)` each, in
/// start order.
async fn claimed_runs(app: &Router, n: usize) -> Vec<(String, String)> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let run = post(app, "/v1/runs", json!({"workflow": "greet", "input": i})).await;
        ids.push(run.body["id"].as_str().expect("id").to_owned());
    }
    let worker = post(
        app,
        "/v1/workers",
        json!({"queue": "default", "workflows": ["greet"], "capacity": n}),
    )
    .await;
    let worker_id = worker.body["id"].as_str().expect("worker id").to_owned();
    let poll = post(
        app,
        &format!("/v1/workers/{worker_id}/poll"),
        json!({"max": n}),
    )
    .await;
    let tasks = poll.body["runs"].as_array().expect("runs");
    ids.into_iter()
        .map(|id| {
            let task = tasks
                .iter()
                .find(|t| t["run_id"] == id.as_str())
                .expect("every run claimed");
            (id, task["lease_token"].as_str().expect("token").to_owned())
        })
        .collect()
}

async fn step_outputs(app: &Router, run_id: &str) -> Vec<(Value, Value)> {
    let steps = get(app, &format!("/v1/runs/{run_id}/steps")).await;
    steps.body["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| (s["key"].clone(), s["output"].clone()))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_reports_is_answered_report_by_report(pool: PgPool) {
    let app = router(pool).await;
    let runs = claimed_runs(&app, 3).await;
    let [(a, a_token), (b, _), (c, c_token)] = &runs[..] else {
        panic!("three runs");
    };
    let batch = json!({"reports": [
        {"run_id": a, "step": {"lease_token": a_token, "key": "k", "position": 0, "status": "completed", "output": 1}},
        {"run_id": b, "step": {"lease_token": uuid::Uuid::new_v4(), "key": "k", "position": 0, "status": "completed", "output": "zombie"}},
        {"run_id": c, "complete": {"lease_token": c_token, "output": "c", "steps": [{"key": "last", "position": 0, "output": 3}]}}
    ]});
    let answer = post(&app, "/v1/reports", batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "one result per report: {}", answer.body);
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["step"]["key"], "k");
    assert_eq!(results[0]["step"]["output"], 1);
    assert_eq!(results[1]["status"], 409);
    assert_eq!(
        results[1]["problem"]["type"],
        "urn:kagzi:problem:lease-lost"
    );
    assert_eq!(results[2]["status"], 200);
    assert!(results[2].get("problem").is_none(), "{}", results[2]);

    // What was recorded is exactly what was accepted.
    assert_eq!(step_outputs(&app, a).await, vec![(json!("k"), json!(1))]);
    assert_eq!(step_outputs(&app, b).await, vec![]);
    assert_eq!(step_outputs(&app, c).await, vec![(json!("last"), json!(3))]);
    let c_run = get(&app, &format!("/v1/runs/{c}")).await;
    assert_eq!(c_run.body["status"], "completed");
    assert_eq!(c_run.body["output"], "c");
    assert_eq!(
        get(&app, &format!("/v1/runs/{a}")).await.body["status"],
        "running"
    );

    // The first result wins in a batch too; a completion of an ended run is refused.
    let again = json!({"reports": [
        {"run_id": a, "step": {"lease_token": a_token, "key": "k", "position": 0, "status": "completed", "output": 99}},
        {"run_id": c, "complete": {"lease_token": c_token, "output": "again"}}
    ]});
    let answer = post(&app, "/v1/reports", again).await;
    assert_eq!(answer.body["results"][0]["step"]["output"], 1);
    assert_eq!(answer.body["results"][1]["status"], 409);
    assert_eq!(
        get(&app, &format!("/v1/runs/{c}")).await.body["output"],
        "c"
    );
}

#[sqlx::test(migrations = false)]
async fn completions_written_together_record_their_steps_first_write_wins(pool: PgPool) {
    let app = router(pool).await;
    let runs = claimed_runs(&app, 5).await;
    let [
        (a, a_token),
        (b, b_token),
        (c, c_token),
        (d, _),
        (e, e_token),
    ] = &runs[..]
    else {
        panic!("five runs");
    };
    // Before the completions: `a` has a failed attempt of step `f`, `b` has step `s` recorded.
    let failed = json!({"lease_token": a_token, "key": "f", "position": 0, "status": "failed", "error": "boom"});
    assert_eq!(
        post(&app, &format!("/v1/runs/{a}/steps"), failed)
            .await
            .status,
        StatusCode::OK
    );
    let first = json!({"lease_token": b_token, "key": "s", "position": 0, "status": "completed", "output": "first"});
    assert_eq!(
        post(&app, &format!("/v1/runs/{b}/steps"), first)
            .await
            .status,
        StatusCode::OK
    );

    let batch = json!({"reports": [
        {"run_id": a, "complete": {"lease_token": a_token, "output": "a", "steps": [
            {"key": "f", "position": 0, "output": "fixed"}, {"key": "g", "position": 1, "output": 2}]}},
        {"run_id": b, "complete": {"lease_token": b_token, "output": "b", "steps": [
            {"key": "s", "position": 0, "output": "second"}]}},
        {"run_id": c, "complete": {"lease_token": c_token, "output": "c", "steps": [
            {"key": "x", "position": 0, "output": 1}, {"key": "x", "position": 0, "output": 2}]}},
        {"run_id": d, "complete": {"lease_token": uuid::Uuid::new_v4(), "output": "d", "steps": [
            {"key": "s", "position": 0, "output": "zombie"}]}},
        {"run_id": e, "complete": {"lease_token": e_token, "output": "e"}}
    ]});
    let answer = post(&app, "/v1/reports", batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let statuses: Vec<&Value> = answer.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [200, 200, 200, 409, 200], "{}", answer.body);

    // A failed step is overwritten, a recorded one kept (first write wins), a key given twice
    // recorded once; the stale lease wrote nothing and ended nothing.
    assert_eq!(
        step_outputs(&app, a).await,
        vec![(json!("f"), json!("fixed")), (json!("g"), json!(2))]
    );
    assert_eq!(
        step_outputs(&app, b).await,
        vec![(json!("s"), json!("first"))]
    );
    assert_eq!(step_outputs(&app, c).await, vec![(json!("x"), json!(1))]);
    assert_eq!(step_outputs(&app, d).await, vec![]);
    assert_eq!(step_outputs(&app, e).await, vec![]);
    for (id, status, output) in [
        (a, "completed", json!("a")),
        (b, "completed", json!("b")),
        (c, "completed", json!("c")),
        (d, "running", Value::Null),
        (e, "completed", json!("e")),
    ] {
        let run = get(&app, &format!("/v1/runs/{id}")).await;
        assert_eq!(run.body["status"], status, "{id}: {}", run.body);
        assert_eq!(run.body["output"], output, "{id}: {}", run.body);
    }
}

#[sqlx::test(migrations = false)]
async fn a_malformed_batch_is_refused_whole_and_writes_nothing(pool: PgPool) {
    let app = router(pool).await;
    let runs = claimed_runs(&app, 1).await;
    let (a, token) = &runs[0];
    let step = json!({"lease_token": token, "key": "k", "position": 0, "status": "completed", "output": 1});
    let empty = post(&app, "/v1/reports", json!({"reports": []})).await;
    assert_problem(&empty, StatusCode::UNPROCESSABLE_ENTITY, "1 to 256 reports");
    let too_many: Vec<Value> = (0..257)
        .map(|_| json!({"run_id": a, "step": step}))
        .collect();
    let refused = post(&app, "/v1/reports", json!({"reports": too_many})).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "not 257");
    let unknown = json!({"reports": [{"run_id": a, "step": step}, {"run_id": a, "stpe": step}]});
    let refused = post(&app, "/v1/reports", unknown).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "stpe");
    let bad_id =
        json!({"reports": [{"run_id": a, "step": step}, {"run_id": "nope", "step": step}]});
    let refused = post(&app, "/v1/reports", bad_id).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "run_id");
    // A report its own route would refuse as invalid refuses the batch, naming it.
    let bad_key = json!({"reports": [{"run_id": a, "step": step},
        {"run_id": a, "step": {"lease_token": token, "key": " ", "position": 1, "status": "completed"}}]});
    let refused = post(&app, "/v1/reports", bad_key).await;
    assert_problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reports[1]: key must not be empty",
    );
    let both =
        json!({"reports": [{"run_id": a, "step": step, "complete": {"lease_token": token}}]});
    let refused = post(&app, "/v1/reports", both).await;
    assert_problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "reports[0]: give exactly one of `step` and `complete`",
    );
    let syntax = send(
        &app,
        Method::POST,
        "/v1/reports",
        Some(Body::from(r#"{"reports": [{"run_id": "#)),
    )
    .await;
    assert_problem(&syntax, StatusCode::BAD_REQUEST, "");
    assert_eq!(step_outputs(&app, a).await, vec![], "nothing was written");
}

#[sqlx::test(migrations = false)]
async fn a_report_over_the_payload_limit_refuses_its_batch(pool: PgPool) {
    let mut config = Config::defaults();
    config.max_payload_bytes = 1024;
    let app = router_with(pool, config).await;
    let runs = claimed_runs(&app, 2).await;
    let [(a, a_token), (b, b_token)] = &runs[..] else {
        panic!("two runs");
    };
    let big = "x".repeat(2048);
    let batch = json!({"reports": [
        {"run_id": a, "step": {"lease_token": a_token, "key": "big", "position": 0, "status": "completed", "output": big}},
        {"run_id": b, "step": {"lease_token": b_token, "key": "small", "position": 0, "status": "completed", "output": 1}}
    ]});
    let refused = post(&app, "/v1/reports", batch).await;
    assert_problem(
        &refused,
        StatusCode::PAYLOAD_TOO_LARGE,
        "reports[0]: the output of step big",
    );
    assert_eq!(step_outputs(&app, a).await, vec![]);
    assert_eq!(step_outputs(&app, b).await, vec![], "nothing was written");
}

#[sqlx::test(migrations = false)]
async fn a_batch_of_starts_is_answered_start_by_start(pool: PgPool) {
    let app = router(pool).await;
    let batch = json!({"runs": [
        {"workflow": "greet", "input": 1},
        {"workflow": "greet", "input": 3, "idempotency_key": "k"},
        {"workflow": "greet", "input": 3, "idempotency_key": "k"},
        {"workflow": "greet", "input": 4, "parent_id": uuid::Uuid::new_v4()}
    ]});
    let answer = post(&app, "/v1/runs/batch", batch).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 4, "{}", answer.body);
    assert_eq!(results[0]["status"], 201);
    assert_eq!(results[0]["run"]["status"], "pending");
    let keyed: Vec<&Value> = vec![&results[1]["run"]["id"], &results[2]["run"]["id"]];
    assert!(keyed[0].is_string());
    assert_eq!(
        keyed[0], keyed[1],
        "one run per idempotency key: {}",
        answer.body
    );
    let mut statuses = vec![results[1]["status"].clone(), results[2]["status"].clone()];
    statuses.sort_by_key(|s| s.as_u64());
    assert_eq!(statuses, vec![json!(200), json!(201)]);
    assert_eq!(results[3]["status"], 404);
    assert_eq!(results[3]["problem"]["type"], "urn:kagzi:problem:not-found");

    // Exactly the accepted starts made runs, with their inputs.
    let listed = get(&app, "/v1/runs?limit=100").await;
    let mut inputs: Vec<Value> = listed.body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["input"].clone())
        .collect();
    inputs.sort_by_key(|i| i.as_u64());
    assert_eq!(inputs, vec![json!(1), json!(3)]);
    let first = results[0]["run"]["id"].as_str().expect("id");
    assert_eq!(
        get(&app, &format!("/v1/runs/{first}")).await.body["input"],
        1
    );

    let empty = post(&app, "/v1/runs/batch", json!({"runs": []})).await;
    assert_problem(&empty, StatusCode::UNPROCESSABLE_ENTITY, "1 to 256 starts");
    let unknown = json!({"runs": [{"workflow": "greet"}, {"workflow": "greet", "inptu": 1}]});
    let refused = post(&app, "/v1/runs/batch", unknown).await;
    assert_problem(&refused, StatusCode::UNPROCESSABLE_ENTITY, "inptu");
    // A start that POST /v1/runs would refuse as invalid refuses the batch, naming it.
    let invalid = json!({"runs": [{"workflow": "greet", "input": 5}, {"workflow": " "}]});
    let refused = post(&app, "/v1/runs/batch", invalid).await;
    assert_problem(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "runs[1]: workflow must not be empty",
    );
    assert_eq!(run_count(&app).await, 2, "refused batches start nothing");
}

#[sqlx::test(migrations = false)]
async fn an_oversized_step_result_is_refused_and_not_recorded(pool: PgPool) {
    let app = router(pool).await;
    let run = post(&app, "/v1/runs", json!({"workflow": "greet"})).await;
    let run_id = run.body["id"].as_str().expect("id").to_owned();
    let worker = post(
        &app,
        "/v1/workers",
        json!({"queue": "default", "workflows": ["greet"], "capacity": 1}),
    )
    .await;
    let worker_id = worker.body["id"].as_str().expect("worker id").to_owned();
    let poll = post(
        &app,
        &format!("/v1/workers/{worker_id}/poll"),
        json!({"max": 1}),
    )
    .await;
    let token = poll.body["runs"][0]["lease_token"].clone();
    let big = "x".repeat(2 * 1024 * 1024);
    let step = json!({"lease_token": token, "key": "big", "position": 0, "status": "completed", "output": big});
    let refused = post(&app, &format!("/v1/runs/{run_id}/steps"), step).await;
    assert_problem(
        &refused,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the output of step big",
    );
    assert_eq!(
        get(&app, &format!("/v1/runs/{run_id}/steps")).await.body,
        json!({"steps": []})
    );
}

#[sqlx::test(migrations = false)]
async fn health_and_readiness(pool: PgPool) {
    let app = router(pool).await;
    assert_eq!(get(&app, "/healthz").await.body, json!({"status": "ok"}));
    assert_eq!(get(&app, "/readyz").await.body, json!({"status": "ok"}));
}

#[sqlx::test(migrations = false)]
async fn openapi_json_serves_the_generated_document(pool: PgPool) {
    let app = router(pool).await;
    let doc = get(&app, "/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let generated: Value =
        serde_json::from_str(&kagzi_server::openapi_json()).expect("generated JSON");
    assert_eq!(doc.body, generated);
    assert!(doc.body["paths"]["/v1/runs"]["post"].is_object());
}

#[sqlx::test(migrations = false)]
async fn docs_serve_swagger_ui_from_the_server_itself(pool: PgPool) {
    let app = router(pool).await;
    let redirect = raw(
        &app,
        Request::get("/docs").body(Body::empty()).expect("request"),
    )
    .await;
    assert!(redirect.status().is_redirection());
    assert_eq!(redirect.headers()[header::LOCATION], "/docs/");

    let page = raw(
        &app,
        Request::get("/docs/").body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("content type")
            .starts_with("text/html")
    );
    let html = text(page).await;
    assert!(html.contains("swagger-ui"), "{html}");
    // Every asset the page loads is relative, so served here, and answers 200.
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            let end = rest.find('"').expect("closing quote");
            assets.push(rest[..end].to_owned());
        }
    }
    assert!(
        assets.len() >= 3,
        "the page loads its scripts and styles: {assets:?}"
    );
    assert!(assets.iter().any(|a| a.contains("swagger-initializer.js")));
    for asset in &assets {
        assert!(
            !asset.contains("//"),
            "asset {asset} is not served by the server itself"
        );
        let uri = format!("/docs/{}", asset.trim_start_matches("./"));
        let res = raw(
            &app,
            Request::get(&uri).body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK, "{uri}");
        if uri.ends_with("swagger-initializer.js") {
            let body = text(res).await;
            assert!(body.contains("/openapi.json"), "{body}");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{body}"
            );
            assert!(body.contains(r#""validatorUrl": "none""#), "{body}");
        }
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let missing = get(&app, "/docs/no-such-asset.js").await;
    assert_problem(&missing, StatusCode::NOT_FOUND, "404");
}

fn keyed_config() -> Config {
    let mut config = Config::defaults();
    config.api_keys = vec!["old-key".into(), "new-key".into()];
    config
}

async fn send_with_key(
    app: &Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
) -> (Reply, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let res = raw(app, req.body(Body::empty()).expect("request")).await;
    let challenge = res
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ASCII").to_owned());
    (reply(res).await, challenge)
}

#[sqlx::test(migrations = false)]
async fn with_api_keys_v1_needs_a_valid_bearer_key(pool: PgPool) {
    let app = router_with(pool, keyed_config()).await;
    let (none, challenge) = send_with_key(&app, Method::GET, "/v1/runs", None).await;
    assert_problem(&none, StatusCode::UNAUTHORIZED, "Authorization: Bearer");
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="kagzi""#));
    let (wrong, challenge) = send_with_key(&app, Method::GET, "/v1/runs", Some("guess")).await;
    assert_problem(&wrong, StatusCode::UNAUTHORIZED, "not valid");
    assert!(challenge.is_some_and(|c| c.starts_with("Bearer") && c.contains("invalid_token")));
    assert!(!wrong.body.to_string().contains("old-key"));
    // Unknown /v1 routes are not revealed without a key.
    let (hidden, _) = send_with_key(&app, Method::GET, "/v1/nothing", None).await;
    assert_eq!(hidden.status, StatusCode::UNAUTHORIZED);
    for key in ["old-key", "new-key"] {
        let (ok, _) = send_with_key(&app, Method::GET, "/v1/runs", Some(key)).await;
        assert_eq!(ok.status, StatusCode::OK, "{key}: {:?}", ok.body);
    }
    let mut req = Request::post("/v1/runs")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "bearer new-key");
    req = req.header("x-request", "1");
    let started = reply(
        raw(
            &app,
            req.body(Body::from(r#"{"workflow":"w"}"#))
                .expect("request"),
        )
        .await,
    )
    .await;
    assert_eq!(
        started.status,
        StatusCode::CREATED,
        "the scheme is case-insensitive"
    );
    for open in ["/healthz", "/readyz", "/openapi.json"] {
        let (res, _) = send_with_key(&app, Method::GET, open, None).await;
        assert_eq!(res.status, StatusCode::OK, "{open} stays open");
    }
    let docs = raw(
        &app,
        Request::get("/docs/").body(Body::empty()).expect("request"),
    )
    .await;
    assert_eq!(docs.status(), StatusCode::OK, "/docs stays open");
}

#[sqlx::test(migrations = false)]
async fn framework_rejections_are_problems_too(pool: PgPool) {
    let app = router(pool).await;
    let wrong_method = send(&app, Method::PUT, "/healthz", None).await;
    assert_problem(&wrong_method, StatusCode::METHOD_NOT_ALLOWED, "PUT");
    let no_route = get(&app, "/nowhere").await;
    assert_problem(&no_route, StatusCode::NOT_FOUND, "/nowhere");
    let bad_query = get(&app, "/v1/runs?limit=many").await;
    assert_problem(&bad_query, StatusCode::BAD_REQUEST, "limit");
    let unknown_query = get(&app, "/v1/runs?colour=red").await;
    assert_problem(&unknown_query, StatusCode::BAD_REQUEST, "colour");
    let no_type = Request::post("/v1/runs")
        .body(Body::from(r#"{"workflow":"w"}"#))
        .expect("request");
    let no_type = reply(raw(&app, no_type).await).await;
    assert_problem(&no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type");
    // serde reads a struct from an array of its fields; the API takes objects only.
    let array = post(&app, "/v1/runs", json!(["w", null])).await;
    assert_problem(&array, StatusCode::UNPROCESSABLE_ENTITY, "JSON object");
    let nul = post(&app, "/v1/runs", json!({"workflow": "a\u{0}b"})).await;
    assert_problem(&nul, StatusCode::UNPROCESSABLE_ENTITY, "U+0000");
    let nul_input = post(
        &app,
        "/v1/runs",
        json!({"workflow": "w", "input": {"k": "\u{0}"}}),
    )
    .await;
    assert_problem(&nul_input, StatusCode::UNPROCESSABLE_ENTITY, "U+0000");
    let far = post(
        &app,
        "/v1/runs",
        json!({"workflow": "w", "delay_ms": u64::MAX}),
    )
    .await;
    assert_problem(&far, StatusCode::UNPROCESSABLE_ENTITY, "delay_ms");
}

/// The routes the dashboard and the command line read: counts by status, a run's signals,
/// the workers and the queues, and the run filters by idempotency key and time.
#[sqlx::test(migrations = false)]
async fn operators_read_counts_signals_workers_and_queues(pool: PgPool) {
    let app = router(pool).await;
    let first = post(
        &app,
        "/v1/runs",
        json!({"workflow": "greet", "idempotency_key": "order-1"}),
    )
    .await;
    let run = first.body["id"].as_str().expect("run id").to_owned();
    post(&app, "/v1/runs", json!({"workflow": "greet"})).await;
    post(
        &app,
        "/v1/runs",
        json!({"workflow": "wave", "queue": "other"}),
    )
    .await;

    let counts = get(&app, "/v1/runs/counts?workflow=greet").await;
    assert_eq!(counts.status, StatusCode::OK, "{:?}", counts.body);
    assert_eq!(
        (
            counts.body["pending"].as_u64(),
            counts.body["total"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(counts.body["capped"], false);

    let by_key = get(&app, "/v1/runs?idempotency_key=order-1").await;
    assert_eq!(by_key.body["runs"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_key.body["runs"][0]["id"], run.as_str());
    let future = get(&app, "/v1/runs?created_after=2099-01-01T00:00:00Z").await;
    assert_eq!(future.body["runs"].as_array().map(Vec::len), Some(0));
    let backwards = get(
        &app,
        "/v1/runs?created_after=2026-02-01T00:00:00Z&created_before=2026-01-01T00:00:00Z",
    )
    .await;
    // An empty or inverted range is a valid question with no runs in its answer.
    assert_eq!(backwards.status, StatusCode::OK);
    assert_eq!(backwards.body["runs"].as_array().map(Vec::len), Some(0));

    post(
        &app,
        &format!("/v1/runs/{run}/signals/approve"),
        json!({"by": "ada"}),
    )
    .await;
    let signals = get(&app, &format!("/v1/runs/{run}/signals")).await;
    assert_eq!(signals.status, StatusCode::OK);
    assert_eq!(signals.body["signals"][0]["name"], "approve");
    assert_eq!(signals.body["signals"][0]["payload"], json!({"by": "ada"}));
    assert!(signals.body["signals"][0]["received_as"].is_null());
    let unknown = get(
        &app,
        "/v1/runs/0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a/signals",
    )
    .await;
    assert_problem(&unknown, StatusCode::NOT_FOUND, "not found");

    let worker = register(&app, &["greet"], 4).await;
    let workers = get(&app, "/v1/workers?status=online").await;
    assert_eq!(workers.status, StatusCode::OK, "{:?}", workers.body);
    assert_eq!(workers.body["workers"][0]["id"], worker.as_str());
    assert_eq!(workers.body["workers"][0]["capacity"], 4);
    assert_eq!(workers.body["workers"][0]["runs_held"], 0);
    assert_problem(
        &get(&app, "/v1/workers?status=asleep").await,
        StatusCode::BAD_REQUEST,
        "unknown variant",
    );

    let queues = get(&app, "/v1/queues").await;
    assert_eq!(queues.status, StatusCode::OK);
    let rows = queues.body["queues"].as_array().expect("queues");
    let greet = rows
        .iter()
        .find(|q| q["workflow"] == "greet")
        .expect("greet's queue");
    assert_eq!(
        (greet["due"].as_u64(), greet["workers"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(greet["oldest_due_at"].is_string());
    assert!(
        rows.iter()
            .any(|q| q["queue"] == "other" && q["workers"] == 0)
    );
}
