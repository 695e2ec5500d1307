//! The workflow context: what a running workflow uses to run durable steps.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::http::{Http, ReportKind};
use crate::types::{RunId, Step, StepStatus};

tokio::task_local! {
    /// The context of the workflow whose future is being polled, set by the worker around
    /// each run; `#[step]` fns find their run through it.
    static CURRENT: WorkflowContext;
}

/// A recorded step result, as the poll hands it to the worker.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JournalEntry {
    pub(crate) key: String,
    pub(crate) position: u32,
    #[serde(default)]
    pub(crate) output: Value,
}

/// The handle a workflow function gets to run durable steps.
///
/// Cheap to clone; every method takes `&self`, so steps can run in parallel
/// (`futures::join!(ctx.run("a", ..), ctx.run("b", ..))`).
#[derive(Clone)]
pub struct WorkflowContext {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) run_id: RunId,
    workflow: String,
    attempt: u32,
    pub(crate) lease_token: Uuid,
    /// Recorded outputs by step key.
    journal: HashMap<String, Value>,
    /// Recorded step keys by position, to catch non-deterministic replays.
    recorded_keys: HashMap<u32, String>,
    steps: Mutex<StepCounter>,
    /// Where step results are reported; `None` only in unit tests.
    pub(crate) http: Option<Http>,
    /// Notified once the run suspended (the server has let go of it): the worker then drops
    /// the workflow future.
    pub(crate) suspended: tokio::sync::Notify,
    /// Completed steps whose reports wait for the workflow's next durable call, for it to
    /// stop running synchronously, or for its completion (which then carries them).
    deferred: Mutex<Vec<DeferredStep>>,
    /// Held while deferred reports are being sent, so that whoever flushes next waits for
    /// them to be recorded.
    flushing: tokio::sync::Mutex<()>,
}

/// A completed step whose report is deferred; see [`Inner::defer_success`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeferredStep {
    key: String,
    position: u32,
    output: Value,
    attempts: u32,
}

