//! The one place that talks to the server: each route of the HTTP API as a method taking and
//! returning the protocol types of `kagzi-proto`, and every error answer as its problem
//! document.

use std::time::Duration;

use kagzi_proto::{
    CreateSchedule, ForkRun, Health, PatchUsage, Problem, QueueList, ResultQuery, Run, RunCounts,
    RunFilter, RunId, RunPage, Schedule, ScheduleFilter, SchedulePage, ScheduleRunsQuery,
    SignalList, SignalSent, StartRun, Started, StepList, Triggered, UpdateSchedule, WorkerFilter,
    WorkerPage,
};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait one `GET /v1/runs/{id}/result` asks for (the server's own limit).
pub(crate) const MAX_RESULT_WAIT: Duration = Duration::from_secs(60);
/// Extra time a long-poll is given beyond the wait it asked for.
const POLL_SLACK: Duration = Duration::from_secs(10);

/// A client of one Kagzi server.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    /// `Bearer <key>`, marked sensitive so it is never logged.
    authorization: Option<HeaderValue>,
}

impl Client {
    /// A client of the server at `url`, sending `api_key` (if any) on every request.
    ///
    /// # Errors
    /// [`Error::Usage`] for a URL that is not `http(s)://` or a key a header cannot carry.
    pub(crate) fn new(url: &str, api_key: Option<&str>) -> Result<Self> {
        let base = Url::parse(url)
            .map_err(|e| Error::Usage(format!("--server {url:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Usage(format!(
                "--server {url:?}: expected an http:// or https:// URL"
            )));
        }
        let authorization = api_key
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    Error::Usage("the API key has characters a header cannot carry".to_owned())
                })?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            authorization,
        })
    }

    /// The server's base URL.
    pub(crate) fn base(&self) -> &Url {
        &self.base
    }

    // ---- runs ----

    /// `POST /v1/runs`: starts a run.
    pub(crate) async fn start_run(&self, start: &StartRun) -> Result<Started> {
        self.send(self.request(Method::POST, &["v1", "runs"]).json(start))
            .await
    }

    /// `GET /v1/runs`: one page of runs.
    pub(crate) async fn runs(&self, filter: &RunFilter) -> Result<RunPage> {
        self.send(self.query(&["v1", "runs"], filter)?).await
    }

    /// `GET /v1/runs/counts`: how many runs are in each status.
    pub(crate) async fn run_counts(&self, filter: &RunFilter) -> Result<RunCounts> {
        self.send(self.query(&["v1", "runs", "counts"], filter)?)
            .await
    }

    /// `GET /v1/runs/{id}`.
    pub(crate) async fn run(&self, id: RunId) -> Result<Run> {
        let id = id.to_string();
        self.send(self.request(Method::GET, &["v1", "runs", &id]))
            .await
    }

    /// `GET /v1/runs/{id}/steps`: the run's journal.
    pub(crate) async fn steps(&self, id: RunId) -> Result<StepList> {
        let id = id.to_string();
        self.send(self.request(Method::GET, &["v1", "runs", &id, "steps"]))
            .await
    }

    /// `GET /v1/runs/{id}/result`: the run once it ended, or as it stands after `wait`
    /// (at most [`MAX_RESULT_WAIT`]).
    pub(crate) async fn wait(&self, id: RunId, wait: Duration) -> Result<Run> {
        let wait = wait.min(MAX_RESULT_WAIT);
        let query = ResultQuery {
            timeout_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        };
        let id = id.to_string();
        let request = self
            .query(&["v1", "runs", &id, "result"], &query)?
            .timeout(wait + POLL_SLACK);
        self.send(request).await
    }

    /// `POST /v1/runs/{id}/cancel`.
    pub(crate) async fn cancel(&self, id: RunId) -> Result<Run> {
        let id = id.to_string();
        self.send(self.request(Method::POST, &["v1", "runs", &id, "cancel"]))
            .await
    }

    /// `POST /v1/runs/{id}/retry`: the failed or cancelled run, pending again.
    pub(crate) async fn retry(&self, id: RunId) -> Result<Run> {
        let id = id.to_string();
        self.send(self.request(Method::POST, &["v1", "runs", &id, "retry"]))
            .await
    }

    /// `POST /v1/runs/{id}/fork`: the new run.
    pub(crate) async fn fork(&self, id: RunId, fork: &ForkRun) -> Result<Run> {
        let id = id.to_string();
        self.send(
            self.request(Method::POST, &["v1", "runs", &id, "fork"])
                .json(fork),
        )
        .await
    }

    /// `DELETE /v1/runs/{id}`.
    pub(crate) async fn delete_run(&self, id: RunId) -> Result<()> {
        let id = id.to_string();
        self.send::<Option<Value>>(self.request(Method::DELETE, &["v1", "runs", &id]))
            .await?;
        Ok(())
    }

    /// `GET /v1/workflows/{workflow}/patches/{patch}`: whether a patch can be retired.
    pub(crate) async fn patch_usage(&self, workflow: &str, patch: &str) -> Result<PatchUsage> {
        self.send(self.request(
            Method::GET,
            &["v1", "workflows", workflow, "patches", patch],
        ))
        .await
    }

    /// `POST /v1/runs/{id}/signals/{name}` with `payload`.
    pub(crate) async fn signal(
        &self,
        id: RunId,
        name: &str,
        payload: &Value,
    ) -> Result<SignalSent> {
        let id = id.to_string();
        let request = self
            .request(Method::POST, &["v1", "runs", &id, "signals", name])
            .json(payload);
        self.send(request).await
    }

    /// `GET /v1/runs/{id}/signals`: the signals sent to the run.
    pub(crate) async fn signals(&self, id: RunId) -> Result<SignalList> {
        let id = id.to_string();
        self.send(self.request(Method::GET, &["v1", "runs", &id, "signals"]))
            .await
    }

    // ---- schedules ----

    /// `POST /v1/schedules`.
    pub(crate) async fn create_schedule(&self, create: &CreateSchedule) -> Result<Schedule> {
        self.send(
            self.request(Method::POST, &["v1", "schedules"])
                .json(create),
        )
        .await
    }

    /// `GET /v1/schedules`: one page of schedules.
    pub(crate) async fn schedules(&self, filter: &ScheduleFilter) -> Result<SchedulePage> {
        self.send(self.query(&["v1", "schedules"], filter)?).await
    }

    /// `GET /v1/schedules/{id}` (an id or a name).
    pub(crate) async fn schedule(&self, key: &str) -> Result<Schedule> {
        self.send(self.request(Method::GET, &["v1", "schedules", key]))
            .await
    }

    /// `PATCH /v1/schedules/{id}`.
    pub(crate) async fn update_schedule(
        &self,
        key: &str,
        update: &UpdateSchedule,
    ) -> Result<Schedule> {
        let request = self
            .request(Method::PATCH, &["v1", "schedules", key])
            .json(update);
        self.send(request).await
    }

    /// `DELETE /v1/schedules/{id}`.
    pub(crate) async fn delete_schedule(&self, key: &str) -> Result<()> {
        let _: Value = self
            .send(self.request(Method::DELETE, &["v1", "schedules", key]))
            .await?;
        Ok(())
    }

    /// `POST /v1/schedules/{id}/pause` or `/resume`.
    pub(crate) async fn pause_schedule(&self, key: &str, pause: bool) -> Result<Schedule> {
        let action = if pause { "pause" } else { "resume" };
        self.send(self.request(Method::POST, &["v1", "schedules", key, action]))
            .await
    }

    /// `POST /v1/schedules/{id}/trigger`: starts one run now.
    pub(crate) async fn trigger_schedule(&self, key: &str) -> Result<Triggered> {
        self.send(self.request(Method::POST, &["v1", "schedules", key, "trigger"]))
            .await
    }

    /// `GET /v1/schedules/{id}/runs`: one page of the runs the schedule started.
    pub(crate) async fn schedule_runs(
        &self,
        key: &str,
        query: &ScheduleRunsQuery,
    ) -> Result<RunPage> {
        self.send(self.query(&["v1", "schedules", key, "runs"], query)?)
            .await
    }

    // ---- workers, queues, health ----

    /// `GET /v1/workers`: one page of workers.
    pub(crate) async fn workers(&self, filter: &WorkerFilter) -> Result<WorkerPage> {
        self.send(self.query(&["v1", "workers"], filter)?).await
    }

    /// `GET /v1/queues`.
    pub(crate) async fn queues(&self) -> Result<QueueList> {
        self.send(self.request(Method::GET, &["v1", "queues"]))
            .await
    }

    /// `GET /healthz`, or `GET /readyz` (the database is reachable too) when `ready`.
    pub(crate) async fn health(&self, ready: bool) -> Result<Health> {
        let path = if ready { "readyz" } else { "healthz" };
        self.send(self.request(Method::GET, &[path])).await
    }

    // ---- transport ----

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `new` checked that the base can be a base, so this always succeeds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A request to `url`, with the API key.
    fn request_to(&self, method: Method, url: Url) -> RequestBuilder {
        let mut request = self.http.request(method, url).timeout(REQUEST_TIMEOUT);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
    }

    /// A request to `segments` under the base URL.
    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.request_to(method, self.url(segments))
    }

    /// A `GET` of `segments` with `query` (a protocol query type) as its query string.
    fn query(&self, segments: &[&str], query: &impl Serialize) -> Result<RequestBuilder> {
        let query = serde_urlencoded::to_string(query)
            .map_err(|e| Error::Usage(format!("cannot build the query: {e}")))?;
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.set_query(Some(&query));
        }
        Ok(self.request_to(Method::GET, url))
    }

    /// Sends `request` and decodes a 2xx answer (an empty body reads as `null`); any other
    /// answer becomes [`Error::Api`] with its problem document.
    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let (client, request) = request.build_split();
        let request =
            request.map_err(|e| Error::Usage(format!("cannot build the request: {e}")))?;
        let what = format!("{} {}", request.method(), request.url().path());
        let response = client
            .execute(request)
            .await
            .map_err(|e| self.transport(&what, e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport(&what, e))?;
        if !status.is_success() {
            return Err(Error::Api(problem(status, &body)));
        }
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| Error::Answer {
            what,
            reason: e.to_string(),
        })
    }

    /// A transport failure: the server is unreachable (no connection, no answer in time), or
    /// its answer broke off.
    fn transport(&self, what: &str, error: reqwest::Error) -> Error {
        if error.is_connect() || error.is_timeout() {
            let reason = if error.is_timeout() {
                "no answer in time".to_owned()
            } else {
                root_cause(&error)
            };
            Error::Unreachable {
                url: self.base.as_str().trim_end_matches('/').to_owned(),
                reason,
            }
        } else {
            Error::Answer {
                what: what.to_owned(),
                reason: root_cause(&error),
            }
        }
    }
}

