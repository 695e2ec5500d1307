//! Errors: one readable line on standard error, and an exit code per kind.

use kagzi_proto::{Health, RunPage};

use crate::both_stores;
use crate::support::{TestDb, fast_config, kagzi, url};

both_stores!(
    each_kind_of_error_has_its_exit_code,
    an_api_key_is_sent_and_its_absence_explained,
);

async fn each_kind_of_error_has_its_exit_code(db: TestDb) {
    let server = db.start_server().await;
    let cli = kagzi(&url(&server));

    // 2: usage, from clap or from the command itself; nothing reaches the server.
    for args in [
        &["run", "start"][..],
        &["run", "start", "greet", "--input", "hello"],
        &["run", "show", "not-a-uuid"],
        &["run", "list", "--status", "paused"],
        &["run", "start", "greet", "--delay", "5"],
        &["run", "cancel"],
        &[
            "run",
            "cancel",
            "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a",
            "--workflow",
            "x",
        ],
        &["nonsense"],
    ] {
        let outcome = cli.run(args).await.code(2);
        assert!(
            outcome.stderr.contains("error"),
            "{args:?}: {}",
            outcome.stderr
        );
    }
    let hint = cli
        .run(&["run", "start", "greet", "--input", "hello"])
        .await
        .code(2);
    assert!(hint.stderr.contains(r#"'"hello"'"#), "{}", hint.stderr);

    // 3: not found, with the server's problem in one line.
    let missing = cli
        .run(&["run", "show", "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a"])
        .await
        .code(3);
    assert_eq!(
        missing.stderr,
        "error: Not found (404): run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a not found\n"
    );
    assert!(missing.stdout.is_empty());

    // 5: unreachable: a port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let nowhere = format!("http://127.0.0.1:{closed}");
    let unreachable = kagzi(&nowhere).run(&["run", "list"]).await.code(5);
    assert!(
        unreachable
            .stderr
            .starts_with(&format!("error: cannot reach the server at {nowhere}")),
        "{}",
        unreachable.stderr
    );
    kagzi(&nowhere).run(&["health"]).await.code(5);
    let flag = cli
        .run(&["--server", &nowhere, "run", "list"])
        .await
        .code(5);
    assert!(
        flag.stderr.contains(&nowhere),
        "--server wins over KAGZI_SERVER_URL"
    );

    let health: Health = cli
        .run(&["health", "--ready", "-o", "json"])
        .await
        .ok()
        .json();
    assert_eq!(health.status, "ok");
    let text = cli.run(&["health", "-o", "table"]).await.ok();
    assert_eq!(
        text.stdout.trim(),
        format!("{} is healthy (ok)", url(&server))
    );
}

async fn an_api_key_is_sent_and_its_absence_explained(db: TestDb) {
    let mut config = fast_config();
    config.api_keys = vec!["s3cret".into()];
    let server = db.start_server_with(config).await;
    let denied = kagzi(&url(&server)).run(&["run", "list"]).await.code(1);
    assert!(
        denied.stderr.starts_with("error: Unauthorized (401)")
            && denied
                .stderr
                .contains("pass --api-key or set KAGZI_API_KEY"),
        "{}",
        denied.stderr
    );
    let page: RunPage = kagzi(&url(&server))
        .api_key("s3cret")
        .run(&["run", "list"])
        .await
        .ok()
        .json();
    assert!(page.runs.is_empty());
    let flag: RunPage = kagzi(&url(&server))
        .run(&["run", "list", "--api-key", "s3cret"])
        .await
        .ok()
        .json();
    assert!(flag.runs.is_empty());
    kagzi(&url(&server))
        .api_key("wrong")
        .run(&["run", "list"])
        .await
        .code(1);
}
