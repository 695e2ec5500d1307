//! The Kagzi benchmark: W1 (throughput) and W2 (latency), against a server it starts
//! in-process or an existing one.
//!
//! The binary (`cargo run --release -p kagzi-bench -- w1`) is a thin shell over [`run`];
//! the library exists so a smoke test can run a tiny benchmark end to end. Being a
//! benchmark harness, not a library anyone builds on, it reports errors with `anyhow`.
//!
//! - **W1, throughput**: `--workflows` runs (default 1,000) of a workflow of `--steps`
//!   sequential no-op steps (default 3), started by one client with `--concurrency` starts
//!   in flight (default 50) and run by one worker with `max_concurrent(--concurrency)`.
//!   Wall time runs from the first start to the last completion (the latest `finished_at`).
//! - **W2, latency**: `--workflows` runs (default 200) of a one-step workflow, one after
//!   another: start, then wait for the result. Five warm-up runs are not counted.
//!
//! Every run's output is checked; a run that did not complete with the expected output
//! fails the benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use kagzi::{Client, RunId, RunStatus, Worker, WorkflowContext};
use kagzi_server::{Config, Server};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::watch;

/// The workflow every benchmark runs.
const WORKFLOW: &str = "bench";
/// Runs done before measuring, to register the worker and warm the connections (W2; W1
/// warms up with [`WARMUP_WAVES`] waves of its runs in flight, if that is more).
const WARMUP_RUNS: usize = 5;
/// W1 first runs this many times its runs in flight, unmeasured: enough for the server's
/// connection pool to grow to the size the measured runs use, and for each of those
/// connections to plan its statements.
const WARMUP_WAVES: usize = 4;
/// The longest the benchmark waits for its runs before failing.
const GIVE_UP: Duration = Duration::from_secs(600);
/// How many result checks are in flight at once after W1.
const VERIFY_IN_FLIGHT: usize = 16;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Throughput: many multi-step runs at once.
    W1,
    /// Latency: one-step runs one after another.
    W2,
}

/// What to run, and where.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kagzi-bench",
    about = "Kagzi throughput (w1) and latency (w2) benchmarks"
)]
pub struct Options {
    /// The benchmark: `w1` (throughput) or `w2` (latency).
    #[arg(value_enum)]
    pub workload: Workload,

    /// How many measured runs (default: 1000 for w1, 200 for w2).
    #[arg(long)]
    pub workflows: Option<usize>,

    /// Steps per run (default: 3 for w1, 1 for w2).
    #[arg(long)]
    pub steps: Option<usize>,

    /// Starts in flight and the worker's `max_concurrent` (w1; w2 runs one at a time).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,

    /// Bytes of padding in each run's input, each step's result and the output.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,

    /// An existing server to benchmark (e.g. `http://127.0.0.1:50051`); by default one is
    /// started in-process over `KAGZI_DB_URL`.
    #[arg(long)]
    pub url: Option<String>,

    /// The database of the in-process server: `postgres://...` (a fresh database
    /// `kagzi_bench_<pid>` is created on that server and dropped afterwards) or unset for
    /// an SQLite file in the temporary directory.
    #[arg(long, env = "KAGZI_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
}

impl Options {
    /// Options for `workload` with every default.
    pub fn new(workload: Workload) -> Self {
        Self {
            workload,
            workflows: None,
            steps: None,
            concurrency: 50,
            payload_bytes: 0,
            url: None,
            db_url: None,
        }
    }

    fn workflows(&self) -> usize {
        self.workflows.unwrap_or(match self.workload {
            Workload::W1 => 1000,
            Workload::W2 => 200,
        })
    }

    fn steps(&self) -> usize {
        self.steps.unwrap_or(match self.workload {
            Workload::W1 => 3,
            Workload::W2 => 1,
        })
    }
}

/// What a benchmark measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// The benchmark that ran.
    pub workload: Workload,
    /// Where the state lived: `postgres`, `sqlite` or `external`.
    pub db: &'static str,
    /// Measured runs.
    pub workflows: usize,
    /// Steps per run.
    pub steps: usize,
    /// Starts in flight and worker concurrency.
    pub concurrency: usize,
    /// Padding bytes per payload.
    pub payload_bytes: usize,
    /// The measurement.
    pub measured: Measured,
}