/// The innermost cause of `error`, which says what actually happened
/// ("Connection refused (os error 111)").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The problem document of an error answer; one made from the status when the body is not
/// one (a proxy's error page, say).
fn problem(status: StatusCode, body: &[u8]) -> Problem {
    serde_json::from_slice::<Problem>(body).unwrap_or_else(|_| {
        let title = status.canonical_reason().unwrap_or("Error");
        let text = String::from_utf8_lossy(body);
        let detail: String = text.trim().chars().take(300).collect();
        Problem::new(
            status.as_u16(),
            &title.to_lowercase().replace(' ', "-"),
            title,
            detail,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_no_problem_document_becomes_one() {
        let problem = problem(StatusCode::BAD_GATEWAY, b"upstream down\n");
        assert_eq!(
            (
                problem.status,
                problem.title.as_str(),
                problem.detail.as_str()
            ),
            (502, "Bad Gateway", "upstream down")
        );
        let real = super::problem(
            StatusCode::NOT_FOUND,
            br#"{"type":"urn:kagzi:problem:not-found","title":"Not found","status":404,"detail":"run 7 not found"}"#,
        );
        assert_eq!(real.slug(), Some("not-found"));
    }

    #[test]
    fn urls_join_under_the_base_and_queries_encode() -> Result<()> {
        let client = Client::new("http://proxy/kagzi/", None)?;
        let request = client
            .query(
                &["v1", "runs"],
                &RunFilter::default().workflow("a b").limit(5),
            )?
            .build()
            .map_err(|e| Error::Usage(e.to_string()))?;
        assert_eq!(
            request.url().as_str(),
            "http://proxy/kagzi/v1/runs?workflow=a+b&limit=5"
        );
        assert!(Client::new("localhost:50051", None).is_err());
        assert!(Client::new("ftp://host", None).is_err());
        Ok(())
    }

    #[test]
    fn the_api_key_goes_in_a_sensitive_bearer_header() -> Result<()> {
        let client = Client::new("http://localhost:50051", Some(" s3cret "))?;
        let request = client
            .request(Method::GET, &["healthz"])
            .build()
            .map_err(|e| Error::Usage(e.to_string()))?;
        let header = request.headers().get(AUTHORIZATION);
        assert_eq!(
            header.map(HeaderValue::as_bytes),
            Some(&b"Bearer s3cret"[..])
        );
        assert!(header.is_some_and(HeaderValue::is_sensitive));
        assert!(!format!("{client:?}").contains("s3cret"));
        Ok(())
    }
}
