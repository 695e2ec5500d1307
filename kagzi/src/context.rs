//! The workflow context: what a running workflow uses to run durable steps.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kagzi_proto::{JournalEntry, RunId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::http::Http;
use crate::record::Deferred;
use crate::replay::{Plan, Replay};
use crate::retry::RetryPolicy;

tokio::task_local! {
    /// The context of the workflow whose future is being polled, set by the worker around
    /// each run; `#[step]` fns find their run through it.
    static CURRENT: WorkflowContext;
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
    /// The journal, and the steps this attempt asked for (see [`crate::replay`]).
    pub(crate) replay: Replay,
    /// Where step results are reported; `None` only in unit tests.
    pub(crate) http: Option<Http>,
    /// Notified once the run suspended (the server has let go of it): the worker then drops
    /// the workflow future.
    pub(crate) suspended: tokio::sync::Notify,
    /// Step reports that wait to be sent (see [`crate::record`]).
    pub(crate) deferred: Deferred,
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
        WorkflowContext {
            inner: Arc::new(Inner {
                run_id,
                workflow,
                attempt,
                lease_token,
                replay: Replay::new(journal),
                http,
                suspended: tokio::sync::Notify::new(),
                deferred: Deferred::default(),
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

    /// Whether this run takes the new code of a change guarded by patch `patch` — the way to
    /// change a workflow while runs of it are in flight (Temporal's `patched`, DBOS's
    /// `patch`):
    ///
    /// ```no_run
    /// # async fn example(ctx: kagzi::WorkflowContext) -> kagzi::Result<()> {
    /// let total: u64 = if ctx.patched("tax-on-shipping") {
    ///     ctx.run("total-with-tax", async { Ok(118) }).await?
    /// } else {
    ///     ctx.run("total", async { Ok(100) }).await?
    /// };
    /// # Ok(()) }
    /// ```
    ///
    /// A run that reaches this point under the new code answers `true`; a run whose journal
    /// already went past it under the old code answers `false`, and replays its old steps.
    /// The answer is recorded in the journal (as `patch:ID`), so every replay of the run
    /// answers the same, and asking again in the same run answers the same. Once no run
    /// needs the old branch ([`Client::patch_usage`](crate::Client::patch_usage), or
    /// `kagzi patch status WORKFLOW ID`), delete the old branch and the call. Step names
    /// must not begin with `patch:`.
    pub fn patched(&self, patch: &str) -> bool {
        let (answer, record) = self.inner.patch(patch);
        if let Some(record) = record {
            debug!(run_id = %self.inner.run_id, patch, answer, "patch answered");
            self.inner.defer_patch(record, answer);
        }
        answer
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

    use serde_json::{Value, json};

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
}
