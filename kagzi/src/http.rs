//! The one place that sends HTTP requests to the Kagzi server: builds URLs, adds auth,
//! retries what is safe to retry, and turns error responses into [`Error`]s.

use std::fmt;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::batcher::{Batcher, MAX_BATCHED_BYTES, REPORTS, STARTS, Unbatched};
use crate::error::{Error, Result};
use kagzi_proto::RunId;

/// How long worker calls (polls, heartbeats, reports) keep retrying while the server is
/// unreachable, e.g. restarting.
pub(crate) const WORKER_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// First delay between retries; doubled on every retry up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Which failures a call retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Send once; every failure is returned.
    Never,
    /// Retry only failures where the server cannot have acted on the request (connection
    /// refused, 503), for calls that are not idempotent. Retries for at most the budget.
    Unsent(Duration),
    /// Retry transport errors and 429/502/503/504, for idempotent calls. Retries for at
    /// most the budget.
    Transient(Duration),
}

impl Retry {
    fn budget(self) -> Duration {
        match self {
            Retry::Never => Duration::ZERO,
            Retry::Unsent(budget) | Retry::Transient(budget) => budget,
        }
    }

    fn covers(self, error: &Error) -> bool {
        match (self, error) {
            (Retry::Never, _) => false,
            (Retry::Unsent(_), Error::Http(e)) => e.is_connect(),
            (Retry::Unsent(_), Error::Api { status, .. }) => matches!(status, 429 | 503),
            (Retry::Transient(_), Error::Http(e)) => !e.is_builder(),
            (Retry::Transient(_), Error::Api { status, .. }) => {
                matches!(status, 429 | 502 | 503 | 504)
            }
            _ => false,
        }
    }
}

/// What a report is about: names its field in a batch and its own endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportKind {
    /// A step's outcome (`POST /v1/runs/{id}/steps`).
    Step,
    /// A run's completion (`POST /v1/runs/{id}/complete`).
    Complete,
}

impl ReportKind {
    /// The last path segment of its own endpoint.
    fn path(self) -> &'static str {
        match self {
            ReportKind::Step => "steps",
            ReportKind::Complete => "complete",
        }
    }

    /// Its field in a batched report.
    fn field(self) -> &'static str {
        match self {
            ReportKind::Step => "step",
            ReportKind::Complete => "complete",
        }
    }
}

/// One request to send: method, URL, JSON body and how to treat failures.
#[derive(Debug)]
pub(crate) struct Call {
    method: Method,
    url: Url,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    retry: Retry,
    /// Set on lease-fenced reports: a 409 then means the lease on this run is lost.
    report: Option<RunId>,
}

impl Call {
    fn new(method: Method, url: Url) -> Self {
        Call {
            method,
            url,
            body: None,
            timeout: None,
            retry: Retry::Never,
            report: None,
        }
    }

    /// A `GET` request.
    pub(crate) fn get(url: Url) -> Self {
        Call::new(Method::GET, url)
    }

    /// A `DELETE` request.
    pub(crate) fn delete(url: Url) -> Self {
        Call::new(Method::DELETE, url)
    }

    /// A `POST` request with a JSON body.
    pub(crate) fn post(url: Url, body: &impl Serialize) -> Result<Self> {
        let mut call = Call::new(Method::POST, url);
        call.body = Some(serde_json::to_vec(body)?);
        Ok(call)
    }

    /// A `POST` request with a body that is already JSON.
    pub(crate) fn post_json(url: Url, body: Vec<u8>) -> Self {
        let mut call = Call::new(Method::POST, url);
        call.body = Some(body);
        call
    }

    /// A `PATCH` request with a JSON body.
    pub(crate) fn patch(url: Url, body: &impl Serialize) -> Result<Self> {
        let mut call = Call::new(Method::PATCH, url);
        call.body = Some(serde_json::to_vec(body)?);
        Ok(call)
    }

    /// Give up on one attempt after this long (for long-polls: their own timeout plus slack).
    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Which failures to retry.
    pub(crate) fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Mark the call as a lease-fenced report on `run_id`: 409 becomes [`Error::LeaseLost`].
    pub(crate) fn report(mut self, run_id: RunId) -> Self {
        self.report = Some(run_id);
        self
    }
}

/// An API key for the server. Never shown by `Debug`, never logged.
#[derive(Clone, Default)]
pub(crate) struct ApiKey(Option<String>);

impl ApiKey {
    /// `key`; an empty key means none.
    pub(crate) fn new(key: impl Into<String>) -> Self {
        let key = key.into();
        ApiKey((!key.trim().is_empty()).then(|| key.trim().to_owned()))
    }

    /// The key in `KAGZI_API_KEY`, if set and not empty.
    pub(crate) fn from_env() -> Self {
        std::env::var("KAGZI_API_KEY")
            .map(ApiKey::new)
            .unwrap_or_default()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(<redacted>)"),
            None => f.write_str("None"),
        }
    }
}

