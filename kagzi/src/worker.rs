//! The worker: registers with the server, long-polls a queue for runs, executes them with the
//! registered workflow functions, keeps their leases alive with heartbeats, and reports results.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, instrument, warn};
use uuid::Uuid;

use crate::context::{DeferredStep, JournalEntry, WorkflowContext};
use crate::error::{Error, Result};
use crate::http::{ApiKey, Call, Http, ReportKind, Retry, WORKER_RETRY_BUDGET};
use crate::types::RunId;
use crate::workflow::Workflow;

/// How long one poll waits on the server for work.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time the HTTP client allows a long-poll beyond its own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// How long deregistering keeps retrying on shutdown.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(5);

/// A type-erased workflow function: JSON input in, JSON output out.
type Handler =
    Arc<dyn Fn(WorkflowContext, Value) -> BoxFuture<'static, anyhow::Result<Value>> + Send + Sync>;

/// The run's input did not match the workflow's input type: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("invalid workflow input: {0}")]
struct InvalidInput(serde_json::Error);

/// The workflow's output could not be serialized: retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("could not serialize workflow output: {0}")]
struct InvalidOutput(serde_json::Error);

/// Configures a [`Worker`]; made by [`Worker::builder`].
#[derive(Debug, Clone)]
#[must_use = "call `.build().await` to make the worker"]
pub struct WorkerBuilder {
    url: String,
    queue: String,
    max_concurrent: usize,
    hostname: Option<String>,
    shutdown_grace: Duration,
    api_key: ApiKey,
}

impl WorkerBuilder {
    /// Send `key` as the API key (default: the `KAGZI_API_KEY` environment variable, if
    /// set). Needed when the server has `KAGZI_API_KEY` set; never logged.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = ApiKey::new(key);
        self
    }

    /// Run at most `n` workflows at once (default 10; at least 1).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// The host name the worker reports to the server (default: `$HOSTNAME`, if set).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// On shutdown, how long to wait for in-flight runs before aborting them and handing
    /// them back to the server (default 30 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Make the worker. Registration with the server happens in [`Worker::run`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the URL is not an `http(s)://` URL or `max_concurrent` is 0;
    /// [`Error::Http`] if the HTTP client cannot be built.
    pub async fn build(self) -> Result<Worker> {
        if self.max_concurrent == 0 {
            return Err(Error::Config(
                "max_concurrent must be at least 1".to_owned(),
            ));
        }
        if self.queue.is_empty() {
            return Err(Error::Config("queue name must not be empty".to_owned()));
        }
        let http = Http::new(&self.url, self.max_concurrent + 2, self.api_key)?;
        let (stop, _) = watch::channel(false);
        Ok(Worker {
            http,
            queue: self.queue,
            max_concurrent: self.max_concurrent,
            hostname: self.hostname,
            shutdown_grace: self.shutdown_grace,
            handlers: HashMap::new(),
            stop: Arc::new(stop),
        })
    }
}

