//! What `#[step]` fns expand to: find the running workflow, if any, and run the step through
//! its journal; outside a workflow, just run the fn.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures::FutureExt;
use futures::future::Either;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::{StepFailure, WorkflowContext};
use crate::error::Error;
use crate::retry::RetryPolicy;

/// The options of a `#[step]` fn, built by the generated code.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct StepOptions {
    name: &'static str,
    policy: RetryPolicy,
    timeout: Option<Duration>,
}

impl StepOptions {
    /// A step named `name`: one attempt, no timeout.
    pub fn new(name: &'static str) -> Self {
        StepOptions {
            name,
            policy: RetryPolicy::once(),
            timeout: None,
        }
    }

    /// Attempts in total, including the first.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Delay before the first retry, in milliseconds.
    pub fn backoff_ms(mut self, ms: u64) -> Self {
        self.policy.initial_interval = Duration::from_millis(ms);
        self
    }

    /// Upper bound on the delay between attempts, in milliseconds.
    pub fn max_backoff_ms(mut self, ms: u64) -> Self {
        self.policy.max_interval = Duration::from_millis(ms);
        self
    }

    /// Time allowed for each attempt, in milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout = Some(Duration::from_millis(ms));
        self
    }
}

/// What a `#[step]` fn may return: `Result<T, E>` where `T` goes through serde (it is
/// journaled) and `E` can carry Kagzi's own errors (non-determinism, lost lease, timeout).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a #[step] fn must return `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<kagzi::Error> + Display`; `{Self}` is not",
    label = "this is the step's return type",
    note = "`anyhow::Result<T>` and `kagzi::Result<T>` both work; a custom error needs a `From<kagzi::Error>` conversion"
)]
pub trait StepOutcome: Sized + Send {
    /// The step's value.
    type Ok: Serialize + DeserializeOwned + Send;
    /// The step's error.
    type Err: From<Error> + fmt::Display + Send;
    /// Split into a `Result`.
    ///
    /// # Errors
    ///
    /// The step's error.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
    /// Rebuild from a `Result`.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> StepOutcome for Result<T, E>
where
    T: Serialize + DeserializeOwned + Send,
    E: From<Error> + fmt::Display + Send,
{
    type Ok = T;
    type Err = E;

    fn into_result(self) -> Self {
        self
    }

    fn from_result(result: Self) -> Self {
        result
    }
}

/// Run one call of a `#[step]` fn. `attempt` makes the future of one attempt (`None` once it
/// cannot make another: the fn's arguments were moved into the first attempt).
///
/// Inside a workflow the step key and position are taken now, at the call, so steps joined
/// in parallel get them in call order; the returned future replays the step from the journal
/// or runs and records it. Outside a workflow it simply runs the fn once.
#[doc(hidden)]
pub fn step<R, F, Fut>(
    options: StepOptions,
    mut attempt: F,
) -> impl Future<Output = R> + Send + use<R, F, Fut>
where
    R: StepOutcome,
    F: FnMut() -> Option<Fut> + Send,
    Fut: Future<Output = R> + Send,
{
    match WorkflowContext::current() {
        None => Either::Left(async move {
            match attempt() {
                Some(fut) => fut.await,
                None => R::from_result(Err(Error::Config(format!(
                    "step {} could not make an attempt",
                    options.name
                ))
                .into())),
            }
        }),
        Some(ctx) => {
            let step = ctx.start_step(options.name, options.policy, options.timeout, move || {
                attempt().map(|fut| fut.map(R::into_result))
            });
            Either::Right(async move {
                R::from_result(step.await.map_err(|failure| match failure {
                    StepFailure::Body { error, .. } => error,
                    StepFailure::Kagzi(error) => error.into(),
                }))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use serde_json::{Value, json};
    use uuid::Uuid;

    use crate::context::WorkflowContext;
    use crate::error::Error;
    use kagzi_proto::JournalEntry;
    use kagzi_proto::RunId;

    static DOUBLED: AtomicU32 = AtomicU32::new(0);

    /// Doubles `n`, counting its executions.
    #[crate::step]
    async fn double(n: u32) -> anyhow::Result<u32> {
        DOUBLED.fetch_add(1, Ordering::SeqCst);
        Ok(n * 2)
    }

    /// Borrows its arguments and sleeps `ms` first.
    #[crate::step(name = "shout")]
    async fn loud(text: &str, ms: u64) -> crate::Result<String> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(text.to_uppercase())
    }

    static FLAKY: AtomicU32 = AtomicU32::new(0);

    /// Fails twice, then succeeds.
    #[crate::step(attempts = 3, backoff = "1ms")]
    async fn flaky(label: String) -> anyhow::Result<String> {
        let n = FLAKY.fetch_add(1, Ordering::SeqCst) + 1;
        anyhow::ensure!(n >= 3, "attempt {n} failed");
        Ok(format!("{label} after {n}"))
    }

    /// Never finishes in time.
    #[crate::step(timeout = "20ms", attempts = 2, backoff = "1ms")]
    async fn stuck() -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    }

    fn context(journal: &[(&str, u32, Value)]) -> WorkflowContext {
        let journal = journal
            .iter()
            .map(|(key, position, output)| JournalEntry {
                key: (*key).to_owned(),
                position: *position,
                output: output.clone(),
            })
            .collect();
        WorkflowContext::new(
            RunId(Uuid::now_v7()),
            "test".to_owned(),
            1,
            Uuid::new_v4(),
            journal,
            None,
        )
    }

    #[tokio::test]
    async fn a_step_called_outside_a_workflow_simply_runs() -> anyhow::Result<()> {
        assert!(WorkflowContext::current().is_none());
        let before = DOUBLED.load(Ordering::SeqCst);
        assert_eq!(double(21).await?, 42);
        assert_eq!(double(21).await?, 42, "no journal: it runs every time");
        assert_eq!(DOUBLED.load(Ordering::SeqCst), before + 2);
        let text = String::from("hi");
        assert_eq!(loud(&text, 0).await?, "HI");
        Ok(())
    }

    #[tokio::test]
    async fn a_step_inside_a_workflow_replays_its_journal_and_keys_follow_call_order()
    -> anyhow::Result<()> {
        // The journal holds the second `shout` only: the first runs, the second replays.
        let ctx = context(&[("shout#2", 1, json!("RECORDED"))]);
        let (first, second) = ctx
            .clone()
            .scope(async {
                // The first call sleeps longer, so it finishes last; keys follow the calls.
                futures::join!(loud("a", 30), loud("b", 0))
            })
            .await;
        assert_eq!((first?, second?), ("A".to_owned(), "RECORDED".to_owned()));
        Ok(())
    }

    #[tokio::test]
    async fn a_replay_that_asks_for_another_step_fails_and_poisons_the_attempt() {
        let ctx = context(&[("double", 0, json!(2))]);
        let (first, second) = ctx
            .clone()
            .scope(async { (loud("x", 0).await, double(1).await) })
            .await;
        let first = first.expect_err("a different step was recorded at position 0");
        assert!(
            matches!(&first, Error::NonDeterminism { position: 0, recorded, requested }
                if recorded == "double" && requested == "shout"),
            "{first:?}"
        );
        let second = second.expect_err("every later step is refused");
        assert!(second.is::<Error>(), "{second:?}");
        assert!(matches!(ctx.poisoned(), Some(Error::NonDeterminism { .. })));
    }

    #[tokio::test]
    async fn a_step_with_attempts_retries_with_fresh_copies_of_its_arguments() -> anyhow::Result<()>
    {
        let ctx = context(&[]);
        // The step must be *called* inside the scope: that is when it finds the run.
        let value = ctx
            .clone()
            .scope(async { flaky("done".to_owned()).await })
            .await?;
        assert_eq!(value, "done after 3");
        Ok(())
    }

    #[tokio::test]
    async fn each_attempt_is_bounded_by_the_timeout() {
        let ctx = context(&[]);
        let error = ctx
            .clone()
            .scope(async { stuck().await })
            .await
            .expect_err("both attempts time out");
        assert!(
            matches!(error.downcast_ref::<Error>(), Some(Error::StepTimedOut { key, timeout })
                if key == "stuck" && *timeout == Duration::from_millis(20)),
            "{error:?}"
        );
    }
}
