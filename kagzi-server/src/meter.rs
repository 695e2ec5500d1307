//! The server's metrics, in the Prometheus text format at `/metrics`: counters and histograms
//! recorded where runs change state (through the `metrics` facade, so the SDK's worker
//! metrics in the same process show up too), and gauges read from the store on each scrape.
//! Labels are bounded: workflow, queue, status, route, store operation — never a run id.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::model::{Run, RunStatus};
use crate::store::{Store, WorkerFilter};

/// The bucket bounds of every histogram, in seconds: 1 ms to 1 hour.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    3600.0,
];
/// How often the recorder folds histogram samples into buckets, so that memory stays bounded
/// however rarely it is scraped.
const UPKEEP: Duration = Duration::from_secs(5);

/// The process's recorder, installed once; `None` when another recorder was installed first
/// (an application embedding the server with its own exporter).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .install_recorder();
            match recorder {
                Ok(handle) => {
                    describe();
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("kagzi-metrics".to_owned())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(UPKEEP);
                                upkeep.run_upkeep();
                            }
                        });
                    if let Err(error) = spawned {
                        tracing::warn!(%error, "the metrics upkeep thread did not start");
                    }
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "another metrics recorder is installed; /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        "kagzi_runs_started_total",
        "Runs started (new, not idempotent repeats), by workflow and queue."
    );
    describe_counter!(
        "kagzi_runs_completed_total",
        "Runs that completed, by workflow and queue."
    );
    describe_counter!(
        "kagzi_runs_failed_total",
        "Runs that failed for good, by workflow and queue."
    );
    describe_counter!(
        "kagzi_runs_cancelled_total",
        "Runs cancelled by a request (children cancelled with their parent are not counted), by workflow and queue."
    );
    describe_counter!(
        "kagzi_runs_retried_total",
        "Attempts that failed and went back to their queue, and operator retries, by workflow and queue."
    );
    describe_counter!(
        "kagzi_runs_timed_out_total",
        "Runs ended by their run timeout (deadline)."
    );
    describe_counter!(
        "kagzi_leases_expired_total",
        "Runs whose worker stopped heartbeating, reclaimed by the watchdog."
    );
    describe_histogram!(
        "kagzi_run_duration_seconds",
        Unit::Seconds,
        "From a run's first start to its end, by workflow and queue."
    );
    describe_histogram!(
        "kagzi_run_schedule_to_start_seconds",
        Unit::Seconds,
        "From a run's start request to its first claim (including a start delay), by workflow and queue."
    );
    describe_counter!(
        "kagzi_steps_recorded_total",
        "Step results recorded, by status."
    );
    describe_counter!(
        "kagzi_schedule_fires_total",
        "Runs started by schedules at their due times."
    );
    describe_counter!(
        "kagzi_schedule_missed_total",
        "Due times a schedule dropped (overlap policy or beyond the catch-up window)."
    );
    describe_counter!(
        "kagzi_http_requests_total",
        "HTTP requests answered, by method, route and status."
    );
    describe_histogram!(
        "kagzi_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method and route (long polls included)."
    );
    describe_gauge!(
        "kagzi_long_polls_waiting",
        "Long polls waiting on this server, by kind (claim, result)."
    );
    describe_counter!(
        "kagzi_store_errors_total",
        "Store operations that failed on the database, by operation."
    );
    describe_histogram!(
        "kagzi_store_operation_duration_seconds",
        Unit::Seconds,
        "Store operation latency (one or more statements), by operation."
    );
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    to.signed_duration_since(from)
        .to_std()
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A run was started.
pub(crate) fn run_started(workflow: &str, queue: &str) {
    counter!("kagzi_runs_started_total", "workflow" => workflow.to_owned(), "queue" => queue.to_owned()).increment(1);
}

