//! Durable suspensions: sleeping, waiting for signals, and child runs.
//!
//! Each is journaled like a step, so a replay takes the same path: a sleep records its wake
//! time, a received signal records its payload, a started child records its run id. When a
//! run has to wait, the worker reports the suspension and lets go of the run (its slot is free
//! again); the server makes it due when the timer fires, the signal arrives or the child ends,
//! and the next worker replays up to that point and goes on.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kagzi_proto::{ReceiveBody, Received, StartRun, Started, SuspendBody};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::debug;

use crate::context::{Inner, WorkflowContext};
use crate::error::{Error, Result};
use crate::http::{Call, Retry, WORKER_RETRY_BUDGET};
use crate::replay::Plan;
use kagzi_proto::{Run, RunId, RunStatus};

impl WorkflowContext {
    /// Sleep durably for `duration`. The run suspends and frees the worker's slot; the server
    /// wakes it at the recorded wake time — across worker crashes and server restarts — and the
    /// replay goes on from here. `name` keys the sleep in the journal (as `sleep:NAME`).
    ///
    /// ```no_run
    /// # async fn example(ctx: kagzi::WorkflowContext) -> kagzi::Result<()> {
    /// ctx.sleep("cool-off", std::time::Duration::from_secs(24 * 3600)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the run was cancelled or reclaimed; transport errors.
    pub fn sleep(
        &self,
        name: &str,
        duration: Duration,
    ) -> impl Future<Output = Result<()>> + Send + use<> {
        let wake_at =
            Utc::now() + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX);
        self.sleep_until(name, wake_at)
    }

    /// Sleep durably until `wake_at` (UTC); see [`sleep`](Self::sleep).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] if the run was cancelled or reclaimed; transport errors.
    pub fn sleep_until(
        &self,
        name: &str,
        wake_at: DateTime<Utc>,
    ) -> impl Future<Output = Result<()>> + Send + use<> {
        let inner = Arc::clone(&self.inner);
        let timer = self.timer(&format!("sleep:{name}"), wake_at);
        async move {
            let wake_at = timer.await?;
            if Utc::now() >= wake_at {
                return Ok(());
            }
            if inner.http.is_none() {
                // Outside a worker (unit tests): an ordinary sleep.
                let left = (wake_at - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(left).await;
                return Ok(());
            }
            let never = inner
                .suspend(SuspendBody {
                    lease_token: inner.lease_token,
                    until: Some(wake_at),
                    signal: None,
                    child: None,
                })
                .await?;
            match never {}
        }
    }

    /// Wait durably for the next signal named `name` and return its payload. Signals sent
    /// before the run waits are kept, and received one at a time in the order they were sent.
    /// While no signal is there the run suspends (status `waiting`) and frees the worker's slot.
    /// Send one with `POST /v1/runs/{id}/signals/{name}` or [`Client::signal`](crate::Client::signal).
    ///
    /// # Errors
    /// [`Error::Serde`] if the payload is not a `T`; [`Error::LeaseLost`] if the run was
    /// cancelled or reclaimed; transport errors.
    pub fn wait_for_signal<T>(&self, name: &str) -> impl Future<Output = Result<T>> + Send + use<T>
    where
        T: DeserializeOwned + Send,
    {
        let received = self.receive(name, None);
        async move {
            match received.await? {
                Some(payload) => Ok(serde_json::from_value(payload)?),
                None => Err(Error::Config(
                    "a signal wait without a timeout timed out".to_owned(),
                )),
            }
        }
    }

    /// Like [`wait_for_signal`](Self::wait_for_signal), but gives up after `timeout`
    /// (measured from the first time the run reached this wait) and returns `None`.
    ///
    /// # Errors
    /// As for [`wait_for_signal`](Self::wait_for_signal).
    pub fn wait_for_signal_timeout<T>(
        &self,
        name: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<T>>> + Send + use<T>
    where
        T: DeserializeOwned + Send,
    {
        let deadline =
            Utc::now() + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let received = self.receive(name, Some(deadline));
        async move {
            match received.await? {
                Some(payload) => Ok(Some(serde_json::from_value(payload)?)),
                None => Ok(None),
            }
        }
    }

    /// Start a child run of `workflow` on `queue`, linked to this run as its parent, and
    /// return its id. Starting is idempotent per step key (`child:WORKFLOW`, `#2`, ...), so a
    /// replay never starts a second child. Cancelling this run cancels its children.
    ///
    /// # Errors
    /// [`Error::Serde`] if `input` does not serialize; [`Error::LeaseLost`]; transport errors.
    pub fn start_child<I>(
        &self,
        workflow: &str,
        queue: &str,
        input: I,
    ) -> impl Future<Output = Result<RunId>> + Send + use<I>
    where
        I: Serialize,
    {
        let inner = Arc::clone(&self.inner);
        let (key, position, plan) = inner.plan(&format!("child:{workflow}"));
        let input = serde_json::to_value(input);
        let (workflow, queue) = (workflow.to_owned(), queue.to_owned());
        async move {
            match plan {
                Plan::Replay(id) => Ok(serde_json::from_value(id)?),
                Plan::Reject(error) => Err(error),
                Plan::Execute => {
                    inner.mark_diverged();
                    let Some(http) = &inner.http else {
                        return Err(Error::Config("child runs need a worker".to_owned()));
                    };
                    inner.flush().await?;
                    let mut body = StartRun::new(workflow, queue, input?);
                    body.parent_id = Some(inner.run_id);
                    body.idempotency_key = Some(format!("{}/{key}", inner.run_id));
                    // The idempotency key makes a retried start safe.
                    let call = Call::post(http.url(&["v1", "runs"]), &body)?
                        .retry(Retry::Transient(WORKER_RETRY_BUDGET));
                    let started: Started = http.send(&call).await?;
                    debug!(run_id = %inner.run_id, child = %started.id, key, "child run started");
                    inner.record_success(key, position, started.id, 1).await
                }
            }
        }
    }

    /// Wait durably for the child run `child` to end and return its output. While it runs,
    /// this run suspends (status `waiting`) and frees the worker's slot.
    ///
    /// # Errors
    /// [`Error::RunFailed`] or [`Error::RunCancelled`] when the child did not complete;
    /// [`Error::Serde`] if its output is not an `O`; transport errors.
    pub fn wait_child<O>(&self, child: RunId) -> impl Future<Output = Result<O>> + Send + use<O>
    where
        O: DeserializeOwned + Send,
    {
        let inner = Arc::clone(&self.inner);
        async move {
            let Some(http) = &inner.http else {
                return Err(Error::Config("child runs need a worker".to_owned()));
            };
            let id = child.to_string();
            let call = Call::get(http.url(&["v1", "runs", &id]))
                .retry(Retry::Transient(WORKER_RETRY_BUDGET));
            let run: Run = http.send(&call).await?;
            match run.status {
                RunStatus::Completed => {
                    Ok(serde_json::from_value(run.output.unwrap_or(Value::Null))?)
                }
                RunStatus::Failed => Err(Error::RunFailed {
                    run_id: child,
                    message: run.error.unwrap_or_default(),
                }),
                RunStatus::Cancelled => Err(Error::RunCancelled { run_id: child }),
                _ => {
                    let never = inner
                        .suspend(SuspendBody {
                            lease_token: inner.lease_token,
                            until: None,
                            signal: None,
                            child: Some(child),
                        })
                        .await?;
                    match never {}
                }
            }
        }
    }

    /// Start a child run and wait for its output: [`start_child`](Self::start_child) then
    /// [`wait_child`](Self::wait_child). Children started together (`join_all`) run in
    /// parallel, and their keys are assigned in call order.
    ///
    /// ```no_run
    /// # async fn example(ctx: kagzi::WorkflowContext) -> kagzi::Result<()> {
    /// let pages = ["a", "b", "c"];
    /// let sizes: Vec<u64> = futures::future::try_join_all(
    ///     pages.iter().map(|page| ctx.child("fetch", "default", page)),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`start_child`](Self::start_child) and [`wait_child`](Self::wait_child).
    pub fn child<I, O>(
        &self,
        workflow: &str,
        queue: &str,
        input: I,
    ) -> impl Future<Output = Result<O>> + Send + use<I, O>
    where
        I: Serialize,
        O: DeserializeOwned + Send,
    {
        let started = self.start_child(workflow, queue, input);
        let ctx = self.clone();
        async move {
            let child = started.await?;
            ctx.wait_child(child).await
        }
    }

    /// A journaled point in time: recorded the first time, replayed after.
    fn timer(
        &self,
        name: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<DateTime<Utc>>> + Send + use<> {
        let inner = Arc::clone(&self.inner);
        let (key, position, plan) = inner.plan(name);
        async move {
            match plan {
                Plan::Replay(at) => Ok(serde_json::from_value(at)?),
                Plan::Reject(error) => Err(error),
                Plan::Execute => {
                    inner.mark_diverged();
                    inner.record_success(key, position, at, 1).await
                }
            }
        }
    }

    /// Receives the next signal `name`, suspending until one arrives or `deadline` passes
    /// (`None` then). The journal entry is `{"payload": ...}` or `{"timed_out": true}`.
    fn receive(
        &self,
        name: &str,
        deadline: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<Option<Value>>> + Send + use<> {
        let inner = Arc::clone(&self.inner);
        let timer = deadline.map(|at| self.timer(&format!("signal:{name}:deadline"), at));
        let (key, position, plan) = inner.plan(&format!("signal:{name}"));
        let name = name.to_owned();
        async move {
            let deadline = match timer {
                Some(timer) => Some(timer.await?),
                None => None,
            };
            let entry = match plan {
                Plan::Replay(entry) => entry,
                Plan::Reject(error) => return Err(error),
                Plan::Execute => {
                    inner.mark_diverged();
                    let Some(http) = &inner.http else {
                        return Err(Error::Config("signals need a worker".to_owned()));
                    };
                    inner.flush().await?;
                    let run = inner.run_id.to_string();
                    let body = ReceiveBody {
                        lease_token: inner.lease_token,
                        key: key.clone(),
                        position,
                    };
                    let call = Call::post(
                        http.url(&["v1", "runs", &run, "signals", &name, "receive"]),
                        &body,
                    )?
                    .retry(Retry::Transient(WORKER_RETRY_BUDGET))
                    .report(inner.run_id);
                    let received: Received = http.send(&call).await?;
                    match received.step {
                        Some(step) => step.output.unwrap_or(Value::Null),
                        None if deadline.is_some_and(|at| Utc::now() >= at) => {
                            inner
                                .record_success(key, position, json!({ "timed_out": true }), 1)
                                .await?
                        }
                        None => {
                            let suspension = SuspendBody {
                                lease_token: inner.lease_token,
                                until: deadline,
                                signal: Some(name),
                                child: None,
                            };
                            let never = inner.suspend(suspension).await?;
                            match never {}
                        }
                    }
                }
            };
            if entry.get("timed_out").and_then(Value::as_bool) == Some(true) {
                return Ok(None);
            }
            Ok(Some(entry.get("payload").cloned().unwrap_or(Value::Null)))
        }
    }
}

impl Inner {
    /// Reports the suspension, tells the worker to drop the run, and never returns (the
    /// worker drops this future); an error if the report fails.
    async fn suspend(&self, body: SuspendBody) -> Result<Infallible> {
        let Some(http) = &self.http else {
            return Err(Error::Config("suspending needs a worker".to_owned()));
        };
        self.flush().await?;
        let run = self.run_id.to_string();
        let call = Call::post(http.url(&["v1", "runs", &run, "suspend"]), &body)?
            .retry(Retry::Transient(WORKER_RETRY_BUDGET))
            .report(self.run_id);
        let run: Run = http.send(&call).await?;
        debug!(run_id = %self.run_id, status = %run.status.as_str(), "run suspended");
        self.suspended.notify_one();
        std::future::pending().await
    }
}