/// The numbers of one benchmark.
#[derive(Debug, Clone, Copy)]
pub enum Measured {
    /// W1.
    Throughput {
        /// From the first start to the last completion.
        wall: Duration,
    },
    /// W2: per-run latencies, sorted.
    Latency {
        /// Median.
        p50: Duration,
        /// 99th percentile (nearest rank).
        p99: Duration,
        /// Mean.
        mean: Duration,
        /// Slowest.
        max: Duration,
    },
}

impl Report {
    /// The one-line JSON summary.
    pub fn json(&self) -> Value {
        let mut line = json!({
            "workload": match self.workload { Workload::W1 => "w1", Workload::W2 => "w2" },
            "db": self.db,
            "workflows": self.workflows,
            "steps": self.steps,
            "concurrency": self.concurrency,
            "payload_bytes": self.payload_bytes,
        });
        let extra = match self.measured {
            Measured::Throughput { wall } => {
                let secs = wall.as_secs_f64();
                json!({
                    "wall_s": round(secs, 3),
                    "wf_per_s": round(self.workflows as f64 / secs, 1),
                    "steps_per_s": round((self.workflows * self.steps) as f64 / secs, 1),
                })
            }
            Measured::Latency {
                p50,
                p99,
                mean,
                max,
            } => json!({
                "p50_ms": round(ms(p50), 2),
                "p99_ms": round(ms(p99), 2),
                "mean_ms": round(ms(mean), 2),
                "max_ms": round(ms(max), 2),
            }),
        };
        if let (Some(line), Value::Object(extra)) = (line.as_object_mut(), extra) {
            line.extend(extra);
        }
        line
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let mut rows = vec![
            ("database", self.db.to_owned()),
            ("workflows", self.workflows.to_string()),
            ("steps per workflow", self.steps.to_string()),
            ("payload bytes", self.payload_bytes.to_string()),
        ];
        match self.measured {
            Measured::Throughput { wall } => {
                let secs = wall.as_secs_f64();
                rows.push(("concurrency", self.concurrency.to_string()));
                rows.push(("wall time", format!("{secs:.3} s")));
                rows.push((
                    "workflows/s",
                    format!("{:.1}", self.workflows as f64 / secs),
                ));
                rows.push((
                    "steps/s",
                    format!("{:.1}", (self.workflows * self.steps) as f64 / secs),
                ));
            }
            Measured::Latency {
                p50,
                p99,
                mean,
                max,
            } => {
                rows.push(("p50", format!("{:.2} ms", ms(p50))));
                rows.push(("p99", format!("{:.2} ms", ms(p99))));
                rows.push(("mean", format!("{:.2} ms", ms(mean))));
                rows.push(("max", format!("{:.2} ms", ms(max))));
            }
        }
        let title = match self.workload {
            Workload::W1 => "W1 throughput",
            Workload::W2 => "W2 latency (start → result)",
        };
        let mut out = format!("{title}\n");
        for (name, value) in rows {
            out.push_str(&format!("  {name:<20} {value:>14}\n"));
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// Runs the benchmark `options` describe and reports what it measured.
///
/// # Errors
/// When the server cannot be started or reached, or any run did not complete with the
/// expected output in time.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    ensure!(options.workflows() > 0, "--workflows must be at least 1");
    ensure!(options.concurrency > 0, "--concurrency must be at least 1");
    let (url, local, db) = match &options.url {
        Some(url) => (url.clone(), None, "external"),
        None => {
            let local = Local::start(options.db_url.as_deref()).await?;
            let db = local.db;
            (format!("http://{}", local.server.addr()), Some(local), db)
        }
    };
    let measured = measure(options, &url).await;
    if let Some(local) = local {
        local.stop().await?;
    }
    Ok(Report {
        workload: options.workload,
        db,
        workflows: options.workflows(),
        steps: options.steps(),
        concurrency: options.concurrency,
        payload_bytes: options.payload_bytes,
        measured: measured?,
    })
}

/// A server started for the benchmark, and what to clean up after it.
struct Local {
    server: Server,
    db: &'static str,
    cleanup: Cleanup,
}

enum Cleanup {
    /// The SQLite file (and its `-wal`, `-shm` companions).
    SqliteFile(PathBuf),
    /// The database created on the PostgreSQL server `admin_url` names.
    PgDatabase { admin_url: String, name: String },
}

impl Local {
    async fn start(db_url: Option<&str>) -> anyhow::Result<Self> {
        let (url, db, cleanup) = match db_url.filter(|u| !u.trim().is_empty()) {
            Some(admin)
                if admin.starts_with("postgres://") || admin.starts_with("postgresql://") =>
            {
                let name = format!("kagzi_bench_{}", std::process::id());
                let mut conn = sqlx::PgConnection::connect(admin)
                    .await
                    .context("connecting to PostgreSQL to create the bench database")?;
                // A leftover from a crashed run with the same pid goes first. The name is
                // made of our own digits, so formatting it into the statement is safe.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut conn)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
                    .execute(&mut conn)
                    .await
                    .context("creating the bench database")?;
                conn.close().await?;
                let mut url = url::Url::parse(admin).context("parsing KAGZI_DB_URL")?;
                url.set_path(&format!("/{name}"));
                let cleanup = Cleanup::PgDatabase {
                    admin_url: admin.to_owned(),
                    name,
                };
                (url.to_string(), "postgres", cleanup)
            }
            Some(other) if other.starts_with("sqlite:") => {
                bail!("give no KAGZI_DB_URL for SQLite: the benchmark uses a fresh temporary file")
            }
            Some(other) => bail!(
                "unsupported KAGZI_DB_URL {:?}: use postgres://... or leave it unset for SQLite",
                kagzi_server::store::redact(other)
            ),
            None => {
                let path = std::env::temp_dir().join(format!(
                    "kagzi-bench-{}-{}.db",
                    std::process::id(),
                    uuid::Uuid::new_v4().simple()
                ));
                let url = format!("sqlite://{}", path.display());
                (url, "sqlite", Cleanup::SqliteFile(path))
            }
        };
        let mut config = Config::defaults();
        config.db_url = url;
        config.host = std::net::IpAddr::from([127, 0, 0, 1]);
        config.port = 0;
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                cleanup.run().await;
                return Err(e).context("starting the in-process server");
            }
        };
        Ok(Self {
            server,
            db,
            cleanup,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let stopped = self.server.shutdown().await;
        self.cleanup.run().await;
        stopped.context("stopping the in-process server")
    }
}

impl Cleanup {
    /// Removes what the benchmark created; failures are only warned about.
    async fn run(&self) {
        match self {
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Cleanup::PgDatabase { admin_url, name } => {
                let dropped = async {
                    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "drop database if exists {name} with (force)"
                    )))
                    .execute(&mut conn)
                    .await?;
                    conn.close().await
                };
                if let Err(e) = dropped.await {
                    eprintln!("warning: could not drop the bench database {name}: {e}");
                }
            }
        }
    }
}

