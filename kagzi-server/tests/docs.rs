//! The documentation stays true.
//!
//! - `docs/http-api.md` runs as written against a real server: every ```sh block of the page
//!   runs, in order, in one bash script (with the server's URL in place of
//!   `http://localhost:50051`), and every ```json block is the answer the sh block before it
//!   must print. Ids and times on the page stand for any id or time. Needs `bash`, `curl` and
//!   `jq`.
//! - Every relative link in `README.md` and `docs/*.md` names a file that exists, and a link
//!   to a heading (`page.md#heading`) names a heading of that page.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use sqlx::PgPool;

/// The page whose blocks run, relative to the workspace root.
const WALKTHROUGH: &str = "docs/http-api.md";
const MARKER: &str = "@@kagzi-doc-block";

struct Block {
    code: String,
    expected: Option<String>,
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn walkthrough() -> Vec<Block> {
    let page = std::fs::read_to_string(root().join(WALKTHROUGH)).expect(WALKTHROUGH);
    let mut blocks: Vec<Block> = Vec::new();
    let mut lines = page.lines();
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
async fn the_http_api_walkthrough_runs_as_written(pool: PgPool) {
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
            "{WALKTHROUGH} says\n{}\nanswers differently",
            block.code
        );
    }
}

/// The pages whose links are checked: the README and every page in `docs/`.
fn pages() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    let mut pages = vec![root().join("README.md")];
    pages.extend(docs);
    pages
}

/// The lines of a Markdown page outside its fenced code blocks.
fn prose(page: &str) -> Vec<&str> {
    let mut in_code = false;
    let mut lines = Vec::new();
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            lines.push(line);
        }
    }
    lines
}

/// The targets of the inline links (`[text](target)`) on a page.
fn link_targets(page: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(page) {
        let mut rest = line;
        while let Some(open) = rest.find("](") {
            let after = &rest[open + 2..];
            let Some(close) = after.find(')') else {
                break;
            };
            let target = after[..close].split_whitespace().next().unwrap_or_default();
            targets.push(target.to_owned());
            rest = &after[close..];
        }
    }
    targets
}

/// The anchors of a page's headings, as GitHub makes them: lowercase, spaces to hyphens,
/// punctuation other than `-` and `_` dropped, `-1`, `-2`, ... after repeats.
fn anchors(page: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for line in prose(page) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let repeats = seen.entry(slug.clone()).or_default();
        anchors.push(if *repeats == 0 {
            slug
        } else {
            format!("{slug}-{repeats}")
        });
        *repeats += 1;
    }
    anchors
}

#[test]
fn relative_links_in_the_readme_and_docs_resolve() {
    let mut checked = 0;
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("a Markdown page");
        let name = page
            .strip_prefix(root())
            .unwrap_or(&page)
            .display()
            .to_string();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().expect("a page has a folder").join(path)
            };
            if !file.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            if let Some(anchor) = anchor
                && file.extension().is_some_and(|ext| ext == "md")
            {
                let linked = std::fs::read_to_string(&file).expect("the linked page");
                if !anchors(&linked).iter().any(|a| a == anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(checked > 0, "the pages have relative links to check");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
