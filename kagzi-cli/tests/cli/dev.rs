//! `kagzi dev` and `kagzi server`: the server in the `kagzi` process, started as a user
//! starts it and stopped with a signal; and `kagzi completions`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::both_stores;
use crate::support::{TestDb, kagzi};

both_stores!(kagzi_server_serves_the_store_it_is_given_and_stops_on_sigterm);

/// Reads `stream` line by line until one contains `marker`; returns the lines read.
async fn read_until(stream: impl AsyncRead + Unpin + Send + 'static, marker: &str) -> Vec<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("the output is text") {
            let done = line.contains(marker);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{marker:?} never came; got {seen:#?}");
    // Keep draining, so the process never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

/// The first `http://...` URL in `lines`.
fn first_url(lines: &[String]) -> String {
    lines
        .iter()
        .flat_map(|line| line.split_whitespace())
        .find(|word| word.starts_with("http://"))
        .map(|word| word.trim_end_matches([',', '.', ')']).to_owned())
        .expect("a URL was printed")
}

/// Sends `signal` to `child` and waits for it to exit (at most 15 s); its exit code.
async fn stop(child: &mut Child, signal: rustix::process::Signal) -> Option<i32> {
    let pid = child.id().and_then(|id| i32::try_from(id).ok());
    let pid = rustix::process::Pid::from_raw(pid.expect("the child runs")).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("the signal is sent");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("it stops within 15 s of the signal")
        .expect("its status");
    status.code()
}

fn kagzi_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kagzi"));
    command
        .args(args)
        .env_remove("KAGZI_API_KEY")
        .env_remove("KAGZI_DB_URL")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn kagzi_dev_prints_its_urls_serves_and_stops_on_sigint() {
    let dir = std::env::temp_dir().join(format!("kagzi-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a working directory");
    // The default file, kagzi.db in the working directory; a free port.
    let mut child = kagzi_command(&["dev", "--port", "0"])
        .current_dir(&dir)
        .spawn()
        .expect("kagzi dev starts");
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let printed = read_until(stdout, "Ctrl-C").await;
    let base = first_url(&printed);
    assert!(base.starts_with("http://127.0.0.1:"), "{printed:#?}");
    let text = printed.join("\n");
    for expected in [
        format!("API    {base}"),
        format!("Docs   {base}/docs"),
        format!("UI     {base}/ui"),
    ] {
        assert!(text.contains(&expected), "{expected:?} not in:\n{text}");
    }
    assert!(
        dir.join("kagzi.db").exists(),
        "the SQLite file is in the working directory"
    );

    let http = reqwest::Client::new();
    for path in ["/healthz", "/docs/", "/openapi.json"] {
        let answer = http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("it answers");
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
    }
    // The command line reaches it.
    kagzi(&base).run(&["health"]).await.ok();
    kagzi(&base).run(&["run", "start", "greet"]).await.ok();

    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    assert_eq!(
        stop(&mut child, rustix::process::Signal::INT).await,
        Some(0)
    );
    let errors = errors.await.expect("stderr is read");
    assert!(errors.contains("Kagzi dev server stopped."), "{errors}");
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "it stopped serving"
    );

    // Started again on the same file, the run is still there.
    let mut again = kagzi_command(&["dev", "--port", "0", "--db", "kagzi.db"])
        .current_dir(&dir)
        .spawn()
        .expect("kagzi dev starts again");
    let printed = read_until(again.stdout.take().expect("piped"), "Ctrl-C").await;
    let page: kagzi_proto::RunPage = kagzi(&first_url(&printed))
        .run(&["run", "list"])
        .await
        .ok()
        .json();
    assert_eq!(page.runs.len(), 1);
    assert_eq!(
        stop(&mut again, rustix::process::Signal::TERM).await,
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kagzi_dev_serves_the_dashboard() {
    let dir = std::env::temp_dir().join(format!("kagzi-dev-ui-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a working directory");
    let mut child = kagzi_command(&["dev", "--port", "0"])
        .current_dir(&dir)
        .spawn()
        .expect("kagzi dev starts");
    let printed = read_until(child.stdout.take().expect("piped"), "Ctrl-C").await;
    let base = first_url(&printed);
    let answer = reqwest::get(format!("{base}/ui"))
        .await
        .expect("it answers");
    assert!(answer.status().is_success(), "/ui: {}", answer.status());
    assert_eq!(
        stop(&mut child, rustix::process::Signal::INT).await,
        Some(0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn kagzi_server_serves_the_store_it_is_given_and_stops_on_sigterm(db: TestDb) {
    // Every setting as kagzi-server takes it: flags here, KAGZI_* variables too.
    let mut child = kagzi_command(&["server", "--host", "127.0.0.1", "--port", "0"])
        .env("KAGZI_DB_URL", db.url())
        .env("KAGZI_LEASE_MS", "5000")
        .spawn()
        .expect("kagzi server starts");
    let logged = read_until(child.stderr.take().expect("piped"), "listening on").await;
    let base = first_url(&logged);
    let cli = kagzi(&base);
    cli.run(&["health", "--ready"]).await.ok();
    let started: kagzi_proto::Started = cli
        .run(&["run", "start", "greet", "-o", "json"])
        .await
        .ok()
        .json();
    let run: kagzi_proto::Run = cli
        .run(&["run", "show", &started.id.to_string()])
        .await
        .ok()
        .json();
    assert_eq!(run.status, kagzi_proto::RunStatus::Pending);
    assert_eq!(
        stop(&mut child, rustix::process::Signal::TERM).await,
        Some(0)
    );
}

#[tokio::test]
async fn kagzi_server_prints_the_servers_openapi_document() {
    let out = kagzi("http://unused")
        .run(&["server", "--print-openapi"])
        .await
        .ok();
    assert_eq!(out.stdout, kagzi_server::openapi_json());
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    let cli = kagzi("http://unused");
    let bash = cli.run(&["completions", "bash"]).await.ok().stdout;
    assert!(
        bash.contains("_kagzi()") && bash.contains("complete -F _kagzi"),
        "{bash}"
    );
    assert!(
        bash.contains("schedule") && bash.contains("--dry-run"),
        "commands and flags complete"
    );
    let zsh = cli.run(&["completions", "zsh"]).await.ok().stdout;
    assert!(zsh.starts_with("#compdef kagzi"), "{zsh}");
    let fish = cli.run(&["completions", "fish"]).await.ok().stdout;
    assert!(fish.contains("complete -c kagzi"), "{fish}");
    // Run statuses complete as values.
    assert!(
        fish.contains("pending") && fish.contains("cancelled"),
        "{fish}"
    );
    cli.run(&["completions", "tcsh"]).await.code(2);
}