/// The benchmark itself, against the server at `url`.
async fn measure(options: &Options, url: &str) -> anyhow::Result<Measured> {
    let queue = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let (done_tx, done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);
    let mut worker = Worker::builder(url, queue.as_str())
        .max_concurrent(options.concurrency)
        .build()
        .await?;
    worker.register(WORKFLOW, move |ctx: WorkflowContext, input: Value| {
        let done = Arc::clone(&done_tx);
        async move {
            let output = bench_workflow(ctx, input).await?;
            done.send_modify(|n| *n += 1);
            Ok(output)
        }
    });
    let stop = worker.shutdown_handle();
    let worker = tokio::spawn(worker.run_until(futures::future::pending::<()>()));
    let client = Client::connect(url).await?;
    let bench = Bench {
        client,
        queue,
        steps: options.steps(),
        pad: "x".repeat(options.payload_bytes),
    };
    let measured = match options.workload {
        Workload::W1 => {
            bench
                .throughput(options.workflows(), options.concurrency, done_rx)
                .await
        }
        Workload::W2 => bench.latency(options.workflows()).await,
    };
    stop.shutdown();
    match tokio::time::timeout(Duration::from_secs(30), worker).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => eprintln!("warning: the worker stopped with an error: {e}"),
        Ok(Err(e)) => eprintln!("warning: the worker task failed: {e}"),
        Err(_) => eprintln!("warning: the worker did not stop within 30 s"),
    }
    measured
}

/// The benchmark workflow: `steps` sequential no-op steps, each returning a small JSON
/// value, checked against what it should be; the output names the run and its last step.
async fn bench_workflow(ctx: WorkflowContext, input: Value) -> anyhow::Result<Value> {
    let i = input["i"].as_u64().context("input.i")?;
    let steps = input["steps"].as_u64().context("input.steps")?;
    let pad = input["pad"].as_str().context("input.pad")?.to_owned();
    for k in 0..steps {
        let value = step_value(i, k, &pad);
        let expected = value.clone();
        let got: Value = ctx.run("noop", async move { Ok(value) }).await?;
        ensure!(got == expected, "step {k} of run {i} returned {got}");
    }
    Ok(expected_output(i, steps, &pad))
}

