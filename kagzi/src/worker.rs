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
use kagzi_proto::{
    CompleteBody, FailBody, HeartbeatAnswer, HeartbeatBody, Lease, PollAnswer, PollBody,
    RegisterBody, Registered, Task, WorkerId,
};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, error, info, instrument, warn};
use uuid::Uuid;

use crate::context::WorkflowContext;
use crate::error::{Error, Result};
use crate::http::{ApiKey, Call, Http, ReportKind, Retry, WORKER_RETRY_BUDGET};
use crate::outcome::{
    self, AfterRefusal, DropReason, Ending, InvalidInput, InvalidOutput, Outcome,
};
use crate::workflow::Workflow;
use kagzi_proto::RunId;

/// How long one poll waits on the server for work.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time the HTTP client allows a long-poll beyond its own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// How long deregistering keeps retrying on shutdown.
const DEREGISTER_BUDGET: Duration = Duration::from_secs(5);

/// A type-erased workflow function: JSON input in, JSON output out.
type Handler =
    Arc<dyn Fn(WorkflowContext, Value) -> BoxFuture<'static, anyhow::Result<Value>> + Send + Sync>;

/// Configures a [`Worker`]; made by [`Worker::builder`].
#[derive(Debug, Clone)]
#[must_use = "call `.build().await` to make the worker"]
pub struct WorkerBuilder {
    url: String,
    queue: String,
    max_concurrent: usize,
    hostname: Option<String>,
    build_id: Option<String>,
    pinned: Vec<String>,
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

    /// The version of this worker's code (e.g. a git commit or release tag). The server
    /// records it on every run this worker runs first, and shows it on the worker.
    pub fn build_id(mut self, build_id: impl Into<String>) -> Self {
        self.build_id = Some(build_id.into());
        self
    }

    /// Pin the runs of `workflow` to this build: a run of it that a worker of this build id
    /// runs first is from then on claimed only by workers of the same build id, so old code
    /// finishes the runs it started while new runs go to new workers. Needs
    /// [`build_id`](Self::build_id); the workflow must be registered on the worker.
    pub fn pin(mut self, workflow: impl Into<String>) -> Self {
        self.pinned.push(workflow.into());
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
            build_id: self.build_id,
            pinned: self.pinned,
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
    build_id: Option<String>,
    pinned: Vec<String>,
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
            build_id: None,
            pinned: Vec::new(),
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
    /// [`Error::Config`] if no workflow is registered, or one pinned is not, or a pin has no
    /// build id; the registration error if the server
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
            build_id,
            pinned,
            shutdown_grace,
            handlers,
            stop,
        } = self;
        if handlers.is_empty() {
            return Err(Error::Config(
                "register at least one workflow before running the worker".to_owned(),
            ));
        }
        if let Some(stray) = pinned.iter().find(|p| !handlers.contains_key(p.as_str())) {
            return Err(Error::Config(format!(
                "pin({stray:?}): the workflow is not registered on this worker"
            )));
        }
        if !pinned.is_empty() && build_id.is_none() {
            return Err(Error::Config(
                "pin(..) needs build_id(..): a run is pinned to its worker's build".to_owned(),
            ));
        }
        let mut workflows: Vec<String> = handlers.keys().cloned().collect();
        workflows.sort();
        let http = http.with_reporter();
        let registration = RegisterBody {
            queue,
            workflows: workflows.into_iter().map(Into::into).collect(),
            capacity: u32::try_from(max_concurrent).unwrap_or(u32::MAX),
            hostname,
            build_id,
            pinned_workflows: pinned.into_iter().map(Into::into).collect(),
        };
        let registered = register(&http, &registration).await?;
        info!(worker_id = %registered.id, queue = %registration.queue, workflows = ?registration.workflows, "worker registered");
        let shared = Arc::new(Shared {
            http,
            registration,
            registered: tokio::sync::Mutex::new(registered),
            held: Mutex::new(HashMap::new()),
        });

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
        ..
    } = task;
    debug!("run started");
    let ctx = WorkflowContext::new(
        run_id,
        workflow,
        attempt,
        lease_token,
        journal,
        Some(shared.http.clone()),
    );
    let ending = run_attempt(&ctx, handler, input).await;
    if !matches!(ending, Ending::Returned(Ok(_)) | Ending::Suspended) {
        // A failing run reports its finished steps first (a failure here poisons).
        let _ = ctx.inner.flush().await;
    }
    let outcome = outcome::decide(ending, ctx.poisoned());
    report(shared, &ctx, outcome).await;
}