/// The length of `value` as JSON, counted without building the text.
fn json_len(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The largest step result whose report may be deferred; larger ones are reported at once
/// (so that a result over the server's payload limit fails the step, not the completion).
const MAX_DEFERRED_BYTES: usize = 16 * 1024;

/// Assigns step keys and positions in call order.
#[derive(Default)]
struct StepCounter {
    occurrences: HashMap<String, u32>,
    next_position: u32,
    /// Set once any step has really executed in this attempt: from then on the run may
    /// legitimately diverge from the journal (a step that failed before may succeed now).
    diverged: bool,
    /// Set when this attempt must not go on: every later step is refused, and the worker
    /// ends the run accordingly even if the workflow swallowed the step's error.
    poison: Option<Poison>,
}

/// Why an attempt cannot go on.
#[derive(Debug, Clone)]
enum Poison {
    /// Replay found a different step than the journal recorded.
    NonDeterminism {
        position: u32,
        recorded: String,
        requested: String,
    },
    /// The server refused a report: this worker no longer holds the run.
    LeaseLost,
    /// A deferred step result is over the server's payload limit.
    ResultTooLarge { key: String, detail: String },
    /// A deferred step report could not be delivered.
    Unreported(String),
}

impl Poison {
    fn to_error(&self, run_id: RunId) -> Error {
        match self {
            Poison::NonDeterminism {
                position,
                recorded,
                requested,
            } => Error::NonDeterminism {
                position: *position,
                recorded: recorded.clone(),
                requested: requested.clone(),
            },
            Poison::LeaseLost => Error::LeaseLost { run_id },
            Poison::ResultTooLarge { key, detail } => Error::StepResultTooLarge {
                key: key.clone(),
                detail: detail.clone(),
            },
            Poison::Unreported(message) => Error::Unreported(message.clone()),
        }
    }
}

/// How a step ended without a value; see [`WorkflowContext::start_step`].
pub(crate) enum StepFailure<E> {
    /// The step's own code failed on its last attempt (the failure was reported).
    Body {
        /// The step key.
        key: String,
        /// The last attempt's error.
        error: E,
    },
    /// Kagzi could not run or record the step (non-determinism, lost lease, timeout, ...).
    Kagzi(Error),
}

/// How one attempt of a step failed.
enum AttemptError<E> {
    Body(E),
    TimedOut(Duration),
}

/// What to do for one step call, decided synchronously when the step is called.
pub(crate) enum Plan {
    /// The journal has the result: return it without running the step.
    Replay(Value),
    /// Run the step and report its result.
    Execute,
    /// The journal disagrees with the code.
    Reject(Error),
}

impl fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("run_id", &self.inner.run_id)
            .field("workflow", &self.inner.workflow)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl WorkflowContext {
    pub(crate) fn new(
        run_id: RunId,
        workflow: String,
        attempt: u32,
        lease_token: Uuid,
        journal: Vec<JournalEntry>,
        http: Option<Http>,
    ) -> Self {
        let mut outputs = HashMap::with_capacity(journal.len());
        let mut recorded_keys = HashMap::with_capacity(journal.len());
        for entry in journal {
            recorded_keys.insert(entry.position, entry.key.clone());
            outputs.insert(entry.key, entry.output);
        }
        WorkflowContext {
            inner: Arc::new(Inner {
                run_id,
                workflow,
                attempt,
                lease_token,
                journal: outputs,
                recorded_keys,
                steps: Mutex::new(StepCounter::default()),
                http,
                suspended: tokio::sync::Notify::new(),
                deferred: Mutex::new(Vec::new()),
                flushing: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The id of the run being executed.
    pub fn run_id(&self) -> RunId {
        self.inner.run_id
    }

    /// Which attempt of the run this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The name of the workflow being executed.
    pub fn workflow(&self) -> &str {
        &self.inner.workflow
    }

    /// Run `fut` as a durable step named `name`, once (no step-level retries; see
    /// [`step`](Self::step) for those).
    ///
    /// The step key is `name` for the first step of that name in the run, then `name#2`,
    /// `name#3`, ...; keys and positions are assigned when `run` is *called*, so parallel
    /// steps get them in call order. If the run's journal already holds a result for the key
    /// (the run is being replayed after a crash or retry), that result is returned and `fut`
    /// is dropped without being polled. Otherwise `fut` runs and its result is recorded on the
    /// server before anything durable follows: before the next step starts, before a sleep,
    /// signal wait or child start, as soon as the workflow awaits anything else, and at the
    /// latest with the run's completion (a last step followed only by `return` rides with
    /// the completion, saving a round trip). A small result is returned at once; under the
    /// run's lease no other report for the key can win. A result over 16 KiB is recorded
    /// before `run` returns.
    ///
    /// **Guarantee:** the step's side effects run *at least once* — a crash after the side
    /// effect but before the report re-runs it on the next attempt, so make them idempotent —
    /// and its recorded result is used *exactly once*: every replay sees the same value.
    ///
    /// # Errors
    ///
    /// [`Error::StepFailed`] if `fut` returns an error (the failure is reported to the
    /// server); [`Error::LeaseLost`] if the run was cancelled or reclaimed;
    /// [`Error::NonDeterminism`] if the journal recorded a different step at this position;
    /// [`Error::Serde`] if the value cannot be (de)serialized; transport errors if the
    /// result cannot be reported.
    pub fn run<T, Fut>(
        &self,
        name: &str,
        fut: Fut,
    ) -> impl Future<Output = Result<T>> + Send + use<T, Fut>
    where
        Fut: Future<Output = anyhow::Result<T>> + Send,
        T: Serialize + DeserializeOwned + Send,
    {
        let mut fut = Some(fut);
        let step = self.start_step(name, RetryPolicy::once(), None, move || fut.take());
        async move { step.await.map_err(StepFailure::into_error) }
    }

    /// Start building a step named `name` with options, e.g. a retry policy:
    ///
    /// ```no_run
    /// # async fn example(ctx: kagzi::WorkflowContext) -> kagzi::Result<()> {
    /// use kagzi::RetryPolicy;
    /// let charged: u64 = ctx
    ///     .step("charge")
    ///     .retry(RetryPolicy::default())
    ///     .run(|| async { Ok(42) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn step(&self, name: &str) -> StepBuilder {
        StepBuilder {
            ctx: self.clone(),
            name: name.to_owned(),
            policy: RetryPolicy::once(),
            timeout: None,
        }
    }

    /// The context of the workflow run being executed by the current task, if any.
    ///
    /// The worker sets it while it polls a workflow; this is how a `#[step]` fn knows that
    /// it was called inside a run (and which one). `None` outside a workflow.
    pub fn current() -> Option<WorkflowContext> {
        CURRENT.try_with(WorkflowContext::clone).ok()
    }

    /// Poll `fut` with `self` as the [current](Self::current) context.
    pub(crate) fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }

    /// Why this attempt must end the way it does regardless of what the workflow returned:
    /// a non-determinism was found, or the lease was lost.
    pub(crate) fn poisoned(&self) -> Option<Error> {
        self.inner.poisoned_error()
    }

    /// Assign the step called `name` its key and position now, and return the future that
    /// replays it from the journal or runs it: `attempt` makes the future of one attempt
    /// (`None` once it cannot make another), each attempt bounded by `timeout`, retried as
    /// `policy` allows. Shared by [`run`](Self::run), [`StepBuilder::run`] and `#[step]`.
    pub(crate) fn start_step<T, E, F, Fut>(
        &self,
        name: &str,
        policy: RetryPolicy,
        timeout: Option<Duration>,
        mut attempt: F,
    ) -> impl Future<Output = std::result::Result<T, StepFailure<E>>> + Send + use<T, E, F, Fut>
    where
        F: FnMut() -> Option<Fut> + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
        T: Serialize + DeserializeOwned + Send,
        E: fmt::Display + Send,
    {
        let inner = Arc::clone(&self.inner);
        let (key, position, plan) = inner.plan(name);
        async move {
            match plan {
                Plan::Replay(output) => {
                    debug!(run_id = %inner.run_id, key, "step replayed from the journal");
                    serde_json::from_value(output).map_err(|e| StepFailure::Kagzi(e.into()))
                }
                Plan::Reject(error) => Err(StepFailure::Kagzi(error)),
                Plan::Execute => {
                    inner.mark_diverged();
                    // Every earlier step is recorded before this one's side effects start.
                    inner.flush().await.map_err(StepFailure::Kagzi)?;
                    let max_attempts = policy.max_attempts.max(1);
                    let mut attempts = 0;
                    let mut last = None;
                    while attempts < max_attempts {
                        let Some(fut) = attempt() else { break };
                        attempts += 1;
                        let outcome = match timeout {
                            Some(limit) => match tokio::time::timeout(limit, fut).await {
                                Ok(result) => result.map_err(AttemptError::Body),
                                Err(_) => Err(AttemptError::TimedOut(limit)),
                            },
                            None => fut.await.map_err(AttemptError::Body),
                        };
                        match outcome {
                            Ok(value) => {
                                return inner
                                    .defer_success(key, position, value, attempts)
                                    .await
                                    .map_err(StepFailure::Kagzi);
                            }
                            Err(error) => {
                                if attempts < max_attempts {
                                    let delay = policy.delay(attempts);
                                    debug!(run_id = %inner.run_id, key, attempt = attempts, ?delay, error = %error, "step attempt failed; retrying");
                                    tokio::time::sleep(delay).await;
                                }
                                last = Some(error);
                            }
                        }
                    }
                    let Some(error) = last else {
                        return Err(StepFailure::Kagzi(Error::Config(format!(
                            "step {key} could not make an attempt"
                        ))));
                    };
                    let message = error.to_string();
                    debug!(run_id = %inner.run_id, key, attempts, error = %message, "step failed");
                    inner
                        .record_failure(&key, position, &message, attempts)
                        .await
                        .map_err(StepFailure::Kagzi)?;
                    Err(match error {
                        AttemptError::Body(error) => StepFailure::Body { key, error },
                        AttemptError::TimedOut(timeout) => {
                            StepFailure::Kagzi(Error::StepTimedOut { key, timeout })
                        }
                    })
                }
            }
        }
    }
}

impl<E: fmt::Display> fmt::Display for AttemptError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Body(error) => write!(f, "{error:#}"),
            AttemptError::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
        }
    }
}