/// Executes workflow runs from one queue.
///
/// ```no_run
/// # async fn greet(ctx: kagzi::WorkflowContext, name: String) -> anyhow::Result<String> { Ok(name) }
/// # async fn example() -> kagzi::Result<()> {
/// let mut worker = kagzi::Worker::builder("http://localhost:50051", "default")
///     .max_concurrent(50)
///     .build()
///     .await?;
/// worker.register("greet", greet);
/// worker.run().await?; // until SIGINT or SIGTERM
/// # Ok(()) }
/// ```
pub struct Worker {
    http: Http,
    queue: String,
    max_concurrent: usize,
    hostname: Option<String>,
    shutdown_grace: Duration,
    handlers: HashMap<String, Handler>,
    stop: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut workflows: Vec<_> = self.handlers.keys().collect();
        workflows.sort();
        f.debug_struct("Worker")
            .field("queue", &self.queue)
            .field("max_concurrent", &self.max_concurrent)
            .field("workflows", &workflows)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Worker`] from elsewhere; made by [`Worker::shutdown_handle`].
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    /// Ask the worker to shut down gracefully, as SIGTERM would.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Worker {
    /// Start configuring a worker for the server at `url` that runs workflows from `queue`.
    pub fn builder(url: impl Into<String>, queue: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            url: url.into(),
            queue: queue.into(),
            max_concurrent: 10,
            hostname: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
            shutdown_grace: Duration::from_secs(30),
            api_key: ApiKey::from_env(),
        }
    }

    /// Register the workflow function `f` under `name`. Registering a name again replaces
    /// the earlier function.
    ///
    /// `f` gets a [`WorkflowContext`] and the run's input, deserialized from JSON into `I`.
    /// If the input does not deserialize, the run fails without retries.
    pub fn register<F, I, O, Fut>(&mut self, name: impl Into<String>, f: F) -> &mut Self
    where
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        I: DeserializeOwned + Send + 'static,
        Fut: Future<Output = anyhow::Result<O>> + Send + 'static,
        O: Serialize,
    {
        let handler: Handler =
            Arc::new(move |ctx, input| match serde_json::from_value::<I>(input) {
                Err(e) => futures::future::ready(Err(anyhow::Error::new(InvalidInput(e)))).boxed(),
                Ok(input) => {
                    let fut = f(ctx, input);
                    async move {
                        let output = fut.await?;
                        serde_json::to_value(&output)
                            .map_err(|e| anyhow::Error::new(InvalidOutput(e)))
                    }
                    .boxed()
                }
            });
        self.handlers.insert(name.into(), handler);
        self
    }

    /// Register a typed workflow: a `#[workflow]` fn, or any [`Workflow`]. It is registered
    /// under [`Workflow::NAME`]; registering a name again replaces the earlier workflow.
    ///
    /// ```no_run
    /// # use kagzi::{workflow, WorkflowContext};
    /// #[workflow]
    /// async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    ///     Ok(format!("Hello, {name}!"))
    /// }
    ///
    /// # async fn example() -> kagzi::Result<()> {
    /// let mut worker = kagzi::Worker::builder("http://localhost:50051", "default")
    ///     .build()
    ///     .await?;
    /// worker.add(greet);
    /// # Ok(()) }
    /// ```
    ///
    /// If the run's input does not deserialize into [`Workflow::Input`], the run fails
    /// without retries.
    pub fn add<W: Workflow>(&mut self, workflow: W) -> &mut Self {
        if let Some(queue) = W::QUEUE.filter(|queue| *queue != self.queue) {
            warn!(
                workflow = W::NAME,
                default_queue = queue,
                worker_queue = %self.queue,
                "this worker polls another queue than the workflow's default: runs started with `Client::start` will not reach it"
            );
        }
        let workflow = Arc::new(workflow);
        let handler: Handler =
            Arc::new(
                move |ctx, input| match serde_json::from_value::<W::Input>(input) {
                    Err(e) => {
                        futures::future::ready(Err(anyhow::Error::new(InvalidInput(e)))).boxed()
                    }
                    Ok(input) => {
                        let fut = workflow.run(ctx, input);
                        async move {
                            let output = fut.await?;
                            serde_json::to_value(&output)
                                .map_err(|e| anyhow::Error::new(InvalidOutput(e)))
                        }
                        .boxed()
                    }
                },
            );
        self.handlers.insert(W::NAME.to_owned(), handler);
        self
    }

