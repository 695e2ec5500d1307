//! The committed OpenAPI document (`openapi/openapi.json`) is what the code generates.
//!
//! When this fails, regenerate the file with
//! `cargo run -p kagzi-server -- --print-openapi > openapi/openapi.json` (or `just openapi`),
//! or run this test with `KAGZI_UPDATE_OPENAPI=1` to have it rewrite the file.

use std::path::PathBuf;

use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

#[test]
fn the_committed_openapi_document_is_current() {
    let generated = kagzi_server::openapi_json();
    let path = committed_path();
    if std::env::var_os("KAGZI_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: regenerate it with \
         `cargo run -p kagzi-server -- --print-openapi > openapi/openapi.json` \
         (or `just openapi`, or `KAGZI_UPDATE_OPENAPI=1 cargo test -p kagzi-server --test openapi`)"
    );
}

#[test]
fn every_operation_documents_its_answers_and_errors() {
    let doc: Value = serde_json::from_str(&kagzi_server::openapi_json()).expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    let expected = [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/readyz", "get"),
        ("/v1/runs", "get"),
        ("/v1/runs", "post"),
        ("/v1/runs/{id}", "get"),
        ("/v1/runs/{id}/steps", "get"),
        ("/v1/runs/{id}/steps", "post"),
        ("/v1/runs/counts", "get"),
        ("/v1/runs/{id}/signals", "get"),
        ("/v1/workers", "get"),
        ("/v1/queues", "get"),
        ("/v1/runs/{id}/signals/{name}", "post"),
        ("/v1/runs/{id}/signals/{name}/receive", "post"),
        ("/v1/runs/{id}/suspend", "post"),
        ("/v1/schedules", "post"),
        ("/v1/schedules", "get"),
        ("/v1/schedules/{id}", "get"),
        ("/v1/schedules/{id}", "patch"),
        ("/v1/schedules/{id}", "delete"),
        ("/v1/schedules/{id}/pause", "post"),
        ("/v1/schedules/{id}/resume", "post"),
        ("/v1/schedules/{id}/trigger", "post"),
        ("/v1/schedules/{id}/runs", "get"),
        ("/v1/runs/{id}/result", "get"),
        ("/v1/runs/{id}/cancel", "post"),
        ("/v1/runs/{id}/complete", "post"),
        ("/v1/runs/{id}/fail", "post"),
        ("/v1/runs/{id}/retry", "post"),
        ("/v1/runs/{id}/fork", "post"),
        ("/v1/runs/{id}", "delete"),
        ("/v1/runs/cancel", "post"),
        ("/v1/runs/retry", "post"),
        ("/v1/workflows/{workflow}/patches/{patch}", "get"),
        ("/v1/reports", "post"),
        ("/v1/runs/batch", "post"),
        ("/v1/workers", "post"),
        ("/v1/workers/{id}", "delete"),
        ("/v1/workers/{id}/heartbeat", "post"),
        ("/v1/workers/{id}/poll", "post"),
    ];
    let mut found = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            found.push((path.clone(), method.clone()));
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents a success"
            );
            assert!(responses.contains_key("500"), "{method} {path}: 500");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let is_problem = response["$ref"].is_string()
                        || response["content"]["application/problem+json"].is_object();
                    assert!(is_problem, "{method} {path} {status} is a problem body");
                }
            }
            if path.starts_with("/v1/") {
                assert!(responses.contains_key("401"), "{method} {path}: 401");
                assert_eq!(op["security"][0]["api_key"], serde_json::json!([]));
            }
            if op.get("requestBody").is_some() {
                for status in ["413", "415", "422"] {
                    assert!(responses.contains_key(status), "{method} {path}: {status}");
                }
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                assert!(schema.is_object(), "{method} {path} has a body schema");
            }
        }
    }
    let mut expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for (name, schema) in schemas {
        let documented = schema.get("example").is_some()
            || schema.get("properties").is_none()
            || schema["properties"].as_object().is_some_and(|p| {
                p.values()
                    .any(|v| v.get("example").is_some() || v.get("$ref").is_some())
            });
        assert!(documented, "schema {name} has an example");
    }
}

/// What `npx @redocly/cli lint` checks in CI, checked here too so `cargo test` catches it:
/// servers are named, every operation has a short summary, a description and a declared tag,
/// and the open routes say they need no key.
#[test]
fn every_operation_is_summarised_described_and_tagged() {
    let doc: Value = serde_json::from_str(&kagzi_server::openapi_json()).expect("JSON");
    assert!(
        doc["servers"].as_array().is_some_and(|s| !s.is_empty()),
        "servers are named"
    );
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let name = format!("{method} {path}");
            let summary = op["summary"].as_str().unwrap_or_default();
            assert!(
                !summary.is_empty() && summary.len() <= 80,
                "{name}: a summary of at most 80 characters, not {summary:?}"
            );
            assert!(
                op["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{name}: a description"
            );
            for tag in op["tags"].as_array().expect("tags") {
                let tag = tag.as_str().unwrap_or_default();
                assert!(tags.contains(&tag), "{name}: tag {tag:?} is declared");
            }
            if !path.starts_with("/v1/") {
                assert_eq!(op["security"], serde_json::json!([]), "{name} needs no key");
            }
        }
    }
}