impl StepFailure<anyhow::Error> {
    /// The SDK error for a step run through [`WorkflowContext::run`] or [`StepBuilder`].
    fn into_error(self) -> Error {
        match self {
            StepFailure::Body { key, error } => Error::StepFailed {
                key,
                message: format!("{error:#}"),
            },
            StepFailure::Kagzi(error) => error,
        }
    }
}

impl Inner {
    /// Assign the next key and position for a step called `name` and decide what to do.
    pub(crate) fn plan(&self, name: &str) -> (String, u32, Plan) {
        let mut steps = self.steps.lock().unwrap_or_else(PoisonError::into_inner);
        let occurrence = steps.occurrences.entry(name.to_owned()).or_insert(0);
        *occurrence += 1;
        let key = if *occurrence == 1 {
            name.to_owned()
        } else {
            format!("{name}#{occurrence}")
        };
        let position = steps.next_position;
        steps.next_position += 1;

        let recorded = self.recorded_keys.get(&position);
        let plan = if let Some(poison) = &steps.poison {
            Plan::Reject(poison.to_error(self.run_id))
        } else if let Some(recorded) = recorded.filter(|r| !steps.diverged && **r != key) {
            // Before anything has executed in this attempt, the code must ask for the steps
            // in the order the journal recorded them — whether or not this key is recorded.
            let poison = Poison::NonDeterminism {
                position,
                recorded: recorded.clone(),
                requested: key.clone(),
            };
            let error = poison.to_error(self.run_id);
            warn!(run_id = %self.run_id, %error, "replay diverged from the journal");
            steps.poison = Some(poison);
            Plan::Reject(error)
        } else if let Some(output) = self.journal.get(&key) {
            Plan::Replay(output.clone())
        } else {
            Plan::Execute
        };
        (key, position, plan)
    }