    /// A handle that shuts this worker down gracefully when triggered.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: Arc::clone(&self.stop),
        }
    }

    /// Run until SIGINT (Ctrl-C) or SIGTERM, then shut down gracefully; see
    /// [`run_until`](Self::run_until).
    ///
    /// # Errors
    ///
    /// As [`run_until`](Self::run_until).
    pub async fn run(self) -> Result<()> {
        self.run_until(termination()).await
    }

    /// Register with the server and execute runs until `shutdown` completes (or a
    /// [`ShutdownHandle`] fires). Then stop polling, wait up to the shutdown grace for
    /// in-flight runs, abort the rest, and deregister, which hands their runs back to the
    /// queue for another worker.
    ///
    /// Once registered, the worker rides out server outages: failed polls, heartbeats and
    /// reports are retried, and the worker re-registers if the server forgot it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if no workflow is registered; the registration error if the server
    /// cannot be reached or refuses the worker (after retrying for up to a minute).
    pub async fn run_until<F>(self, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()>,
    {
        let Worker {
            http,
            queue,
            max_concurrent,
            hostname,
            shutdown_grace,
            handlers,
            stop,
        } = self;
        if handlers.is_empty() {
            return Err(Error::Config(
                "register at least one workflow before running the worker".to_owned(),
            ));
        }
        let mut workflows: Vec<String> = handlers.keys().cloned().collect();
        workflows.sort();
        let mut shared = Shared {
            http: http.with_reporter(),
            queue,
            workflows,
            capacity: u32::try_from(max_concurrent).unwrap_or(u32::MAX),
            hostname,
            registration: tokio::sync::Mutex::new(Registration::default()),
            held: Mutex::new(HashMap::new()),
        };
        let registration = shared.register().await?;
        info!(worker_id = %registration.id, queue = %shared.queue, workflows = ?shared.workflows, "worker registered");
        *shared.registration.get_mut() = registration;
        let shared = Arc::new(shared);

        // Aborted when this future ends *or is dropped*: a worker whose future is dropped
        // (aborted task, losing `select!` branch) must stop keeping its runs' leases alive,
        // or those runs could never be reclaimed.
        let heartbeat = AbortOnDrop(tokio::spawn(heartbeat_loop(Arc::clone(&shared))));
        let mut stop_rx = stop.subscribe();
        let shutdown = async move {
            tokio::select! {
                () = shutdown => {}
                _ = stop_rx.wait_for(|stopped| *stopped) => {}
            }
        };
        let mut tasks = JoinSet::new();
        poll_loop(&shared, &handlers, max_concurrent, &mut tasks, shutdown).await;

        info!(in_flight = tasks.len(), "worker shutting down");
        let deadline = tokio::time::sleep(shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(joined) => log_join(joined),
                    None => break,
                },
                () = &mut deadline => {
                    warn!(aborted = tasks.len(), "shutdown grace expired; handing the remaining runs back");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
            }
        }
        drop(heartbeat);
        shared.deregister().await;
        Ok(())
    }
}

/// Resolves on SIGINT (Ctrl-C), or SIGTERM on Unix.
async fn termination() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            futures::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = futures::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("received SIGINT"),
        () = terminate => info!("received SIGTERM"),
    }
}