fn step_value(i: u64, k: u64, pad: &str) -> Value {
    json!({"i": i, "k": k, "pad": pad})
}

fn expected_output(i: u64, steps: u64, pad: &str) -> Value {
    json!({"i": i, "steps": steps, "pad": pad})
}

/// One benchmark session: a client, the queue its worker polls, and the run shape.
struct Bench {
    client: Client,
    queue: String,
    steps: usize,
    pad: String,
}

impl Bench {
    async fn start(&self, i: usize) -> anyhow::Result<RunId> {
        let input = json!({"i": i, "steps": self.steps, "pad": self.pad});
        Ok(self
            .client
            .workflow(WORKFLOW, self.queue.as_str(), input)
            .await?)
    }

    /// Waits for run `i` (`id`) to end and checks it completed with the expected output;
    /// returns when it finished.
    async fn verify(&self, i: usize, id: RunId) -> anyhow::Result<DateTime<Utc>> {
        let run = self.client.wait(id, GIVE_UP).await?;
        ensure!(
            run.status == RunStatus::Completed,
            "run {i} ({id}) ended {:?}: {}",
            run.status,
            run.error.unwrap_or_default()
        );
        let expected = expected_output(i as u64, self.steps as u64, &self.pad);
        ensure!(
            run.output.as_ref() == Some(&expected),
            "run {i} ({id}) completed with {:?}, expected {expected}",
            run.output
        );
        run.finished_at
            .with_context(|| format!("run {i} ({id}) completed without finished_at"))
    }

    /// W1: warm up, then start `n` runs with `in_flight` starts at once and wait for all.
    async fn throughput(
        &self,
        n: usize,
        in_flight: usize,
        mut done: watch::Receiver<usize>,
    ) -> anyhow::Result<Measured> {
        // Warm-up runs get indexes past the measured ones.
        let warmup_runs = (WARMUP_WAVES * in_flight).max(WARMUP_RUNS);
        let warmup: Vec<RunId> = futures::stream::iter(n..n + warmup_runs)
            .map(|i| self.start(i))
            .buffered(in_flight)
            .try_collect()
            .await?;
        for (k, id) in warmup.into_iter().enumerate() {
            self.verify(n + k, id).await?;
        }
        let baseline = *done.borrow();

        let first_start = Utc::now();
        let started = Instant::now();
        let ids: Vec<RunId> = futures::stream::iter(0..n)
            .map(|i| self.start(i))
            .buffered(in_flight)
            .try_collect()
            .await?;
        let start_time = started.elapsed();
        tokio::time::timeout(GIVE_UP, done.wait_for(|d| *d >= baseline + n))
            .await
            .context("the runs did not all finish in time")?
            .context("the worker stopped")?;
        let finished: Vec<DateTime<Utc>> = futures::stream::iter(ids.into_iter().enumerate())
            .map(|(i, id)| self.verify(i, id))
            .buffered(VERIFY_IN_FLIGHT)
            .try_collect()
            .await?;
        let last = finished.into_iter().max().context("no runs")?;
        let wall = (last - first_start)
            .to_std()
            .context("the last run finished before the first start (clock skew?)")?;
        eprintln!(
            "  (all {n} starts sent in {:.3} s)",
            start_time.as_secs_f64()
        );
        Ok(Measured::Throughput { wall })
    }

    /// W2: `n` runs one after another, each started and then waited for.
    async fn latency(&self, n: usize) -> anyhow::Result<Measured> {
        let mut latencies = Vec::with_capacity(n);
        for i in 0..WARMUP_RUNS + n {
            let started = Instant::now();
            let id = self.start(i).await?;
            let output: Value = self.client.result(id).await?;
            let elapsed = started.elapsed();
            let expected = expected_output(i as u64, self.steps as u64, &self.pad);
            ensure!(
                output == expected,
                "run {i} ({id}) completed with {output}, expected {expected}"
            );
            if i >= WARMUP_RUNS {
                latencies.push(elapsed);
            }
        }
        latencies.sort();
        let rank = |p: f64| {
            let k = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[k - 1]
        };
        let total: Duration = latencies.iter().sum();
        Ok(Measured::Latency {
            p50: rank(0.50),
            p99: rank(0.99),
            mean: total / u32::try_from(latencies.len()).unwrap_or(u32::MAX),
            max: latencies.last().copied().unwrap_or_default(),
        })
    }
}