    pub(crate) fn mark_diverged(&self) {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .diverged = true;
    }

    /// Remember that the lease is lost, so every later step of this attempt is refused.
    fn note(&self, error: &Error) {
        if let Error::LeaseLost { .. } = error {
            self.steps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .poison = Some(Poison::LeaseLost);
        }
    }

    /// Record a step's value and return the value to continue with (the recorded one, if
    /// another report for this key won).
    pub(crate) async fn record_success<T>(
        &self,
        key: String,
        position: u32,
        value: T,
        attempts: u32,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        let output = serde_json::to_value(&value)?;
        if self.http.is_none() {
            return Ok(value);
        }
        let recorded = self.record_output(key, position, output, attempts).await?;
        Ok(serde_json::from_value(recorded)?)
    }

    /// Report a step's serialized result and return the recorded one.
    async fn record_output(
        &self,
        key: String,
        position: u32,
        output: Value,
        attempts: u32,
    ) -> Result<Value> {
        let Some(http) = &self.http else {
            return Ok(output);
        };
        self.flush().await?;
        let report = StepReport {
            lease_token: self.lease_token,
            key: &key,
            position,
            status: StepStatus::Completed,
            output: Some(&output),
            error: None,
            attempts,
        };
        let recorded = match self.report(http, &report).await {
            Ok(recorded) => recorded,
            Err(Error::PayloadTooLarge { detail }) => {
                // Retrying cannot shrink the result: the step fails for good, and its
                // journal entry says why.
                let error = Error::StepResultTooLarge {
                    key: key.clone(),
                    detail,
                };
                self.record_failure(&key, position, &error.to_string(), attempts)
                    .await?;
                warn!(run_id = %self.run_id, key, "step result over the server's payload limit");
                return Err(error);
            }
            Err(e) => {
                self.note(&e);
                return Err(e);
            }
        };
        debug!(run_id = %self.run_id, key, attempts, "step completed");
        Ok(recorded.output.unwrap_or(Value::Null))
    }