/// Claim runs while permits are free and spawn one task per run, until `shutdown`.
async fn poll_loop(
    shared: &Arc<Shared>,
    handlers: &HashMap<String, Handler>,
    max_concurrent: usize,
    tasks: &mut JoinSet<()>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let semaphore = Arc::new(Semaphore::new(max_concurrent));
    let mut backoff = Duration::from_millis(100);
    loop {
        while let Some(joined) = tasks.try_join_next() {
            log_join(joined);
        }
        let first = tokio::select! {
            biased;
            () = &mut shutdown => return,
            permit = Arc::clone(&semaphore).acquire_owned() => permit,
        };
        // The semaphore is never closed, so this always holds a permit.
        let Ok(first) = first else { return };
        let mut permits = vec![first];
        while let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
            permits.push(permit);
        }

        let started = Instant::now();
        let polled = tokio::select! {
            biased;
            () = &mut shutdown => return,
            polled = shared.poll(permits.len()) => polled,
        };
        match polled {
            Ok(runs) => {
                backoff = Duration::from_millis(100);
                if runs.is_empty() && started.elapsed() < Duration::from_millis(5) {
                    // The server answered at once with nothing; don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for task in runs {
                    let permit = permits.pop();
                    let handler = handlers.get(&task.workflow).cloned();
                    spawn_run(shared, tasks, task, handler, permit);
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "poll failed");
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn spawn_run(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    task: Task,
    handler: Option<Handler>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let run_id = task.run_id;
    let lease_token = task.lease_token;
    let task_shared = Arc::clone(shared);
    // Hold the lock while spawning so the task cannot finish (and unregister itself)
    // before it is registered.
    let mut held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
    let abort = tasks.spawn(async move {
        let _permit = permit;
        execute(&task_shared, handler, task).await;
        task_shared.release(run_id, lease_token, false);
    });
    if let Some(stale) = held.insert(run_id, Held { lease_token, abort }) {
        // We were handed the run again under a new lease: the old attempt is a zombie.
        stale.abort.abort();
    }
}

fn log_join(joined: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        error!(error = %e, "run task panicked");
    }
}

/// Execute one claimed run and report how it ended.
#[instrument(skip_all, fields(run_id = %task.run_id, workflow = %task.workflow, attempt = task.attempt))]
async fn execute(shared: &Shared, handler: Option<Handler>, task: Task) {
    let Task {
        run_id,
        workflow,
        input,
        attempt,
        lease_token,
        journal,
    } = task;
    debug!("run started");
    let (outcome, observer) = match handler {
        None => (
            Err((
                format!("workflow {workflow:?} is not registered on this worker"),
                true,
            )),
            None,
        ),
        Some(handler) => {
            let ctx = WorkflowContext::new(
                run_id,
                workflow,
                attempt,
                lease_token,
                journal,
                Some(shared.http.clone()),
            );
            // `#[step]` fns find the run through the task-local context; the workflow's
            // future is made inside the scope too, in case its fn runs steps before its
            // first `.await`. A run that suspends (sleep, signal, child) is dropped here: the
            // server wakes it when its wait is over.
            let observer = ctx.clone();
            let body = ctx.clone().scope(async move { handler(ctx, input).await });
            let mut body = std::pin::pin!(AssertUnwindSafe(body).catch_unwind());
            // A step's report may wait while the workflow runs on synchronously (so that a
            // last step rides with the completion), but not once the workflow waits for
            // anything: then it is sent at once.
            let inner = Arc::clone(&observer.inner);
            let driven = std::future::poll_fn(|cx| {
                let polled = body.as_mut().poll(cx);
                if polled.is_pending() && inner.has_deferred() {
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        // A failure poisons the attempt, which the outcome below reads.
                        let _ = inner.flush().await;
                    });
                }
                polled
            });
            let result = tokio::select! {
                result = driven => result,
                () = observer.inner.suspended.notified() => {
                    debug!("run suspended; the server wakes it when its wait is over");
                    return;
                }
            };
            if !matches!(result, Ok(Ok(_))) {
                // A failing run reports its finished steps first (a failure here poisons).
                let _ = observer.inner.flush().await;
            }
            let outcome = match (result, observer.poisoned()) {
                (_, Some(Error::LeaseLost { .. })) => {
                    info!("lease lost; dropping the run");
                    return;
                }
                // Even if the workflow swallowed the step's error, a replay that diverged
                // from the journal must not complete, and retrying cannot help.
                (_, Some(error @ Error::NonDeterminism { .. })) => Err((error.to_string(), false)),
                (_, Some(error @ Error::StepResultTooLarge { .. })) => {
                    Err((error.to_string(), false))
                }
                (_, Some(error @ Error::Unreported(_))) => {
                    error!(%error, "dropping the run; its lease will expire and it will be retried");
                    return;
                }
                (Ok(Ok(output)), _) => Ok(output),
                (Ok(Err(e)), _) => {
                    let kagzi_error = e.chain().find_map(|cause| cause.downcast_ref::<Error>());
                    if let Some(Error::LeaseLost { .. }) = kagzi_error {
                        info!("lease lost; dropping the run");
                        return;
                    }
                    let retryable = !(e.is::<InvalidInput>()
                        || e.is::<InvalidOutput>()
                        || matches!(
                            kagzi_error,
                            Some(
                                Error::NonDeterminism { .. }
                                    | Error::StepResultTooLarge { .. }
                                    | Error::PayloadTooLarge { .. }
                            )
                        ));
                    Err((format!("{e:#}"), retryable))
                }
                (Err(panic), _) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".to_owned());
                    Err((format!("workflow panicked: {message}"), true))
                }
            };
            (outcome, Some(observer))
        }
    };
    let mut outcome = outcome;
    let mut reported = match (&outcome, &observer) {
        (Ok(_), Some(observer)) => {
            // The completion carries the reports still deferred; later flushes wait for it.
            let (flushing, steps) = observer.inner.take_for_completion().await;
            let mut reported = match unfinished(observer) {
                Some(end) => end,
                None => report_outcome(shared, run_id, lease_token, &outcome, &steps).await,
            };
            if matches!(reported, Err(Error::PayloadTooLarge { .. })) && !steps.is_empty() {
                // Refused whole, nothing recorded: report the steps on their own (a result
                // over the limit fails its step), then complete without them.
                observer.inner.requeue(steps);
                drop(flushing);
                let _ = observer.inner.flush().await;
                reported = match unfinished(observer) {
                    Some(end) => end,
                    None => report_outcome(shared, run_id, lease_token, &outcome, &[]).await,
                };
            }
            reported
        }
        // A failed run is reported below.
        _ => Err(Error::Timeout),
    };
    // Poisoned while completing: end as the poison says.
    if let (Some(observer), Ok(_)) = (&observer, &outcome) {
        match observer.poisoned() {
            Some(error @ Error::StepResultTooLarge { .. }) => {
                outcome = Err((error.to_string(), false));
                reported = Err(Error::Timeout);
            }
            Some(error) if reported.is_err() => {
                info!(%error, "dropping the run; its lease will expire and it will be retried");
                return;
            }
            _ => {}
        }
    }
    if outcome.is_err() {
        reported = report_outcome(shared, run_id, lease_token, &outcome, &[]).await;
    }
    if let (Err(Error::PayloadTooLarge { detail }), Ok(_)) = (&reported, &outcome) {
        // The output can never be recorded: fail the run for good, saying why.
        outcome = Err((
            format!("the workflow's output is over the server's payload limit: {detail}"),
            false,
        ));
        reported = report_outcome(shared, run_id, lease_token, &outcome, &[]).await;
    }
    match (reported, &outcome) {
        (Ok(_), Ok(_)) => debug!("run completed"),
        (Ok(_), Err((error, retryable))) => info!(%error, retryable, "run failed"),
        (Err(Error::LeaseLost { .. }), _) => {
            info!("lease lost before the result was recorded; dropping the run")
        }
        (Err(e), _) => {
            error!(error = %e, "could not report the run's result; its lease will expire and it will be retried")
        }
    }
}

