//! The client: starts workflow runs, inspects and cancels them, and waits for their results.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use kagzi_proto::{
    BulkOutcome, DEFAULT_QUEUE, ForkRun, PatchUsage, ResultQuery, RetryPolicy, Run, RunFilter,
    RunId, RunPage, RunStatus, StartRun as StartBody, Started, Step, StepList,
};
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use tokio::time::Instant;

use crate::batcher::{MAX_BATCHED_BYTES, Unbatched};
use crate::error::{Error, Result};
use crate::http::{ApiKey, Call, Http, Retry};
use crate::workflow::Workflow;

/// How many idle connections a client keeps open to its server.
const IDLE_CONNECTIONS: usize = 64;

/// How long one `GET /v1/runs/{id}/result` long-poll asks the server to wait.
const RESULT_POLL: Duration = Duration::from_secs(30);
/// Extra time the HTTP client allows a long-poll beyond its own timeout.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// How long client calls keep retrying while the server is unreachable.
const RETRY_BUDGET: Duration = Duration::from_secs(60);

/// A connection to a Kagzi server for starting and inspecting runs. Cheap to clone.
///
/// **API keys.** When the server has `KAGZI_API_KEY` set, every `/v1` request needs one of
/// its keys. The client sends the key given to [`ClientBuilder::api_key`] or
/// [`Client::connect_with_key`]; otherwise the one in the `KAGZI_API_KEY` environment
/// variable, if set. The key is sent as `Authorization: Bearer <key>` and never logged.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
}

/// Configures a [`Client`]; made by [`Client::builder`].
#[derive(Debug, Clone)]
#[must_use = "call `.connect().await` to make the client"]
pub struct ClientBuilder {
    url: String,
    api_key: ApiKey,
}

impl ClientBuilder {
    /// Send `key` as the API key (instead of `KAGZI_API_KEY`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = ApiKey::new(key);
        self
    }

    /// Connect to the server and check that it is up (`GET /healthz`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not `http(s)://`; [`Error::Http`] or
    /// [`Error::Api`] if the server cannot be reached or is not healthy.
    pub async fn connect(self) -> Result<Client> {
        // Idle connections are cheap; a client with many requests in flight that kept fewer
        // would open (and close) a connection for most of them.
        let http = Http::new(&self.url, IDLE_CONNECTIONS, self.api_key)?;
        http.send::<IgnoredAny>(
            &Call::get(http.url(&["healthz"])).timeout(Duration::from_secs(10)),
        )
        .await?;
        // Starts made at the same moment travel together in one request.
        Ok(Client {
            http: http.with_starter(RETRY_BUDGET),
        })
    }
}

