//! What the command line's end-to-end tests share: a real server in this process on a
//! per-test database (PostgreSQL or SQLite), a real worker, and the real `kagzi` binary run
//! as a user would run it.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagzi::{Worker, WorkflowContext};
use kagzi_server::{Config, PgStore, Server, SqliteStore, Store};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The queue the tests' worker polls.
pub const QUEUE: &str = "cli";

/// Short leases and heartbeats, so a cancelled running run stops in well under a second.
pub fn fast_config() -> Config {
    let mut config = Config::defaults();
    config.host = std::net::Ipv4Addr::LOCALHOST.into();
    config.port = 0;
    config.api_keys = Vec::new();
    config.lease_ms = 2_000;
    config.heartbeat_ms = 300;
    config.watchdog_ms = 200;
    config.retry_base_ms = 50;
    config.retry_max_ms = 500;
    config
}

/// A test's own database: a fresh PostgreSQL database (from `#[sqlx::test]`) or a fresh
/// SQLite file, removed when dropped.
pub enum TestDb {
    /// PostgreSQL.
    Postgres(PgPool),
    /// An SQLite file.
    Sqlite(PathBuf),
}

impl TestDb {
    /// A fresh SQLite database file in the temporary directory.
    pub fn sqlite() -> Self {
        Self::Sqlite(std::env::temp_dir().join(format!("kagzi-cli-{}.db", uuid::Uuid::new_v4())))
    }

    /// The URL a server opens.
    pub fn url(&self) -> String {
        match self {
            Self::Postgres(pool) => database_url(pool),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// A server in this process on a free port, over this database, with `config`.
    pub async fn start_server_with(&self, config: Config) -> Server {
        let store: Arc<dyn Store> = match self {
            Self::Postgres(pool) => Arc::new(PgStore::new(pool.clone())),
            Self::Sqlite(_) => {
                Arc::new(SqliteStore::open(&self.url()).await.expect("SQLite opens"))
            }
        };
        Server::start_with_store(config, store)
            .await
            .expect("server starts")
    }

    /// A server in this process on a free port, over this database.
    pub async fn start_server(&self) -> Server {
        self.start_server_with(fast_config()).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Self::Sqlite(path) = self {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        }
    }
}

/// Runs each named test (an `async fn(TestDb)`) against PostgreSQL and against SQLite.
#[macro_export]
macro_rules! both_stores {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod postgres {
            $(
                $(#[$meta])*
                #[sqlx::test(migrations = false)]
                async fn $name(pool: sqlx::PgPool) {
                    super::$name($crate::support::TestDb::Postgres(pool)).await;
                }
            )*
        }
        mod sqlite {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::sqlite()).await;
                }
            )*
        }
    };
}

/// The connection URL of the test's own PostgreSQL database (`#[sqlx::test]` made it).
pub fn database_url(pool: &PgPool) -> String {
    let name = pool
        .connect_options()
        .get_database()
        .expect("the test database has a name")
        .to_owned();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set for the tests");
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// The URL a client uses for an in-process server.
pub fn url(server: &Server) -> String {
    format!("http://{}", server.addr())
}

/// What one run of the `kagzi` binary did.
#[derive(Debug)]
pub struct Outcome {
    /// Its exit code.
    pub code: i32,
    /// What it wrote to standard output.
    pub stdout: String,
    /// What it wrote to standard error.
    pub stderr: String,
}

impl Outcome {
    /// Fails the test unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "kagzi failed: {self:#?}");
        self
    }

    /// Fails the test unless the command exited with `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(self.code, code, "expected exit code {code}: {self:#?}");
        self
    }

    /// Standard output read as JSON of type `T`.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not the JSON expected ({e}): {self:#?}"))
    }

    /// Standard output read as JSON lines, each of type `T`.
    #[track_caller]
    pub fn json_lines<T: DeserializeOwned>(&self) -> Vec<T> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{line:?} is not the JSON expected ({e})"))
            })
            .collect()
    }
}

/// How to run the `kagzi` binary: against which server, with which key and input.
pub struct Kagzi {
    server: String,
    api_key: Option<String>,
    stdin: Option<String>,
    env: Vec<(String, String)>,
}

/// `kagzi` against the server at `server`.
pub fn kagzi(server: &str) -> Kagzi {
    Kagzi {
        server: server.to_owned(),
        api_key: None,
        stdin: None,
        env: Vec::new(),
    }
}

