//! Shared pieces of the end-to-end tests: a real server (in this process or as a child
//! process of the real binary) on a per-test database.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use kagzi_server::{Config, PgStore, Server, SqliteStore, Store};
use sqlx::PgPool;

/// Short leases and heartbeats so crash recovery happens in seconds.
pub fn fast_config() -> Config {
    let mut config = Config::defaults();
    config.host = std::net::Ipv4Addr::LOCALHOST.into();
    config.port = 0;
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
        Self::Sqlite(std::env::temp_dir().join(format!("kagzi-e2e-{}.db", uuid::Uuid::new_v4())))
    }

    /// The URL a server (in process or not) opens.
    pub fn url(&self) -> String {
        match self {
            Self::Postgres(pool) => database_url(pool),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// A server in this process on a free port, over this database.
    pub async fn start_server(&self) -> Server {
        self.start_server_with(fast_config()).await
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
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $name(pool: sqlx::PgPool) {
                    super::$name($crate::support::TestDb::Postgres(pool)).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::sqlite()).await;
                }
            )*
        }
    };
}

/// A server in this process on a free port, over the test's database, with `config`.
pub async fn start_server_with(pool: PgPool, config: Config) -> Server {
    Server::start_with_store(config, Arc::new(PgStore::new(pool)))
        .await
        .expect("server starts")
}

/// The URL a client uses for an in-process server.
pub fn url(server: &Server) -> String {
    format!("http://{}", server.addr())
}

/// The connection URL of the test's own database (`#[sqlx::test]` made it).
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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The real `kagzi-server` binary running as a child process.
pub struct ServerProcess {
    child: Child,
    /// The server's base URL.
    pub url: String,
    port: u16,
    db_url: String,
}

impl ServerProcess {
    /// Starts the binary on `port` against `db_url` and waits until `/healthz` answers.
    pub async fn start(db_url: &str, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_kagzi-server"))
            .env("KAGZI_DB_URL", db_url)
            .env("KAGZI_SERVER_HOST", "127.0.0.1")
            .env("KAGZI_SERVER_PORT", port.to_string())
            .env("KAGZI_LEASE_MS", "5000")
            .env("KAGZI_HEARTBEAT_MS", "500")
            .env("KAGZI_WATCHDOG_MS", "200")
            .env("KAGZI_RETRY_BASE_MS", "50")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("the kagzi-server binary starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_healthy(&url).await;
        Self {
            child,
            url,
            port,
            db_url: db_url.to_owned(),
        }
    }

    /// Kills the server with SIGKILL (no graceful shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server and starts it again on the same port and database.
    pub async fn restart(&mut self) {
        self.kill();
        let again = Self::start(&self.db_url, self.port).await;
        *self = again;
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `url/healthz` answers 200.
pub async fn wait_healthy(url: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{url}/healthz")).send().await
            && res.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server at {url} did not become healthy in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The path of a built example binary (`cargo test` builds the examples).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test binary> → target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example binary {} is missing: build it with `cargo test --workspace` or `cargo build --examples`",
        path.display()
    );
    path
}

/// Runs the built example `name` against the server at `url` and returns what it printed,
/// failing unless it exits 0 within a minute.
pub async fn run_example(name: &str, url: &str) -> String {
    let output = tokio::process::Command::new(example_binary(name))
        .env("KAGZI_SERVER_URL", url)
        .env("RUST_LOG", "warn")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the example finishes within a minute")
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `worker` in the background until the returned token is cancelled.
pub fn spawn_worker(
    worker: kagzi::Worker,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<kagzi::Result<()>>,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    (stop, handle)
}

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

/// Runs each named test (an `async fn(TestDb)`) against PostgreSQL only: for tests whose
/// workflows count side effects in statics, which two copies in one process would share.
#[macro_export]
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $name(pool: sqlx::PgPool) {
                    super::$name($crate::support::TestDb::Postgres(pool)).await;
                }
            )*
        }
    };
}