/// A connection pool to one Kagzi server.
#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: Url,
    api_key: ApiKey,
    /// Batches run reports, on a worker's `Http` (see [`Http::with_reporter`]).
    reporter: Option<Batcher>,
    /// Batches starts, on a client's `Http` (see [`Http::with_starter`]).
    starter: Option<Batcher>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base.as_str())
            .field("api_key", &self.api_key)
            .finish()
    }
}

impl Http {
    /// A client for the server at `url`, keeping up to `pool` idle connections warm, sending
    /// `api_key` (if any) as a bearer token on every request.
    pub(crate) fn new(url: &str, pool: usize, api_key: ApiKey) -> Result<Self> {
        let base =
            Url::parse(url).map_err(|e| Error::Config(format!("server url {url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "server url {url:?}: expected an http:// or https:// URL"
            )));
        }
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(pool.max(4))
            .build()?;
        Ok(Http {
            client,
            base,
            api_key,
            reporter: None,
            starter: None,
        })
    }

    /// This client, sending run reports ([`Http::report`]) in batches from now on. Starts
    /// the batching task, which ends once the returned client and its clones are dropped.
    pub(crate) fn with_reporter(&self) -> Http {
        let retry = Retry::Transient(WORKER_RETRY_BUDGET);
        Http {
            reporter: Some(Batcher::spawn(self.plain(), REPORTS, retry)),
            ..self.clone()
        }
    }

    /// This client, with a batcher for starts ([`Http::starter`]). Starts the batching
    /// task, which ends once the returned client and its clones are dropped. A batch is
    /// retried only when it surely never reached the server (a start without an
    /// idempotency key must not be made twice), for up to `budget`.
    pub(crate) fn with_starter(&self, budget: Duration) -> Http {
        Http {
            starter: Some(Batcher::spawn(self.plain(), STARTS, Retry::Unsent(budget))),
            ..self.clone()
        }
    }

    /// The batcher for starts, if this client batches them.
    pub(crate) fn starter(&self) -> Option<&Batcher> {
        self.starter.as_ref()
    }

    /// This client without batchers, for a batching task to send with.
    fn plain(&self) -> Http {
        Http {
            reporter: None,
            starter: None,
            ..self.clone()
        }
    }

    /// Sends a report on a run held under a lease: a step's outcome or a completion,
    /// `body` being what its own endpoint takes. Batched with other runs' reports when
    /// this client has a reporter and the report is small; retried while the server is
    /// unreachable, for up to [`WORKER_RETRY_BUDGET`]. A refused lease is
    /// [`Error::LeaseLost`].
    pub(crate) async fn report<T: DeserializeOwned>(
        &self,
        run_id: RunId,
        kind: ReportKind,
        body: &impl Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        if let Some(reporter) = &self.reporter
            && body.len() <= MAX_BATCHED_BYTES
        {
            // In the batch: `{"run_id":"..","step":{..}}`.
            let mut item = Vec::with_capacity(body.len() + 64);
            item.extend_from_slice(b"{\"run_id\":\"");
            item.extend_from_slice(run_id.to_string().as_bytes());
            item.extend_from_slice(b"\",\"");
            item.extend_from_slice(kind.field().as_bytes());
            item.extend_from_slice(b"\":");
            item.extend_from_slice(&body);
            item.push(b'}');
            match reporter.send(item, Some(run_id)).await {
                Ok(recorded) => return Ok(serde_json::from_value(recorded)?),
                // Refused whole, nothing written: on its own it gets its own answer.
                Err(Unbatched::SendAlone) => {}
                Err(Unbatched::Error(e)) => return Err(e),
            }
        }
        let run = run_id.to_string();
        let call = Call::post_json(self.url(&["v1", "runs", &run, kind.path()]), body)
            .retry(Retry::Transient(WORKER_RETRY_BUDGET))
            .report(run_id);
        self.send(&call).await
    }

    /// The URL of `segments` under the server's base URL; each segment is percent-encoded.
    pub(crate) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` checked that the base can be a base, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// The URL of `segments` with `query` (a protocol query type, e.g. a
    /// [`RunFilter`](kagzi_proto::RunFilter)) as its query string; none when it sets nothing.
    ///
    /// # Errors
    /// [`Error::Config`] when `query` is not a flat set of fields.
    pub(crate) fn url_with_query(&self, segments: &[&str], query: &impl Serialize) -> Result<Url> {
        let mut url = self.url(segments);
        let query = query_string(query)?;
        if !query.is_empty() {
            url.set_query(Some(&query));
        }
        Ok(url)
    }

    /// Send `call`, retrying as it says, and decode the 2xx JSON response (an empty body
    /// decodes as `null`).
    pub(crate) async fn send<T: DeserializeOwned>(&self, call: &Call) -> Result<T> {
        let started = Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1u32;
        loop {
            let error = match self.send_once(call).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let jitter = rand::random_range(0.5..=1.0);
            let pause = delay.mul_f64(jitter);
            if !call.retry.covers(&error) || started.elapsed() + pause > call.retry.budget() {
                return Err(error);
            }
            if attempt < 3 {
                debug!(%error, attempt, url = %call.url, "request failed; retrying");
            } else {
                warn!(%error, attempt, url = %call.url, "request failed; retrying");
            }
            tokio::time::sleep(pause).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            attempt += 1;
        }
    }

    async fn send_once<T: DeserializeOwned>(&self, call: &Call) -> Result<T> {
        let mut request = self.client.request(call.method.clone(), call.url.clone());
        if let Some(key) = &self.api_key.0 {
            let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {key}"))
                .map_err(|_| {
                    Error::Config("the API key has characters a header cannot carry".to_owned())
                })?;
            value.set_sensitive(true);
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status.is_success() {
            let body: &[u8] = if body.is_empty() { b"null" } else { &body };
            return Ok(serde_json::from_slice(body)?);
        }
        match problem(status, &body) {
            Error::Api {
                status,
                title,
                detail,
            } => Err(refusal(status, title, detail, call.report)),
            other => Err(other),
        }
    }
}

/// The error for a refused request (or a refused report in a batch): a lost lease for a
/// 409 on a report on `report`, [`Error::PayloadTooLarge`] for a 413, else [`Error::Api`].
pub(crate) fn refusal(status: u16, title: String, detail: String, report: Option<RunId>) -> Error {
    match (status, report) {
        (409, Some(run_id)) => Error::LeaseLost { run_id },
        (413, _) => Error::PayloadTooLarge { detail },
        _ => Error::Api {
            status,
            title,
            detail,
        },
    }
}

/// `query` (a protocol query type) as a URL query string.
///
/// # Errors
/// [`Error::Config`] when `query` is not a flat set of fields.
pub(crate) fn query_string(query: &impl Serialize) -> Result<String> {
    serde_urlencoded::to_string(query).map_err(|e| Error::Config(format!("query: {e}")))
}

/// Turn an error response into [`Error::Api`], reading its problem+json body if it has one.
fn problem(status: StatusCode, body: &[u8]) -> Error {
    let reason = status.canonical_reason().unwrap_or("error").to_owned();
    match serde_json::from_slice::<kagzi_proto::Problem>(body) {
        Ok(problem) => Error::Api {
            status: status.as_u16(),
            title: problem.title,
            detail: problem.detail,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            Error::Api {
                status: status.as_u16(),
                title: reason,
                detail: text.chars().take(500).collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_body_becomes_api_error() {
        let error = problem(
            StatusCode::NOT_FOUND,
            br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no run 42"}"#,
        );
        assert!(matches!(
            error,
            Error::Api { status: 404, ref title, ref detail } if title == "Not Found" && detail == "no run 42"
        ));
    }

    #[test]
    fn plain_error_body_falls_back_to_status_text() {
        let error = problem(StatusCode::BAD_GATEWAY, b"upstream down");
        assert!(matches!(
            error,
            Error::Api { status: 502, ref title, ref detail } if title == "Bad Gateway" && detail == "upstream down"
        ));
    }

    #[test]
    fn urls_are_joined_under_the_base_path() -> Result<()> {
        let http = Http::new("http://localhost:50051/", 1, ApiKey::default())?;
        assert_eq!(
            http.url(&["v1", "runs", "a b"]).as_str(),
            "http://localhost:50051/v1/runs/a%20b"
        );
        let http = Http::new("http://proxy/kagzi", 1, ApiKey::default())?;
        assert_eq!(
            http.url(&["healthz"]).as_str(),
            "http://proxy/kagzi/healthz"
        );
        assert!(Http::new("localhost:50051", 1, ApiKey::default()).is_err());
        Ok(())
    }

    #[test]
    fn the_api_key_never_shows_in_debug() -> Result<()> {
        let http = Http::new("http://localhost:50051", 1, ApiKey::new("s3cret"))?;
        let debug = format!("{http:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert!(ApiKey::new("  ").0.is_none());
        Ok(())
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let unavailable = Error::Api {
            status: 503,
            title: String::new(),
            detail: String::new(),
        };
        let bad_request = Error::Api {
            status: 400,
            title: String::new(),
            detail: String::new(),
        };
        let budget = Duration::from_secs(1);
        assert!(Retry::Transient(budget).covers(&unavailable));
        assert!(!Retry::Transient(budget).covers(&bad_request));
        assert!(Retry::Unsent(budget).covers(&unavailable));
        assert!(!Retry::Never.covers(&unavailable));
        assert!(!Retry::Transient(budget).covers(&Error::Timeout));
    }
}