/// Runs the workflow function until it returns, panics or suspends.
async fn run_attempt(ctx: &WorkflowContext, handler: Option<Handler>, input: Value) -> Ending {
    let Some(handler) = handler else {
        return Ending::NotRegistered(ctx.workflow().to_owned());
    };
    // `#[step]` fns find the run through the task-local context; the workflow's future is
    // made inside the scope too, in case its fn runs steps before its first `.await`.
    let body = {
        let ctx = ctx.clone();
        ctx.clone().scope(async move { handler(ctx, input).await })
    };
    let body = ctx.inner.drive(AssertUnwindSafe(body).catch_unwind());
    tokio::select! {
        result = body => match result {
            Ok(returned) => Ending::Returned(returned),
            Err(panic) => Ending::Panicked(panic_message(panic.as_ref())),
        },
        // The server let go of a suspended run: its future is dropped here.
        () = ctx.inner.suspended.notified() => Ending::Suspended,
    }
}

/// What a panic said, if it said it as a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Reports `outcome`; when the server refuses the report, ends as the outcome's rules say
/// instead (at most a completion without its steps, then a failure, then a drop).
async fn report(shared: &Shared, ctx: &WorkflowContext, mut outcome: Outcome) {
    let run_id = ctx.run_id();
    let lease_token = ctx.inner.lease_token;
    loop {
        outcome = match outcome {
            Outcome::Drop(reason) => {
                match reason {
                    DropReason::Suspended => {
                        debug!("run suspended; the server wakes it when its wait is over")
                    }
                    DropReason::LeaseLost => info!("lease lost; dropping the run"),
                    DropReason::Unreported(error) => {
                        error!(%error, "dropping the run; its lease will expire and it will be retried")
                    }
                }
                return;
            }
            Outcome::Fail { error, retryable } => {
                let body = FailBody {
                    lease_token,
                    error,
                    retryable,
                };
                match send_fail(shared, run_id, &body).await {
                    Ok(_) => {
                        info!(error = %body.error, retryable, "run failed");
                        return;
                    }
                    Err(refusal) => outcome::after_refused_failure(&refusal),
                }
            }
            Outcome::Complete(output) => {
                // The completion carries the reports still deferred; later flushes wait.
                let (flushing, steps) = ctx.inner.take_for_completion().await;
                if let Some(poison) = ctx.poisoned() {
                    // A deferred report failed meanwhile: the run must not complete.
                    outcome::decide(Ending::Returned(Ok(output)), Some(poison))
                } else {
                    let body = CompleteBody {
                        lease_token,
                        output,
                        steps,
                    };
                    let sent = shared
                        .http
                        .report::<IgnoredAny>(run_id, ReportKind::Complete, &body)
                        .await;
                    let refusal = match sent {
                        Ok(_) => {
                            debug!("run completed");
                            return;
                        }
                        Err(refusal) => refusal,
                    };
                    let carried = !body.steps.is_empty();
                    match outcome::after_refused_completion(&refusal, carried) {
                        AfterRefusal::CompleteWithoutSteps => {
                            // Refused whole, nothing recorded: the steps go on their own.
                            ctx.inner.requeue(body.steps);
                            drop(flushing);
                            let _ = ctx.inner.flush().await;
                            Outcome::Complete(body.output)
                        }
                        AfterRefusal::Then(next) => next,
                    }
                }
            }
        };
    }
}