/// A completion must not be sent once a deferred step report failed: `Some` (an error that
/// stands in for the refused completion) when the attempt is poisoned.
fn unfinished(observer: &WorkflowContext) -> Option<Result<IgnoredAny>> {
    observer.poisoned().map(Err)
}

/// The longest error message a failed run reports; longer ones are cut (on a character
/// boundary) so the report fits any sensible payload limit.
const MAX_ERROR_LEN: usize = 64 * 1024;

/// Report how a run ended: `complete` with its output or `fail` with its error.
async fn report_outcome(
    shared: &Shared,
    run_id: RunId,
    lease_token: Uuid,
    outcome: &std::result::Result<Value, (String, bool)>,
    steps: &[DeferredStep],
) -> Result<IgnoredAny> {
    let run = run_id.to_string();
    let call = match outcome {
        Ok(output) => {
            let complete = CompleteRequest {
                lease_token,
                output,
                steps,
            };
            return shared
                .http
                .report(run_id, ReportKind::Complete, &complete)
                .await;
        }
        Err((error, retryable)) => {
            let mut end = error.len().min(MAX_ERROR_LEN);
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            Call::post(
                shared.http.url(&["v1", "runs", &run, "fail"]),
                &FailRequest {
                    lease_token,
                    error: &error[..end],
                    retryable: *retryable,
                },
            )?
        }
    };
    let call = call
        .retry(Retry::Transient(WORKER_RETRY_BUDGET))
        .report(run_id);
    shared.http.send::<IgnoredAny>(&call).await
}