    /// Record that a step failed; only a lost lease is an error here (a failure that cannot
    /// be recorded is logged: the step runs again on the next attempt anyway).
    async fn record_failure(
        &self,
        key: &str,
        position: u32,
        message: &str,
        attempts: u32,
    ) -> Result<()> {
        let Some(http) = &self.http else {
            return Ok(());
        };
        self.flush().await?;
        let report = StepReport {
            lease_token: self.lease_token,
            key,
            position,
            status: StepStatus::Failed,
            output: None,
            error: Some(message),
            attempts,
        };
        match self.report(http, &report).await {
            Ok(_) => Ok(()),
            Err(lost @ Error::LeaseLost { .. }) => {
                self.note(&lost);
                Err(lost)
            }
            Err(e) => {
                warn!(run_id = %self.run_id, key, error = %e, "could not record step failure");
                Ok(())
            }
        }
    }

    /// Record a step's value like [`record_success`](Self::record_success), but let the
    /// report wait (a small value only) until the workflow's next durable call, until the
    /// workflow stops running synchronously, or until it completes: the completion then
    /// carries it, and a workflow whose last step is followed only by `return` saves a round
    /// trip. The value is returned at once: under a held lease no other report for this key
    /// can win.
    pub(crate) async fn defer_success<T>(
        &self,
        key: String,
        position: u32,
        value: T,
        attempts: u32,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
    {
        if self.http.is_none() {
            return Ok(value);
        }
        let output = serde_json::to_value(&value)?;
        if json_len(&output) > MAX_DEFERRED_BYTES {
            let recorded = self.record_output(key, position, output, attempts).await?;
            return Ok(serde_json::from_value(recorded)?);
        }
        debug!(run_id = %self.run_id, key, attempts, "step completed; its report is deferred");
        self.deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(DeferredStep {
                key,
                position,
                output,
                attempts,
            });
        Ok(value)
    }

    /// Send the deferred step reports and wait until they are recorded (or until reports
    /// already being sent are). A failure poisons the attempt: the run is not completed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let _flushing = self.flushing.lock().await;
        let pending = self.take_deferred_now();
        if pending.is_empty() {
            return self.poisoned_error().map_or(Ok(()), Err);
        }
        let Some(http) = &self.http else {
            return Ok(());
        };
        let sent = futures::future::join_all(pending.iter().map(|step| {
            let report = StepReport {
                lease_token: self.lease_token,
                key: &step.key,
                position: step.position,
                status: StepStatus::Completed,
                output: Some(&step.output),
                error: None,
                attempts: step.attempts,
            };
            async move { self.report(http, &report).await }
        }))
        .await;
        for (step, result) in pending.iter().zip(sent) {
            match result {
                Ok(_) => {}
                Err(Error::PayloadTooLarge { detail }) => {
                    let error = Error::StepResultTooLarge {
                        key: step.key.clone(),
                        detail: detail.clone(),
                    };
                    // Best effort: the journal says why; the run fails for good either way.
                    let failed = StepReport {
                        lease_token: self.lease_token,
                        key: &step.key,
                        position: step.position,
                        status: StepStatus::Failed,
                        output: None,
                        error: Some(&error.to_string()),
                        attempts: step.attempts,
                    };
                    let _ = self.report(http, &failed).await;
                    self.poison(Poison::ResultTooLarge {
                        key: step.key.clone(),
                        detail,
                    });
                }
                Err(lost @ Error::LeaseLost { .. }) => self.note(&lost),
                Err(e) => self.poison(Poison::Unreported(format!(
                    "the result of step {} could not be recorded: {e}",
                    step.key
                ))),
            }
        }
        debug!(run_id = %self.run_id, reports = pending.len(), "deferred step reports recorded");
        self.poisoned_error().map_or(Ok(()), Err)
    }

