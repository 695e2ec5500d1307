//! `KAGZI_LOG_FORMAT=json`: the real binary logs one JSON object a line, with the fields of
//! each event (`run_id`, `workflow`) as keys; an unknown format stops it at start.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use kagzi::{Client, Worker, WorkflowContext};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_run_id_and_workflow() {
    let db = support::TestDb::sqlite();
    let port = support::free_port();
    let log = std::env::temp_dir().join(format!("kagzi-log-{}.jsonl", uuid::Uuid::new_v4()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kagzi-server"))
        .env("KAGZI_DB_URL", db.url())
        .env("KAGZI_SERVER_HOST", "127.0.0.1")
        .env("KAGZI_SERVER_PORT", port.to_string())
        .env("KAGZI_LOG_FORMAT", "json")
        .env("RUST_LOG", "kagzi_server=debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("the kagzi-server binary starts");
    let url = format!("http://127.0.0.1:{port}");
    support::wait_healthy(&url).await;
    let client = Client::connect(&url).await.expect("client");
    let mut worker = Worker::builder(&url, "logged")
        .build()
        .await
        .expect("worker");
    worker.register("greet", |_ctx: WorkflowContext, name: String| async move {
        Ok(format!("Hello, {name}!"))
    });
    let (stop, _worker) = support::spawn_worker(worker);
    let id = client
        .workflow("greet", "logged", "Ada")
        .await
        .expect("start");
    let out: String = client.result(id).await.expect("result");
    assert_eq!(out, "Hello, Ada!");
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();

    let text = std::fs::read_to_string(&log).expect("the log");
    let _ = std::fs::remove_file(&log);
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let run = id.to_string();
    assert!(
        lines
            .iter()
            .any(|l| l["run_id"] == run.as_str() && l["workflow"] == "greet"),
        "a line names the run and its workflow: {text}"
    );
}

#[test]
fn an_unknown_log_format_stops_the_server_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_kagzi-server"))
        .env("KAGZI_DB_URL", "sqlite::memory:")
        .env("KAGZI_SERVER_PORT", "0")
        .env("KAGZI_LOG_FORMAT", "xml")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("KAGZI_LOG_FORMAT must be `text` or `json`"),
        "{err}"
    );
}