/// A store call changed `run`, which was `active` before: counts an end or a retry.
pub(crate) fn run_changed(run: &Run) {
    let labels = [
        ("workflow", run.workflow.clone()),
        ("queue", run.queue.clone()),
    ];
    let name = match run.status {
        RunStatus::Completed => "kagzi_runs_completed_total",
        RunStatus::Failed => "kagzi_runs_failed_total",
        RunStatus::Cancelled => "kagzi_runs_cancelled_total",
        RunStatus::Pending => "kagzi_runs_retried_total",
        _ => return,
    };
    counter!(name, &labels).increment(1);
    if run.status.is_terminal() {
        if let (Some(start), Some(end)) = (run.started_at, run.finished_at) {
            histogram!("kagzi_run_duration_seconds", &labels).record(seconds(start, end));
        }
        if let Some(start) = run.started_at {
            histogram!("kagzi_run_schedule_to_start_seconds", &labels)
                .record(seconds(run.created_at, start));
        }
    }
}

/// `n` runs were ended by their deadline.
pub(crate) fn runs_timed_out(n: u64) {
    counter!("kagzi_runs_timed_out_total").increment(n);
}

/// `n` leases expired and their runs were reclaimed.
pub(crate) fn leases_expired(n: u64) {
    counter!("kagzi_leases_expired_total").increment(n);
}

/// A step result was recorded.
pub(crate) fn step_recorded(failed: bool) {
    let status = if failed { "failed" } else { "completed" };
    counter!("kagzi_steps_recorded_total", "status" => status).increment(1);
}

/// A schedule fired `started` runs and dropped `missed` due times.
pub(crate) fn schedule_fired(started: usize, missed: usize) {
    counter!("kagzi_schedule_fires_total").increment(started as u64);
    counter!("kagzi_schedule_missed_total").increment(missed as u64);
}

/// An HTTP request was answered.
pub(crate) fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let (method, route) = (method.to_owned(), route.to_owned());
    counter!("kagzi_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string()).increment(1);
    histogram!("kagzi_http_request_duration_seconds", "method" => method, "route" => route)
        .record(took.as_secs_f64());
}