    /// Whether reports are deferred now.
    pub(crate) fn has_deferred(&self) -> bool {
        !self
            .deferred
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Take the deferred reports for the completion to carry, once any flush in progress
    /// has finished; the returned guard keeps later flushes waiting until it is dropped.
    pub(crate) async fn take_for_completion(
        &self,
    ) -> (tokio::sync::MutexGuard<'_, ()>, Vec<DeferredStep>) {
        let guard = self.flushing.lock().await;
        (guard, self.take_deferred_now())
    }

    /// Put reports back to be sent by the next flush (a completion that carried them was
    /// refused without recording anything).
    pub(crate) fn requeue(&self, mut steps: Vec<DeferredStep>) {
        let mut deferred = self.deferred.lock().unwrap_or_else(PoisonError::into_inner);
        steps.append(&mut deferred);
        *deferred = steps;
    }

    fn take_deferred_now(&self) -> Vec<DeferredStep> {
        std::mem::take(&mut *self.deferred.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn poison(&self, poison: Poison) {
        let mut steps = self.steps.lock().unwrap_or_else(PoisonError::into_inner);
        if steps.poison.is_none() {
            steps.poison = Some(poison);
        }
    }

    fn poisoned_error(&self) -> Option<Error> {
        self.steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poison
            .as_ref()
            .map(|poison| poison.to_error(self.run_id))
    }

    async fn report(&self, http: &Http, report: &StepReport<'_>) -> Result<Step> {
        http.report(self.run_id, ReportKind::Step, report).await
    }
}

/// Body of `POST /v1/runs/{id}/steps`.
#[derive(Serialize)]
struct StepReport<'a> {
    lease_token: Uuid,
    key: &'a str,
    position: u32,
    status: StepStatus,
    output: Option<&'a Value>,
    error: Option<&'a str>,
    attempts: u32,
}

/// How often, and how patiently, a step is retried inside one run attempt.
///
/// The delay before retry `n` (1-based) is `initial_interval * backoff_coefficient^(n-1)`,
/// capped at `max_interval`, then scaled by a random factor in `[0.5, 1.0]` (jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (0 is treated as 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_interval: Duration,
    /// Factor the delay grows by on each retry.
    pub backoff_coefficient: f64,
    /// Upper bound on the delay between attempts.
    pub max_interval: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms first delay, doubling, at most 10 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries: the default for a step.
    pub fn once() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay, before jitter, after failed attempt `attempt` (1-based).
    fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }

    /// The delay, with jitter, to wait after failed attempt `attempt` (1-based).
    fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter)
            .unwrap_or(base)
            .min(base)
    }
}

/// A step being configured; see [`WorkflowContext::step`].
#[derive(Debug)]
#[must_use = "a step does nothing until `.run(..)` is called and awaited"]
pub struct StepBuilder {
    ctx: WorkflowContext,
    name: String,
    policy: RetryPolicy,
    timeout: Option<Duration>,
}