/// Keep the held leases alive, stop runs the server says are lost, and re-register if the
/// server forgot this worker.
async fn heartbeat_loop(shared: Arc<Shared>) {
    loop {
        let (id, interval) = {
            let registration = shared.registration.lock().await;
            (registration.id, registration.heartbeat_interval())
        };
        tokio::time::sleep(interval).await;
        let runs = shared.held_runs();
        let url = shared
            .http
            .url(&["v1", "workers", &id.to_string(), "heartbeat"]);
        let response = match Call::post(url, &HeartbeatRequest { runs: &runs }) {
            Ok(call) => {
                let call = call.retry(Retry::Transient(WORKER_RETRY_BUDGET));
                shared.http.send::<HeartbeatResponse>(&call).await
            }
            Err(e) => Err(e),
        };
        match response {
            Ok(response) => {
                let sent: HashMap<RunId, Uuid> = runs
                    .iter()
                    .map(|run| (run.run_id, run.lease_token))
                    .collect();
                for run_id in response.lost {
                    if let Some(lease_token) = sent.get(&run_id)
                        && shared.release(run_id, *lease_token, true)
                    {
                        info!(%run_id, "run no longer held by this worker (cancelled or reclaimed); stopped it");
                    }
                }
            }
            Err(Error::Api { status: 404, .. }) => {
                if let Err(e) = shared.reregister(id).await {
                    warn!(error = %e, "re-registration failed");
                }
            }
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the poll loop, the heartbeat and the run tasks share.
struct Shared {
    http: Http,
    queue: String,
    workflows: Vec<String>,
    capacity: u32,
    hostname: Option<String>,
    registration: tokio::sync::Mutex<Registration>,
    /// Runs being executed, with their lease and a way to stop them.
    held: Mutex<HashMap<RunId, Held>>,
}

struct Held {
    lease_token: Uuid,
    abort: AbortHandle,
}

impl Shared {
    async fn register(&self) -> Result<Registration> {
        let call = Call::post(
            self.http.url(&["v1", "workers"]),
            &RegisterRequest {
                queue: &self.queue,
                workflows: &self.workflows,
                capacity: self.capacity,
                hostname: self.hostname.as_deref(),
            },
        )?
        .retry(Retry::Transient(WORKER_RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Register again because the server no longer knows worker `stale`; returns the
    /// current id (somebody else may have re-registered already).
    async fn reregister(&self, stale: Uuid) -> Result<Uuid> {
        let mut registration = self.registration.lock().await;
        if registration.id != stale {
            return Ok(registration.id);
        }
        let fresh = self.register().await?;
        info!(old = %stale, new = %fresh.id, "server forgot this worker; re-registered");
        *registration = fresh;
        Ok(registration.id)
    }

    async fn worker_id(&self) -> Uuid {
        self.registration.lock().await.id
    }

    async fn poll(&self, max: usize) -> Result<Vec<Task>> {
        let id = self.worker_id().await;
        let url = self.http.url(&["v1", "workers", &id.to_string(), "poll"]);
        let body = PollRequest {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            timeout_ms: u64::try_from(POLL_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        };
        let call = Call::post(url, &body)?
            .timeout(POLL_TIMEOUT + POLL_SLACK)
            .retry(Retry::Transient(WORKER_RETRY_BUDGET));
        match self.http.send::<PollResponse>(&call).await {
            Ok(response) => Ok(response.runs),
            Err(Error::Api { status: 404, .. }) => {
                self.reregister(id).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    async fn deregister(&self) {
        let id = self.worker_id().await;
        let call = Call::delete(self.http.url(&["v1", "workers", &id.to_string()]))
            .retry(Retry::Transient(DEREGISTER_BUDGET));
        match self.http.send::<IgnoredAny>(&call).await {
            Ok(_) => info!(worker_id = %id, "worker deregistered"),
            Err(e) => {
                warn!(worker_id = %id, error = %e, "could not deregister; the server will expire this worker")
            }
        }
    }

    /// The runs held now, for a heartbeat.
    fn held_runs(&self) -> Vec<HeldRun> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(run_id, held)| HeldRun {
                run_id: *run_id,
                lease_token: held.lease_token,
            })
            .collect()
    }

    /// Forget run `run_id` under lease `lease_token`, aborting its task if `abort`.
    /// Returns false if that lease is no longer held.
    fn release(&self, run_id: RunId, lease_token: Uuid, abort: bool) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match held.get(&run_id) {
            Some(current) if current.lease_token == lease_token => {
                if let Some(run) = held.remove(&run_id)
                    && abort
                {
                    run.abort.abort();
                }
                true
            }
            _ => false,
        }
    }
}

/// Body of `POST /v1/workers`.
#[derive(Serialize)]
struct RegisterRequest<'a> {
    queue: &'a str,
    workflows: &'a [String],
    capacity: u32,
    hostname: Option<&'a str>,
}

/// Answer to `POST /v1/workers`.
#[derive(Debug, Clone, Default, Deserialize)]
struct Registration {
    id: Uuid,
    #[serde(default)]
    heartbeat_interval_ms: u64,
}

impl Registration {
    fn heartbeat_interval(&self) -> Duration {
        match self.heartbeat_interval_ms {
            0 => Duration::from_secs(5),
            ms => Duration::from_millis(ms.max(100)),
        }
    }
}

/// Body of `POST /v1/workers/{id}/heartbeat`.
#[derive(Serialize)]
struct HeartbeatRequest<'a> {
    runs: &'a [HeldRun],
}

#[derive(Debug, Clone, Serialize)]
struct HeldRun {
    run_id: RunId,
    lease_token: Uuid,
}

/// Answer to a heartbeat: the runs this worker must stop.
#[derive(Deserialize)]
struct HeartbeatResponse {
    #[serde(default)]
    lost: Vec<RunId>,
}

/// Body of `POST /v1/workers/{id}/poll`.
#[derive(Serialize)]
struct PollRequest {
    max: u32,
    timeout_ms: u64,
}

/// Answer to a poll.
#[derive(Deserialize)]
struct PollResponse {
    #[serde(default)]
    runs: Vec<Task>,
}

/// A run claimed by this worker.
#[derive(Deserialize)]
struct Task {
    run_id: RunId,
    workflow: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    attempt: u32,
    lease_token: Uuid,
    #[serde(default)]
    journal: Vec<JournalEntry>,
}

/// Body of `POST /v1/runs/{id}/complete`.
#[derive(Serialize)]
struct CompleteRequest<'a> {
    lease_token: Uuid,
    output: &'a Value,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    steps: &'a [DeferredStep],
}

/// Body of `POST /v1/runs/{id}/fail`.
#[derive(Serialize)]
struct FailRequest<'a> {
    lease_token: Uuid,
    error: &'a str,
    retryable: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
        Ok(format!("Hello, {name}! (attempt {})", ctx.attempt()))
    }

    fn context() -> WorkflowContext {
        WorkflowContext::new(
            RunId(Uuid::now_v7()),
            "greet".to_owned(),
            2,
            Uuid::new_v4(),
            Vec::new(),
            None,
        )
    }

    #[tokio::test]
    async fn registered_handler_round_trips_json() -> anyhow::Result<()> {
        let mut worker = Worker::builder("http://localhost:50051", "default")
            .build()
            .await?;
        worker.register("greet", greet);
        let handler = worker
            .handlers
            .get("greet")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("not registered"))?;
        assert_eq!(
            handler(context(), json!("World")).await?,
            json!("Hello, World! (attempt 2)")
        );

        let invalid = handler(context(), json!({"name": 1})).await;
        assert!(invalid.is_err_and(|e| e.is::<InvalidInput>()));
        Ok(())
    }

    #[tokio::test]
    async fn builder_rejects_zero_concurrency_and_bad_urls() {
        assert!(matches!(
            Worker::builder("http://localhost:1", "q")
                .max_concurrent(0)
                .build()
                .await,
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Worker::builder("not a url", "q").build().await,
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn task_deserializes_from_the_wire_format() -> serde_json::Result<()> {
        let response: PollResponse = serde_json::from_str(
            r#"{"runs":[{"run_id":"0190b5a0-0000-7000-8000-000000000001","workflow":"greet",
                "input":{"name":"World"},"attempt":1,
                "lease_token":"0190b5a0-0000-7000-8000-000000000002",
                "lease_expires_at":"2025-01-01T00:00:30Z",
                "journal":[{"key":"greet","position":0,"output":"Hello"}]}]}"#,
        )?;
        assert_eq!(response.runs.len(), 1);
        assert_eq!(response.runs[0].journal[0].key, "greet");
        Ok(())
    }
}