/// Times a store operation and counts its database failures.
pub(crate) async fn store_op<T, F>(op: &'static str, call: F) -> crate::store::Result<T>
where
    F: Future<Output = crate::store::Result<T>>,
{
    let started = Instant::now();
    let result = call.await;
    histogram!("kagzi_store_operation_duration_seconds", "operation" => op)
        .record(started.elapsed().as_secs_f64());
    if let Err(crate::store::Error::Database(_)) = &result {
        counter!("kagzi_store_errors_total", "operation" => op).increment(1);
    }
    result
}

/// Times a batch store operation and counts the database failures among its results.
pub(crate) async fn store_batch<T, F>(op: &'static str, call: F) -> Vec<crate::store::Result<T>>
where
    F: Future<Output = Vec<crate::store::Result<T>>>,
{
    let started = Instant::now();
    let results = call.await;
    histogram!("kagzi_store_operation_duration_seconds", "operation" => op)
        .record(started.elapsed().as_secs_f64());
    let failed = results
        .iter()
        .filter(|r| matches!(r, Err(crate::store::Error::Database(_))))
        .count();
    if failed > 0 {
        counter!("kagzi_store_errors_total", "operation" => op).increment(failed as u64);
    }
    results
}

/// A sample's labels, as name and value.
type Labels<'a, const N: usize> = [(&'a str, &'a str); N];

/// The most workers read for the worker gauges at one scrape.
const MAX_WORKERS_READ: u32 = 10_000;

/// A label value in the text format: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one gauge family: its help, its type and a sample per label set.
fn gauge_family<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (&'a [(&'a str, &'a str)], f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Appends the gauges read from the store at `now`: per queue and workflow the runs due,
/// due later, running and suspended and the oldest due run's age; per queue the workers
/// online and their free slots; the database pool. Every replica reads the same rows, so
/// these agree across replicas.
pub(crate) async fn store_gauges(
    out: &mut String,
    store: &dyn Store,
    now: DateTime<Utc>,
) -> crate::store::Result<()> {
    let queues = store.queue_stats(now).await?;
    let rows: Vec<(Labels<'_, 2>, &kagzi_proto::QueueStats)> = queues
        .iter()
        .map(|q| {
            (
                [
                    ("queue", q.queue.as_str()),
                    ("workflow", q.workflow.as_str()),
                ],
                q,
            )
        })
        .collect();
    let family = |out: &mut String,
                  name: &str,
                  help: &str,
                  value: &dyn Fn(&kagzi_proto::QueueStats) -> f64| {
        gauge_family(
            out,
            name,
            help,
            rows.iter().map(|(l, q)| (&l[..], value(q))),
        );
    };
    family(
        out,
        "kagzi_queue_due_runs",
        "Pending runs due now (the backlog), by queue and workflow.",
        &|q| q.due as f64,
    );
    family(
        out,
        "kagzi_queue_scheduled_runs",
        "Pending runs due later, by queue and workflow.",
        &|q| q.scheduled as f64,
    );
    family(
        out,
        "kagzi_queue_running_runs",
        "Runs held by a worker, by queue and workflow.",
        &|q| q.running as f64,
    );
    family(
        out,
        "kagzi_queue_suspended_runs",
        "Runs sleeping or waiting, by queue and workflow.",
        &|q| q.suspended as f64,
    );
    family(
        out,
        "kagzi_queue_oldest_due_age_seconds",
        "How long the oldest due run has waited, by queue and workflow (0 when none is due).",
        &|q| q.oldest_due_at.map_or(0.0, |at| seconds(at, now)),
    );

    let filter = WorkerFilter {
        status: Some(kagzi_proto::WorkerStatus::Online),
        limit: MAX_WORKERS_READ,
        ..WorkerFilter::default()
    };
    let mut per_queue: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for info in store.list_workers(&filter).await? {
        let entry = per_queue.entry(info.worker.queue.clone()).or_default();
        entry.0 += 1;
        let capacity = u64::try_from(info.worker.capacity).unwrap_or(0);
        entry.1 += capacity.saturating_sub(u64::from(info.runs_held));
    }
    let labels: Vec<(Labels<'_, 1>, (u64, u64))> = per_queue
        .iter()
        .map(|(queue, counts)| ([("queue", queue.as_str())], *counts))
        .collect();
    gauge_family(
        out,
        "kagzi_workers_online",
        "Workers heartbeating, by queue.",
        labels.iter().map(|(l, c)| (&l[..], c.0 as f64)),
    );
    gauge_family(
        out,
        "kagzi_worker_free_slots",
        "Runs the online workers could take now (capacity minus runs held), by queue.",
        labels.iter().map(|(l, c)| (&l[..], c.1 as f64)),
    );

    let pool = store.pool_stats();
    let in_use = pool.open.saturating_sub(pool.idle);
    gauge_family(
        out,
        "kagzi_db_connections",
        "Database connections of this process, by state.",
        [
            (&[("state", "in_use")][..], f64::from(in_use)),
            (&[("state", "idle")][..], f64::from(pool.idle)),
        ],
    );
    gauge_family(
        out,
        "kagzi_db_connections_max",
        "The most database connections this process opens.",
        [(&[][..], f64::from(pool.max))],
    );
    Ok(())
}

/// Counts a long poll as waiting while it lives.
#[derive(Debug)]
pub(crate) struct Waiting(&'static str);

impl Waiting {
    /// A long poll of `kind` (`claim`, `result`) starts waiting.
    pub(crate) fn start(kind: &'static str) -> Self {
        metrics::gauge!("kagzi_long_polls_waiting", "kind" => kind).increment(1.0);
        Self(kind)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("kagzi_long_polls_waiting", "kind" => self.0).decrement(1.0);
    }
}