impl StepBuilder {
    /// Retry the step inside this run attempt according to `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Give each attempt at most `timeout`; an attempt that takes longer is dropped and
    /// counts as failed (the retry policy decides whether another follows). If the last
    /// attempt times out, the step fails with [`Error::StepTimedOut`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run the step: call `f` and await the future it returns, calling it again after a
    /// failure while the retry policy allows. Same key assignment, replay and guarantee as
    /// [`WorkflowContext::run`]; the recorded result carries the number of attempts.
    ///
    /// # Errors
    ///
    /// As [`WorkflowContext::run`]; [`Error::StepFailed`] carries the last attempt's error,
    /// [`Error::StepTimedOut`] says the last attempt ran out of time.
    pub fn run<T, F, Fut>(self, mut f: F) -> impl Future<Output = Result<T>> + Send + use<T, F, Fut>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = anyhow::Result<T>> + Send,
        T: Serialize + DeserializeOwned + Send,
    {
        let step = self
            .ctx
            .start_step(&self.name, self.policy, self.timeout, move || Some(f()));
        async move { step.await.map_err(StepFailure::into_error) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;

    use super::*;

    fn context(journal: Vec<JournalEntry>) -> WorkflowContext {
        WorkflowContext::new(
            RunId(Uuid::now_v7()),
            "test".to_owned(),
            1,
            Uuid::new_v4(),
            journal,
            None,
        )
    }

    fn entry(key: &str, position: u32, output: Value) -> JournalEntry {
        JournalEntry {
            key: key.to_owned(),
            position,
            output,
        }
    }

    #[test]
    fn keys_count_occurrences_and_positions_follow_call_order() {
        let ctx = context(Vec::new());
        let keys: Vec<_> = ["a", "a", "b", "a", "b"]
            .into_iter()
            .map(|name| {
                let (key, position, _) = ctx.inner.plan(name);
                (key, position)
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("a".to_owned(), 0),
                ("a#2".to_owned(), 1),
                ("b".to_owned(), 2),
                ("a#3".to_owned(), 3),
                ("b#2".to_owned(), 4),
            ]
        );
    }

    #[tokio::test]
    async fn parallel_steps_get_keys_in_call_order() -> Result<()> {
        // The journal holds the second "a" only; the first runs, the second replays.
        let ctx = context(vec![entry("a#2", 1, json!(20))]);
        let (first, second) = futures::join!(
            ctx.run("a", async { Ok(1u32) }),
            ctx.run("a", async { Ok(2u32) })
        );
        assert_eq!((first?, second?), (1, 20));
        Ok(())
    }

    #[tokio::test]
    async fn journal_hit_returns_recorded_value_without_polling() -> Result<()> {
        let ctx = context(vec![entry("greet", 0, json!("recorded"))]);
        let polled = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&polled);
        let value: String = ctx
            .run("greet", async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok("fresh".to_owned())
            })
            .await?;
        assert_eq!(value, "recorded");
        assert_eq!(polled.load(Ordering::SeqCst), 0);

        let counter = Arc::clone(&polled);
        let value: String = ctx
            .step("greet")
            .retry(RetryPolicy::default())
            .run(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok("fresh".to_owned()) }
            })
            .await?;
        assert_eq!(value, "fresh", "greet#2 is not in the journal, so it runs");
        assert_eq!(polled.load(Ordering::SeqCst), 1);
        Ok(())
    }

    #[tokio::test]
    async fn failed_step_reports_step_failed_with_causes() {
        let ctx = context(Vec::new());
        let result: Result<u32> = ctx
            .run("charge", async {
                Err(anyhow::anyhow!("card declined").context("charging"))
            })
            .await;
        match result {
            Err(Error::StepFailed { key, message }) => {
                assert_eq!(key, "charge");
                assert_eq!(message, "charging: card declined");
            }
            other => panic!("expected StepFailed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn step_retries_until_success() -> Result<()> {
        let ctx = context(Vec::new());
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let value: u32 = ctx
            .step("flaky")
            .retry(RetryPolicy {
                initial_interval: Duration::from_millis(1),
                ..RetryPolicy::default()
            })
            .run(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n < 3 {
                        anyhow::bail!("attempt {n} failed")
                    }
                    Ok(n)
                }
            })
            .await?;
        assert_eq!(value, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        Ok(())
    }

    #[tokio::test]
    async fn replay_that_asks_for_a_different_step_is_rejected() {
        let ctx = context(vec![entry("charge", 0, json!(1))]);
        let result: Result<u32> = ctx.run("refund", async { Ok(2) }).await;
        assert!(matches!(
            result,
            Err(Error::NonDeterminism { position: 0, ref recorded, ref requested })
                if recorded == "charge" && requested == "refund"
        ));
    }

    #[test]
    fn retry_delays_grow_and_stay_within_bounds() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.base_delay(1), Duration::from_millis(100));
        assert_eq!(policy.base_delay(2), Duration::from_millis(200));
        assert_eq!(policy.base_delay(5), Duration::from_millis(1600));
        assert_eq!(policy.base_delay(30), Duration::from_secs(10));
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(10));
        for attempt in 1..40 {
            let base = policy.base_delay(attempt);
            let delay = policy.delay(attempt);
            assert!(
                delay <= base && delay + Duration::from_micros(1) >= base / 2,
                "{delay:?} vs {base:?}"
            );
            assert!(delay <= policy.max_interval);
        }
        let odd = RetryPolicy {
            backoff_coefficient: f64::NAN,
            ..RetryPolicy::default()
        };
        assert_eq!(odd.base_delay(2), odd.max_interval);
    }
}
