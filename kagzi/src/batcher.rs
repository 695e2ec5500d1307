//! Sends a worker's reports together: the step outcomes and completions of its runs that
//! are ready at the same moment travel in one `POST /v1/reports` instead of one request
//! each. There is no timer: a report goes out at once when no batch is in flight, and
//! otherwise joins the next batch, which leaves as soon as the one in flight is answered.
//! Each report is answered on its own, only once the server has recorded it.

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::http::{Call, Http, Retry, WORKER_RETRY_BUDGET};
use crate::types::RunId;

/// The most reports one request carries (the server takes up to 256).
const MAX_REPORTS: usize = 128;
/// A batch stops growing once its reports reach this many bytes.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// A report larger than this is sent on its own, so that one over the server's payload
/// limit is refused alone.
pub(crate) const MAX_BATCHED_BYTES: usize = 16 * 1024;
/// Reports waiting for a batch; senders wait when it is full.
const QUEUE: usize = 4096;

/// What a report is about; names its field in the batch and its own endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReportKind {
    /// A step's outcome (`POST /v1/runs/{id}/steps`).
    Step,
    /// A run's completion (`POST /v1/runs/{id}/complete`).
    Complete,
}

impl ReportKind {
    /// The field of a batched report, and the last path segment of its own endpoint.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ReportKind::Step => "steps",
            ReportKind::Complete => "complete",
        }
    }

    fn field(self) -> &'static str {
        match self {
            ReportKind::Step => "step",
            ReportKind::Complete => "complete",
        }
    }
}

/// A handle on the task that sends batches; cheap to clone. The task ends once every
/// handle is dropped and the queued reports are sent.
#[derive(Clone)]
pub(crate) struct Reporter {
    queue: mpsc::Sender<Queued>,
}

/// A report waiting for its batch, with where its answer goes.
struct Queued {
    run_id: RunId,
    /// The report as it appears in the batch: `{"run_id":..,"step":{..}}`.
    json: Vec<u8>,
    answer: oneshot::Sender<Result<Value>>,
}

impl Reporter {
    /// Starts the sending task; `http` must not itself hold a reporter (the task would
    /// then keep itself alive).
    pub(crate) fn spawn(http: Http) -> Self {
        let (queue, reports) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(http, reports));
        Reporter { queue }
    }

    /// Sends `body` (the JSON its own endpoint takes) in the next batch and returns what
    /// the server recorded: the step for a step report, `null` for a completion.
    pub(crate) async fn send(&self, run_id: RunId, kind: ReportKind, body: &[u8]) -> Result<Value> {
        let mut json = Vec::with_capacity(body.len() + 64);
        json.extend_from_slice(b"{\"run_id\":\"");
        json.extend_from_slice(run_id.to_string().as_bytes());
        json.extend_from_slice(b"\",\"");
        json.extend_from_slice(kind.field().as_bytes());
        json.extend_from_slice(b"\":");
        json.extend_from_slice(body);
        json.push(b'}');
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            run_id,
            json,
            answer,
        };
        if self.queue.send(queued).await.is_err() {
            return Err(Error::Unreported(
                "the worker's report sender has stopped".to_owned(),
            ));
        }
        answered.await.unwrap_or_else(|_| {
            Err(Error::Unreported(
                "the worker's report sender stopped before the report was answered".to_owned(),
            ))
        })
    }
}

/// Collects queued reports into batches and sends one batch at a time: while a batch is in
/// flight, the next one gathers.
async fn send_batches(http: Http, mut reports: mpsc::Receiver<Queued>) {
    while let Some(first) = reports.recv().await {
        let mut bytes = first.json.len();
        let mut batch = vec![first];
        while batch.len() < MAX_REPORTS && bytes < MAX_BATCH_BYTES {
            match reports.try_recv() {
                Ok(next) => {
                    bytes += next.json.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        send(&http, batch, bytes).await;
    }
}

/// `POST /v1/reports` answer.
#[derive(Deserialize)]
struct Answer {
    results: Vec<ReportResult>,
}

/// One report's result in the answer.
#[derive(Deserialize)]
struct ReportResult {
    status: u16,
    #[serde(default)]
    step: Option<Value>,
    #[serde(default)]
    problem: Option<ProblemBody>,
}

#[derive(Deserialize)]
struct ProblemBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    detail: String,
}

/// Sends one batch (retrying what is safe to retry, as a report of its own would be) and
/// answers each of its reports.
async fn send(http: &Http, batch: Vec<Queued>, bytes: usize) {
    let mut body = Vec::with_capacity(bytes + batch.len() + 16);
    body.extend_from_slice(b"{\"reports\":[");
    for (i, queued) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&queued.json);
    }
    body.extend_from_slice(b"]}");
    let call = Call::post_json(http.url(&["v1", "reports"]), body)
        .retry(Retry::Transient(WORKER_RETRY_BUDGET));
    match http.send::<Answer>(&call).await {
        Ok(answer) if answer.results.len() == batch.len() => {
            for (queued, result) in batch.into_iter().zip(answer.results) {
                let answer = if (200..300).contains(&result.status) {
                    Ok(result.step.unwrap_or(Value::Null))
                } else {
                    let problem = result.problem.unwrap_or(ProblemBody {
                        title: String::new(),
                        detail: String::new(),
                    });
                    let title = if problem.title.is_empty() {
                        reqwest::StatusCode::from_u16(result.status)
                            .ok()
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("error")
                            .to_owned()
                    } else {
                        problem.title
                    };
                    Err(crate::http::refusal(
                        result.status,
                        title,
                        problem.detail,
                        Some(queued.run_id),
                    ))
                };
                let _ = queued.answer.send(answer);
            }
        }
        Ok(answer) => {
            let detail = format!(
                "the server answered {} results for {} reports",
                answer.results.len(),
                batch.len()
            );
            for queued in batch {
                let _ = queued.answer.send(Err(Error::Unreported(detail.clone())));
            }
        }
        Err(error) => {
            for queued in batch {
                let _ = queued.answer.send(Err(copy(&error)));
            }
        }
    }
}

/// The error of a whole batch, for each of its reports.
fn copy(error: &Error) -> Error {
    match error {
        Error::Api {
            status,
            title,
            detail,
        } => Error::Api {
            status: *status,
            title: title.clone(),
            detail: detail.clone(),
        },
        Error::PayloadTooLarge { detail } => Error::PayloadTooLarge {
            detail: detail.clone(),
        },
        other => Error::Unreported(format!("the report could not be sent: {other}")),
    }
}