impl Kagzi {
    /// Send this API key (through `KAGZI_API_KEY`).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = Some(key.to_owned());
        self
    }

    /// Set the environment variable `name` to `value` for the command.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Give the command this standard input (else it reads an empty, closed one).
    pub fn stdin(mut self, text: &str) -> Self {
        self.stdin = Some(text.to_owned());
        self
    }

    /// Runs `kagzi ARGS...` to its end (at most a minute), the server in `KAGZI_SERVER_URL`.
    pub async fn run(&self, args: &[&str]) -> Outcome {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kagzi"));
        command.args(args);
        self.finish(command, args).await
    }

    /// Runs `kagzi ARGS...` on a pseudo-terminal (through util-linux's `script`), as a
    /// person at a terminal would: standard input, output and error are the terminal, and
    /// what the command wrote to it comes back as `stdout`.
    pub async fn run_in_terminal(&self, args: &[&str]) -> Outcome {
        let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_kagzi"))
            .chain(args.iter().copied())
            .map(|arg| format!("'{}'", arg.replace('\'', r"'\''")))
            .collect();
        let mut command = tokio::process::Command::new("script");
        command.args([
            "--quiet",
            "--return",
            "--command",
            &quoted.join(" "),
            "/dev/null",
        ]);
        self.finish(command, args).await
    }

    async fn finish(&self, mut command: tokio::process::Command, args: &[&str]) -> Outcome {
        command
            .env("KAGZI_SERVER_URL", &self.server)
            .env_remove("KAGZI_API_KEY")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(key) = &self.api_key {
            command.env("KAGZI_API_KEY", key);
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("kagzi {args:?} does not start: {e}"));
        let mut stdin = child.stdin.take().expect("a piped stdin");
        let input = self.stdin.clone().unwrap_or_default();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kagzi {args:?} did not finish within a minute"))
            .expect("kagzi runs");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A worker on [`QUEUE`] with the tests' workflows, running until the token is cancelled:
///
/// - `greet` `{"name": N}`: steps `compose` and `shout`, output `{"message": "HELLO, N!"}`;
/// - `fail`: fails with `boom`;
/// - `approve`: waits for the signal `approve`, outputs its payload;
/// - `slow` `{"steps": K, "ms": M}`: K steps `tick` of M ms each, outputs K.
pub async fn start_worker(server: &str) -> CancellationToken {
    let mut worker = Worker::builder(server, QUEUE)
        .max_concurrent(8)
        .build()
        .await
        .expect("worker");
    worker.register("greet", |ctx: WorkflowContext, input: Value| async move {
        let name = input["name"].as_str().unwrap_or("nobody").to_owned();
        let greeting: String = ctx
            .run("compose", async move { Ok(format!("Hello, {name}!")) })
            .await?;
        let loud: String = ctx
            .run("shout", async move { Ok(greeting.to_uppercase()) })
            .await?;
        Ok(json!({"message": loud}))
    });
    worker.register("fail", |_ctx: WorkflowContext, _input: Value| async move {
        Err::<Value, _>(anyhow::anyhow!("boom"))
    });
    worker.register(
        "approve",
        |ctx: WorkflowContext, _input: Value| async move {
            let payload: Value = ctx.wait_for_signal("approve").await?;
            Ok(payload)
        },
    );
    worker.register("slow", |ctx: WorkflowContext, input: Value| async move {
        let steps = input["steps"].as_u64().unwrap_or(3);
        let ms = input["ms"].as_u64().unwrap_or(200);
        for _ in 0..steps {
            ctx.run("tick", async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
            .await?;
        }
        Ok(steps)
    });
    // Fails in `charge` the first time each run gets there, then succeeds: a bug, then
    // its fix, for `kagzi run retry` and `kagzi run fork`.
    worker.register("flaky", |ctx: WorkflowContext, _input: Value| async move {
        let id = ctx.run_id();
        let order: u32 = ctx.run("reserve", async { Ok(7) }).await?;
        let charged: String = ctx
            .run("charge", async move {
                let first = FAILED_ONCE.lock().expect("lock").insert(id.to_string());
                if first {
                    anyhow::bail!("card declined");
                }
                Ok(format!("charged order {order}"))
            })
            .await?;
        Ok(json!({"charged": charged}))
    });
    let stop = CancellationToken::new();
    tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    stop
}

/// The runs of `flaky` that have failed their `charge` once.
static FAILED_ONCE: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Polls `check` every 20 ms until it returns true, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
