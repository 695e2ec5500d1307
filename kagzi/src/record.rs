//! Recording: a step's result goes to the server before anything durable follows it. A
//! small result may wait ("deferred") while the workflow runs on synchronously, so that a
//! last step rides with the completion; it is sent as soon as the workflow awaits anything
//! else ([`Inner::drive`]), before the next step, sleep, signal wait or child start
//! ([`Inner::flush`]), or with the completion ([`Inner::take_for_completion`]). A report
//! that fails poisons the attempt: the run is then never completed.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use kagzi_proto::{CompletedStep, Step, StepBody, StepStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, warn};

use crate::context::Inner;
use crate::error::{Error, Result};
use crate::http::{Http, ReportKind};
use crate::replay::Poison;

/// Completed steps whose reports wait, and the lock that orders their sending.
#[derive(Default)]
pub(crate) struct Deferred {
    /// Completed steps whose reports wait for the workflow's next durable call, for it to
    /// stop running synchronously, or for its completion (which then carries them).
    steps: Mutex<Vec<CompletedStep>>,
    /// Held while deferred reports are being sent, so that whoever flushes next waits for
    /// them to be recorded.
    flushing: tokio::sync::Mutex<()>,
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

impl Inner {
    /// Poll the workflow future `body`, sending the deferred reports whenever it waits for
    /// anything (a report may wait while the workflow runs on synchronously, never longer).
    pub(crate) fn drive<F: Future>(self: &Arc<Self>, body: F) -> impl Future<Output = F::Output> {
        let inner = Arc::clone(self);
        let mut body = Box::pin(body);
        std::future::poll_fn(move |cx| {
            let polled = body.as_mut().poll(cx);
            if polled.is_pending() && inner.has_deferred() {
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    // A failure poisons the attempt, which its outcome reads.
                    let _ = inner.flush().await;
                });
            }
            polled
        })
    }

    /// Remember that the lease is lost, so every later step of this attempt is refused.
    fn note(&self, error: &Error) {
        if let Error::LeaseLost { .. } = error {
            self.lose_lease();
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
        let report = StepBody {
            lease_token: self.lease_token,
            key: key.clone(),
            position,
            status: StepStatus::Completed,
            output: Some(output),
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
    pub(crate) async fn record_failure(
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
        let report = StepBody {
            lease_token: self.lease_token,
            key: key.to_owned(),
            position,
            status: StepStatus::Failed,
            output: None,
            error: Some(message.to_owned()),
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
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(CompletedStep {
                key,
                position,
                output,
                attempts,
            });
        Ok(value)
    }

    /// Defer the report of a patch's answer like a small step's: it is recorded before
    /// anything durable follows, or with the completion.
    pub(crate) fn defer_patch(&self, patch: crate::replay::NewPatch, answer: bool) {
        if self.http.is_none() {
            return;
        }
        self.deferred
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(CompletedStep {
                key: patch.key,
                position: patch.position,
                output: Value::Bool(answer),
                attempts: 1,
            });
    }

    /// Send the deferred step reports and wait until they are recorded (or until reports
    /// already being sent are). A failure poisons the attempt: the run is not completed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let _flushing = self.deferred.flushing.lock().await;
        let pending = self.take_deferred_now();
        if pending.is_empty() {
            return self.poisoned_error().map_or(Ok(()), Err);
        }
        let Some(http) = &self.http else {
            return Ok(());
        };
        let reports: Vec<StepBody> = pending
            .into_iter()
            .map(|step| StepBody {
                lease_token: self.lease_token,
                key: step.key,
                position: step.position,
                status: StepStatus::Completed,
                output: Some(step.output),
                error: None,
                attempts: step.attempts,
            })
            .collect();
        let sent =
            futures::future::join_all(reports.iter().map(|report| self.report(http, report))).await;
        for (step, result) in reports.iter().zip(sent) {
            match result {
                Ok(_) => {}
                Err(Error::PayloadTooLarge { detail }) => {
                    let error = Error::StepResultTooLarge {
                        key: step.key.clone(),
                        detail: detail.clone(),
                    };
                    // Best effort: the journal says why; the run fails for good either way.
                    let failed = StepBody {
                        output: None,
                        status: StepStatus::Failed,
                        error: Some(error.to_string()),
                        ..step.clone()
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
        debug!(run_id = %self.run_id, reports = reports.len(), "deferred step reports recorded");
        self.poisoned_error().map_or(Ok(()), Err)
    }

    /// Whether reports are deferred now.
    pub(crate) fn has_deferred(&self) -> bool {
        !self
            .deferred
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Take the deferred reports for the completion to carry, once any flush in progress
    /// has finished; the returned guard keeps later flushes waiting until it is dropped.
    pub(crate) async fn take_for_completion(
        &self,
    ) -> (tokio::sync::MutexGuard<'_, ()>, Vec<CompletedStep>) {
        let guard = self.deferred.flushing.lock().await;
        (guard, self.take_deferred_now())
    }

    /// Put reports back to be sent by the next flush (a completion that carried them was
    /// refused without recording anything).
    pub(crate) fn requeue(&self, mut steps: Vec<CompletedStep>) {
        let mut deferred = self
            .deferred
            .steps
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        steps.append(&mut deferred);
        *deferred = steps;
    }

    fn take_deferred_now(&self) -> Vec<CompletedStep> {
        std::mem::take(
            &mut *self
                .deferred
                .steps
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    async fn report(&self, http: &Http, report: &StepBody) -> Result<Step> {
        http.report(self.run_id, ReportKind::Step, report).await
    }
}
