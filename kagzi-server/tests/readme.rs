//! The README's curl walkthrough (`## The HTTP API with curl`) runs as written against a real
//! server: every ```sh block of the section runs, in order, in one bash script (with the
//! server's URL in place of `http://localhost:50051`), and every ```json block is the answer
//! the sh block before it must print. Ids and times in the README stand for any id or time.
//! Needs `bash`, `curl` and `jq`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use sqlx::PgPool;

const SECTION: &str = "## The HTTP API with curl";
const MARKER: &str = "@@kagzi-readme-block";

struct Block {
    code: String,
    expected: Option<String>,
}

fn walkthrough() -> Vec<Block> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme
        .find(SECTION)
        .expect("the README has the curl section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks: Vec<Block> = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let fence = line.trim();
        if fence != "```sh" && fence != "```json" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let body = body.join("\n");
        if fence == "```sh" {
            blocks.push(Block {
                code: body,
                expected: None,
            });
        } else {
            let last = blocks.last_mut().expect("a json block follows an sh block");
            assert!(last.expected.is_none(), "one json block per sh block");
            last.expected = Some(body);
        }
    }
    blocks
}

/// Replaces what may differ between runs (UUIDs, RFC 3339 times) with placeholders.
fn normalize(value: &Value) -> Value {
    match value {
        Value::String(s) => {
            if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                return Value::String("<time>".to_owned());
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while !rest.is_empty() {
                if rest.len() >= 36
                    && rest.is_char_boundary(36)
                    && uuid::Uuid::try_parse(&rest[..36]).is_ok()
                {
                    out.push_str("<uuid>");
                    rest = &rest[36..];
                } else {
                    let c = rest.chars().next().unwrap_or_default();
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not a JSON stream ({e}):\n{text}"))
}

#[sqlx::test(migrations = false)]
async fn the_readme_curl_walkthrough_is_true(pool: PgPool) {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(found, "this test needs `{tool}` on the PATH");
    }
    let db = support::TestDb::Postgres(pool);
    let server = db.start_server().await;
    let url = support::url(&server);
    let blocks = walkthrough();
    assert!(blocks.len() >= 8, "the walkthrough has its blocks");
    let mut script = String::from("set -euo pipefail\n");
    for (i, block) in blocks.iter().enumerate() {
        script.push_str(&format!("echo; echo '{MARKER} {i}'\n"));
        script.push_str(&block.code.replace("http://localhost:50051", &url));
        script.push('\n');
    }
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("bash runs")
    })
    .await
    .expect("script task");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the walkthrough failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut outputs = vec![String::new(); blocks.len()];
    let mut current = None;
    for line in stdout.lines() {
        if let Some(i) = line.strip_prefix(MARKER) {
            current = Some(i.trim().parse::<usize>().expect("block number"));
            continue;
        }
        let Some(i) = current else {
            assert!(
                line.trim().is_empty(),
                "output before the first block: {line}"
            );
            continue;
        };
        outputs[i].push_str(line);
        outputs[i].push('\n');
    }
    for (block, actual) in blocks.iter().zip(&outputs) {
        let Some(expected) = &block.expected else {
            continue;
        };
        let expected: Vec<Value> = json_stream(expected).iter().map(normalize).collect();
        let actual: Vec<Value> = json_stream(actual).iter().map(normalize).collect();
        assert_eq!(
            actual, expected,
            "the README says\n{}\nanswers differently",
            block.code
        );
    }
}