/// Sends `POST /v1/runs/{id}/fail`.
async fn send_fail(shared: &Shared, run_id: RunId, body: &FailBody) -> Result<IgnoredAny> {
    let run = run_id.to_string();
    let call = Call::post(shared.http.url(&["v1", "runs", &run, "fail"]), body)?
        .retry(Retry::Transient(WORKER_RETRY_BUDGET))
        .report(run_id);
    shared.http.send::<IgnoredAny>(&call).await
}

/// Keep the held leases alive, stop runs the server says are lost, and re-register if the
/// server forgot this worker.
async fn heartbeat_loop(shared: Arc<Shared>) {
    loop {
        let (id, interval) = {
            let registered = shared.registered.lock().await;
            (registered.id, heartbeat_interval(&registered))
        };
        tokio::time::sleep(interval).await;
        let runs = shared.held_runs();
        let url = shared
            .http
            .url(&["v1", "workers", &id.to_string(), "heartbeat"]);
        let body = HeartbeatBody { runs };
        let response = match Call::post(url, &body) {
            Ok(call) => {
                let call = call.retry(Retry::Transient(WORKER_RETRY_BUDGET));
                shared.http.send::<HeartbeatAnswer>(&call).await
            }
            Err(e) => Err(e),
        };
        match response {
            Ok(response) => {
                let sent: HashMap<RunId, Uuid> = body
                    .runs
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

/// Registers the worker as `body` describes it.
async fn register(http: &Http, body: &RegisterBody) -> Result<Registered> {
    let call = Call::post(http.url(&["v1", "workers"]), body)?
        .retry(Retry::Transient(WORKER_RETRY_BUDGET));
    http.send(&call).await
}

/// What the poll loop, the heartbeat and the run tasks share.
struct Shared {
    http: Http,
    /// What the worker registers as (again, when the server forgot it).
    registration: RegisterBody,
    /// The server's answer to the latest registration.
    registered: tokio::sync::Mutex<Registered>,
    /// Runs being executed, with their lease and a way to stop them.
    held: Mutex<HashMap<RunId, Held>>,
}

struct Held {
    lease_token: Uuid,
    abort: AbortHandle,
}

impl Shared {
    /// Register again because the server no longer knows worker `stale`; returns the
    /// current id (somebody else may have re-registered already).
    async fn reregister(&self, stale: WorkerId) -> Result<WorkerId> {
        let mut registered = self.registered.lock().await;
        if registered.id != stale {
            return Ok(registered.id);
        }
        let fresh = register(&self.http, &self.registration).await?;
        info!(old = %stale, new = %fresh.id, "server forgot this worker; re-registered");
        *registered = fresh;
        Ok(registered.id)
    }

    async fn worker_id(&self) -> WorkerId {
        self.registered.lock().await.id
    }

    async fn poll(&self, max: usize) -> Result<Vec<Task>> {
        let id = self.worker_id().await;
        let url = self.http.url(&["v1", "workers", &id.to_string(), "poll"]);
        let body = PollBody {
            max: u32::try_from(max).unwrap_or(u32::MAX),
            timeout_ms: u64::try_from(POLL_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        };
        let call = Call::post(url, &body)?
            .timeout(POLL_TIMEOUT + POLL_SLACK)
            .retry(Retry::Transient(WORKER_RETRY_BUDGET));
        match self.http.send::<PollAnswer>(&call).await {
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
    fn held_runs(&self) -> Vec<Lease> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(run_id, held)| Lease {
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

/// How often to heartbeat, as the registration says (a floor keeps a misconfigured server
/// from being flooded).
fn heartbeat_interval(registration: &Registered) -> Duration {
    match registration.heartbeat_interval_ms {
        0 => Duration::from_secs(5),
        ms => Duration::from_millis(ms.max(100)),
    }
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
        let response: PollAnswer = serde_json::from_str(
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