impl Client {
    /// Start configuring a client for the server at `url` (e.g. `http://localhost:50051`).
    ///
    /// ```no_run
    /// # async fn example() -> kagzi::Result<()> {
    /// let client = kagzi::Client::builder("http://localhost:50051")
    ///     .api_key("my-key")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            api_key: ApiKey::from_env(),
        }
    }

    /// Connect to the server at `url` (e.g. `http://localhost:50051`) and check that it is
    /// up (`GET /healthz`). Sends the API key in `KAGZI_API_KEY`, if set.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not `http(s)://`; [`Error::Http`] or
    /// [`Error::Api`] if the server cannot be reached or is not healthy.
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        Client::builder(url).connect().await
    }

    /// Connect to the server at `url` with the API key `key`.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`]. A wrong key is only found out by the first `/v1` call, which
    /// fails with [`Error::Api`] status 401.
    pub async fn connect_with_key(
        url: impl Into<String>,
        key: impl Into<String>,
    ) -> Result<Client> {
        Client::builder(url).api_key(key).connect().await
    }

    /// Start building a run of workflow `name` on `queue` with `input`; `.await` it to start
    /// the run and get its id.
    ///
    /// ```no_run
    /// # async fn example(client: kagzi::Client) -> kagzi::Result<()> {
    /// let run_id = client
    ///     .workflow("process_payment", "default", serde_json::json!({"amount": 42}))
    ///     .retries(3)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn workflow(
        &self,
        name: impl Into<String>,
        queue: impl Into<String>,
        input: impl Serialize,
    ) -> StartWorkflow {
        let input = serde_json::to_value(input);
        let body = StartBody::new(name, queue, Value::Null);
        StartWorkflow {
            http: self.http.clone(),
            body,
            input,
        }
    }

    /// Send the signal `name` with `payload` to the run `id`. The run receives it with
    /// [`WorkflowContext::wait_for_signal`](crate::WorkflowContext::wait_for_signal); signals
    /// sent before it waits are kept, and received in the order they were sent.
    ///
    /// # Errors
    /// [`Error::Api`] with status 404 for an unknown run, 409 for a run that already ended,
    /// 413 for a payload over the limit; transport errors.
    pub async fn signal(&self, id: RunId, name: &str, payload: impl Serialize) -> Result<()> {
        let run = id.to_string();
        let url = self.http.url(&["v1", "runs", &run, "signals", name]);
        let call = Call::post(url, &payload)?.retry(Retry::Unsent(RETRY_BUDGET));
        self.http.send::<IgnoredAny>(&call).await?;
        Ok(())
    }

    /// Start building a run of the typed workflow `workflow` (a `#[workflow]` fn, or any
    /// [`Workflow`]); `.await` it to start the run and get a [`RunHandle`] whose
    /// [`result`](RunHandle::result) is the workflow's output type.
    ///
    /// The run goes to the workflow's default queue (`#[workflow(queue = "..")]`, else
    /// `"default"`) with its default retries, unless [`StartRun::queue`] or
    /// [`StartRun::retries`] say otherwise. The input must be the workflow's input type:
    /// anything else is a compile error here.
    ///
    /// ```no_run
    /// # use kagzi::{workflow, WorkflowContext};
    /// #[workflow]
    /// async fn greet(ctx: WorkflowContext, name: String) -> anyhow::Result<String> {
    ///     Ok(format!("Hello, {name}!"))
    /// }
    ///
    /// # async fn example(client: kagzi::Client) -> kagzi::Result<()> {
    /// let run = client.start(greet, "World".to_owned()).await?;
    /// let message: String = run.result().await?;
    /// # Ok(()) }
    /// ```
    pub fn start<W: Workflow>(&self, workflow: W, input: W::Input) -> StartRun<W::Output> {
        drop(workflow);
        StartRun {
            client: self.clone(),
            start: self
                .workflow(W::NAME, W::QUEUE.unwrap_or(DEFAULT_QUEUE), input)
                .retries(W::RETRIES),
            output: PhantomData,
        }
    }

    /// A typed handle on the existing run `id` of workflow `W`, e.g. one started earlier
    /// whose id was stored. Nothing is checked until the handle is used.
    pub fn handle<W: Workflow>(&self, id: RunId) -> RunHandle<W::Output> {
        RunHandle {
            client: self.clone(),
            id,
            output: PhantomData,
        }
    }

    /// The run `id` as it stands now.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 404 if there is no such run; transport errors.
    pub async fn run(&self, id: RunId) -> Result<Run> {
        let call = Call::get(self.run_url(id, None)).retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// The recorded steps of run `id`, in position order.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 404 if there is no such run; transport errors.
    pub async fn steps(&self, id: RunId) -> Result<Vec<Step>> {
        let call = Call::get(self.run_url(id, Some("steps"))).retry(Retry::Transient(RETRY_BUDGET));
        Ok(self.http.send::<StepList>(&call).await?.steps)
    }

    /// One page of runs matching `filter`, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] for an invalid filter or cursor; transport errors.
    pub async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        let url = self.http.url_with_query(&["v1", "runs"], &filter)?;
        let call = Call::get(url).retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Cancel run `id`. A running run is stopped by its worker at the next heartbeat.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 409 if the run has already ended, 404 if there is no such
    /// run; transport errors.
    pub async fn cancel(&self, id: RunId) -> Result<Run> {
        let call = Call::post(self.run_url(id, Some("cancel")), &serde_json::json!({}))?
            .retry(Retry::Unsent(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Retry run `id`, which failed or was cancelled: it goes back to `pending` as the same
    /// run, its finished steps kept (replayed, not run again), its retry policy counting
    /// again from now.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 409 for a run that has not ended or that completed (fork
    /// it instead), 404 if there is no such run; transport errors.
    pub async fn retry(&self, id: RunId) -> Result<Run> {
        let call = Call::post(self.run_url(id, Some("retry")), &serde_json::json!({}))?
            .retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Fork run `id`: a new run of its workflow whose journal starts as a copy of the
    /// original's steps before `fork.from_step` (none when it names no step), so that step
    /// and everything after it run again. The original is not changed.
    ///
    /// ```no_run
    /// # async fn example(client: kagzi::Client, run: kagzi::RunId) -> kagzi::Result<()> {
    /// use kagzi::proto::ForkRun;
    /// let fork = ForkRun { from_step: Some("charge".into()), ..ForkRun::default() };
    /// let forked = client.fork(run, &fork).await?;
    /// assert_eq!(forked.forked_from, Some(run));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 404 for an unknown run or a step its journal does not
    /// hold; transport errors.
    pub async fn fork(&self, id: RunId, fork: &ForkRun) -> Result<Run> {
        let call =
            Call::post(self.run_url(id, Some("fork")), fork)?.retry(Retry::Unsent(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Delete run `id`, which ended, with its steps and signals.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 409 for a run that has not ended (or has a child that has
    /// not), 404 if there is no such run; transport errors.
    pub async fn delete(&self, id: RunId) -> Result<()> {
        let call = Call::delete(self.run_url(id, None)).retry(Retry::Transient(RETRY_BUDGET));
        self.http.send::<Option<Value>>(&call).await?;
        Ok(())
    }

    /// Cancel up to `filter.limit` (default 100, at most 1000) runs that match `filter` and
    /// have not ended, newest first. The filter must name at least one field. Call again
    /// while the answer says `more`.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 422 for an empty or invalid filter; transport errors.
    pub async fn cancel_where(&self, filter: &RunFilter) -> Result<BulkOutcome> {
        let call = Call::post(self.http.url(&["v1", "runs", "cancel"]), filter)?
            .retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Retry up to `filter.limit` (default 100, at most 1000) failed or cancelled runs that
    /// match `filter`, newest first, as [`retry`](Self::retry) does. Call again while the
    /// answer says `more`.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] with status 422 for an empty or invalid filter; transport errors.
    pub async fn retry_where(&self, filter: &RunFilter) -> Result<BulkOutcome> {
        let call = Call::post(self.http.url(&["v1", "runs", "retry"]), filter)?
            .retry(Retry::Transient(RETRY_BUDGET));
        self.http.send(&call).await
    }

    /// Whether runs of `workflow` that have not ended may still take the old branch of
    /// [`WorkflowContext::patched`](crate::WorkflowContext::patched)`(patch)`: when
    /// `safe_to_remove`, the old branch can be deleted from the code.
    ///
    /// # Errors
    ///
    /// Transport errors.
    pub async fn patch_usage(&self, workflow: &str, patch: &str) -> Result<PatchUsage> {
        let url = self
            .http
            .url(&["v1", "workflows", workflow, "patches", patch]);
        self.http
            .send(&Call::get(url).retry(Retry::Transient(RETRY_BUDGET)))
            .await
    }

    /// Wait for run `id` to end and return its output, deserialized as `O`.
    ///
    /// Waits as long as it takes (long-polling the server), riding out short server outages.
    /// See [`wait`](Self::wait) to bound the wait.
    ///
    /// # Errors
    ///
    /// [`Error::RunFailed`] or [`Error::RunCancelled`] if the run did not complete;
    /// [`Error::Serde`] if the output is not an `O`; [`Error::Api`] with status 404 if there
    /// is no such run; transport errors.
    pub async fn result<O: DeserializeOwned>(&self, id: RunId) -> Result<O> {
        let run = loop {
            let run = self.result_poll(id, RESULT_POLL).await?;
            if run.status.is_terminal() {
                break run;
            }
        };
        match run.status {
            RunStatus::Completed => Ok(serde_json::from_value(run.output.unwrap_or(Value::Null))?),
            RunStatus::Cancelled => Err(Error::RunCancelled { run_id: id }),
            _ => Err(Error::RunFailed {
                run_id: id,
                message: run.error.unwrap_or_default(),
            }),
        }
    }

    /// Wait up to `timeout` for run `id` to end and return it, whether it completed, failed
    /// or was cancelled.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the run has not ended in time; [`Error::Api`] with status 404 if
    /// there is no such run; transport errors.
    pub async fn wait(&self, id: RunId, timeout: Duration) -> Result<Run> {
        let deadline = Instant::now() + timeout;
        let waiting = async {
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                let run = self.result_poll(id, remaining.min(RESULT_POLL)).await?;
                if run.status.is_terminal() {
                    return Ok(run);
                }
                if Instant::now() >= deadline {
                    return Err(Error::Timeout);
                }
            }
        };
        // Allow the last long-poll a moment to come back before giving up.
        tokio::time::timeout(timeout + Duration::from_secs(1), waiting)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// One `GET /v1/runs/{id}/result` long-poll of up to `wait`.
    async fn result_poll(&self, id: RunId, wait: Duration) -> Result<Run> {
        let mut url = self.run_url(id, Some("result"));
        let query = ResultQuery {
            timeout_ms: Some(millis(wait)),
        };
        url.set_query(Some(&crate::http::query_string(&query)?));
        let call = Call::get(url)
            .timeout(wait + POLL_SLACK)
            .retry(Retry::Transient(RETRY_BUDGET));
        let started = Instant::now();
        let run: Run = self.http.send(&call).await?;
        if !run.status.is_terminal()
            && wait > Duration::ZERO
            && started.elapsed() < Duration::from_millis(20)
        {
            // The server answered at once without waiting; don't spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(run)
    }

    /// The connection, for the other client modules ([`crate::schedule`]).
    pub(crate) fn http(&self) -> &Http {
        &self.http
    }

    fn run_url(&self, id: RunId, tail: Option<&str>) -> reqwest::Url {
        let id = id.to_string();
        match tail {
            Some(tail) => self.http.url(&["v1", "runs", &id, tail]),
            None => self.http.url(&["v1", "runs", &id]),
        }
    }
}

/// A run about to be started; made by [`Client::workflow`]. `.await` it to start the run.
#[derive(Debug)]
#[must_use = "the run is only started when this is awaited"]
pub struct StartWorkflow {
    http: Http,
    /// The start as sent; its input is filled in from `input` when it is sent.
    body: StartBody,
    input: serde_json::Result<Value>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl StartWorkflow {
    /// Retry the run up to `retries` times after a failed attempt (default 0), with the
    /// server's exponential backoff.
    pub fn retries(mut self, retries: u32) -> Self {
        self.body.retries = retries;
        self
    }

    /// Retry a failed run by `policy` (attempts, initial interval, backoff coefficient,
    /// maximum interval); failures whose message contains one of `non_retryable_errors` are
    /// not retried. Overrides [`retries`](Self::retries).
    pub fn retry_policy(
        mut self,
        policy: crate::RetryPolicy,
        non_retryable_errors: &[&str],
    ) -> Self {
        self.body.retry_policy = Some(RetryPolicy {
            max_attempts: policy.max_attempts.max(1),
            initial_interval_ms: millis(policy.initial_interval),
            backoff_coefficient: policy.backoff_coefficient,
            max_interval_ms: millis(policy.max_interval),
            non_retryable_errors: non_retryable_errors
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
        });
        self
    }

    /// Make the start idempotent: a start with a key that an earlier start used returns that
    /// run instead of creating one (an [`Error::Api`] 409 if its workflow or input differ),
    /// for the server's idempotency window (24 hours by default) after that run was created.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.body.idempotency_key = Some(key.into());
        self
    }

    /// Fail the run with a timeout error once `timeout` passed since the start, whatever it
    /// is doing (running, sleeping, waiting).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.body.timeout_ms = Some(millis(timeout));
        self
    }

    /// Start the run no earlier than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.body.delay_ms = millis(delay);
        self
    }

    async fn send(self) -> Result<RunId> {
        let mut body = self.body;
        body.input = self.input?;
        // With an idempotency key a repeated start is harmless, so any transient failure
        // may be retried; without one, only a start that surely never reached the server.
        let retry = if body.idempotency_key.is_some() {
            Retry::Transient(RETRY_BUDGET)
        } else {
            Retry::Unsent(RETRY_BUDGET)
        };
        let body = serde_json::to_vec(&body)?;
        if let Some(starter) = self.http.starter()
            && body.len() <= MAX_BATCHED_BYTES
        {
            match starter.send(body.clone(), None).await {
                Ok(started) => return Ok(serde_json::from_value::<Started>(started)?.id),
                // Refused whole, nothing started: on its own it gets its own answer.
                Err(Unbatched::SendAlone) => {}
                // A batch that failed as a whole may have reached the server; a keyed start
                // is harmless to repeat, and is sent again on its own.
                Err(Unbatched::Error(Error::BatchFailed(_)))
                    if matches!(retry, Retry::Transient(_)) => {}
                Err(Unbatched::Error(e)) => return Err(e),
            }
        }
        let call = Call::post_json(self.http.url(&["v1", "runs"]), body).retry(retry);
        Ok(self.http.send::<Started>(&call).await?.id)
    }
}

impl IntoFuture for StartWorkflow {
    type Output = Result<RunId>;
    type IntoFuture = BoxFuture<'static, Result<RunId>>;

    /// Start the run.
    fn into_future(self) -> Self::IntoFuture {
        self.send().boxed()
    }
}

/// A typed run about to be started; made by [`Client::start`]. `.await` it to start the run.
#[must_use = "the run is only started when this is awaited"]
pub struct StartRun<O> {
    client: Client,
    start: StartWorkflow,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for StartRun<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartRun")
            .field("workflow", &self.start.body.workflow)
            .field("queue", &self.start.body.queue)
            .field("retries", &self.start.body.retries)
            .finish_non_exhaustive()
    }
}

impl<O> StartRun<O> {
    /// Start the run on `queue` instead of the workflow's default queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.start.body.queue = queue.into();
        self
    }

    /// Retry the run up to `retries` times after a failed attempt, instead of the
    /// workflow's default.
    pub fn retries(mut self, retries: u32) -> Self {
        self.start = self.start.retries(retries);
        self
    }
}

impl<O: Send + 'static> IntoFuture for StartRun<O> {
    type Output = Result<RunHandle<O>>;
    type IntoFuture = BoxFuture<'static, Result<RunHandle<O>>>;

    /// Start the run.
    fn into_future(self) -> Self::IntoFuture {
        let StartRun { client, start, .. } = self;
        async move {
            let id = start.send().await?;
            Ok(RunHandle {
                client,
                id,
                output: PhantomData,
            })
        }
        .boxed()
    }
}

/// A started run of a typed workflow with output `O`; made by [`Client::start`] or
/// [`Client::handle`]. Cheap to clone.
pub struct RunHandle<O> {
    client: Client,
    id: RunId,
    output: PhantomData<fn() -> O>,
}

impl<O> Clone for RunHandle<O> {
    fn clone(&self) -> Self {
        RunHandle {
            client: self.client.clone(),
            id: self.id,
            output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for RunHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunHandle").field("id", &self.id).finish()
    }
}

impl<O: DeserializeOwned> RunHandle<O> {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.id
    }

    /// Wait for the run to end and return its output; see [`Client::result`].
    ///
    /// # Errors
    ///
    /// As [`Client::result`]: [`Error::RunFailed`] or [`Error::RunCancelled`] if the run did
    /// not complete, transport errors.
    pub async fn result(&self) -> Result<O> {
        self.client.result(self.id).await
    }

    /// The run as it stands now; see [`Client::run`].
    ///
    /// # Errors
    ///
    /// As [`Client::run`].
    pub async fn run(&self) -> Result<Run> {
        self.client.run(self.id).await
    }

    /// Cancel the run; see [`Client::cancel`].
    ///
    /// # Errors
    ///
    /// As [`Client::cancel`].
    pub async fn cancel(&self) -> Result<Run> {
        self.client.cancel(self.id).await
    }
}
