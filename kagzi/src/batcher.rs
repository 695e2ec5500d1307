//! Sends requests made at the same moment together: a worker's step and completion reports
//! travel in one `POST /v1/reports`, a client's starts in one `POST /v1/runs/batch`,
//! instead of one request each. There is no timer: a request goes out at once when no batch
//! is in flight, and otherwise joins the next batch, which leaves as soon as the one in
//! flight is answered. Each item is answered on its own, as its own endpoint would answer
//! it, once the server has written it. A batch the server refuses whole (an item it would
//! refuse as invalid or too large, which writes nothing) is sent again item by item, so
//! each item still gets its own answer.

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::http::{Call, Http, Retry, refusal};
use kagzi_proto::RunId;

/// The most items one request carries (the server takes up to 256).
const MAX_ITEMS: usize = 128;
/// A batch stops growing once its items reach this many bytes.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// An item larger than this is sent on its own, so that one over the server's payload
/// limit is refused alone.
pub(crate) const MAX_BATCHED_BYTES: usize = 16 * 1024;
/// Items waiting for a batch; senders wait when it is full.
const QUEUE: usize = 4096;

/// A batch endpoint: where batches go, the body field that lists the items, and the
/// result field that carries an accepted item's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Endpoint {
    path: &'static [&'static str],
    items: &'static str,
    answer: &'static str,
}

/// `POST /v1/reports`: step outcomes and completions; a recorded step comes back.
pub(crate) const REPORTS: Endpoint = Endpoint {
    path: &["v1", "reports"],
    items: "reports",
    answer: "step",
};

/// `POST /v1/runs/batch`: starts; the started run comes back.
pub(crate) const STARTS: Endpoint = Endpoint {
    path: &["v1", "runs", "batch"],
    items: "runs",
    answer: "run",
};

/// A handle on the task that sends one endpoint's batches; cheap to clone. The task ends
/// once every handle is dropped and the queued items are sent.
#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::Sender<Queued>,
}

/// Why a batched item has no answer of its own.
#[derive(Debug)]
pub(crate) enum Unbatched {
    /// The server refused the batch whole before writing anything (an item failed a check,
    /// or the server has no batch route): send the item on its own, where it gets its own
    /// answer.
    SendAlone,
    /// The item was refused, or the batch failed (then [`Error::BatchFailed`]).
    Error(Error),
}

impl From<Error> for Unbatched {
    fn from(error: Error) -> Self {
        Unbatched::Error(error)
    }
}

/// An item waiting for its batch, with where its answer goes.
struct Queued {
    /// The item's JSON, as it appears in the batch.
    json: Vec<u8>,
    /// For a report: the run it is on (a 409 then means its lease is lost).
    report: Option<RunId>,
    answer: oneshot::Sender<Result<Value, Unbatched>>,
}

impl Batcher {
    /// Starts the task that sends batches to `endpoint`, retrying a batch as `retry`
    /// allows; `http` must not itself hold batchers (the task would keep itself alive).
    pub(crate) fn spawn(http: Http, endpoint: Endpoint, retry: Retry) -> Self {
        let (queue, items) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(http, endpoint, retry, items));
        Batcher { queue }
    }

    /// Sends `json` in the next batch and returns the item's answer (`null` if it has
    /// none).
    pub(crate) async fn send(
        &self,
        json: Vec<u8>,
        report: Option<RunId>,
    ) -> Result<Value, Unbatched> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            json,
            report,
            answer,
        };
        let stopped = || {
            Unbatched::Error(Error::BatchFailed(
                "the batch sender has stopped".to_owned(),
            ))
        };
        if self.queue.send(queued).await.is_err() {
            return Err(stopped());
        }
        answered.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Collects queued items into batches and sends one batch at a time: while a batch is in
/// flight, the next one gathers.
async fn send_batches(
    http: Http,
    endpoint: Endpoint,
    retry: Retry,
    mut items: mpsc::Receiver<Queued>,
) {
    while let Some(first) = items.recv().await {
        let mut bytes = first.json.len();
        let mut batch = vec![first];
        while batch.len() < MAX_ITEMS && bytes < MAX_BATCH_BYTES {
            match items.try_recv() {
                Ok(next) => {
                    bytes += next.json.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        send(&http, endpoint, retry, batch, bytes).await;
    }
}

/// A batch's answer.
#[derive(Deserialize)]
struct Answer {
    results: Vec<Map<String, Value>>,
}

/// Sends one batch and answers each of its items.
async fn send(http: &Http, endpoint: Endpoint, retry: Retry, batch: Vec<Queued>, bytes: usize) {
    let mut body = Vec::with_capacity(bytes + batch.len() + 32);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(endpoint.items.as_bytes());
    body.extend_from_slice(b"\":[");
    for (i, queued) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&queued.json);
    }
    body.extend_from_slice(b"]}");
    let call = Call::post_json(http.url(endpoint.path), body).retry(retry);
    match http.send::<Answer>(&call).await {
        Ok(answer) if answer.results.len() == batch.len() => {
            for (queued, result) in batch.into_iter().zip(answer.results) {
                let answer = item_answer(endpoint, result, queued.report);
                let _ = queued.answer.send(answer);
            }
        }
        Ok(answer) => {
            let detail = format!(
                "the server answered {} results for {} items",
                answer.results.len(),
                batch.len()
            );
            for queued in batch {
                let failed = Error::BatchFailed(detail.clone());
                let _ = queued.answer.send(Err(failed.into()));
            }
        }
        Err(error) if refused_whole(&error) => {
            for queued in batch {
                let _ = queued.answer.send(Err(Unbatched::SendAlone));
            }
        }
        Err(error) => {
            let detail = error.to_string();
            for queued in batch {
                let failed = Error::BatchFailed(detail.clone());
                let _ = queued.answer.send(Err(failed.into()));
            }
        }
    }
}

/// Whether the server refused a batch whole, writing nothing: an item it would refuse on
/// its own route as invalid or too large, or no batch route at all (an older server).
fn refused_whole(error: &Error) -> bool {
    matches!(
        error,
        Error::PayloadTooLarge { .. }
            | Error::Api {
                status: 400 | 404 | 405 | 413 | 415 | 422,
                ..
            }
    )
}

/// One item's result: its answer when accepted, else the error its own endpoint's refusal
/// would be.
fn item_answer(
    endpoint: Endpoint,
    mut result: Map<String, Value>,
    report: Option<RunId>,
) -> Result<Value, Unbatched> {
    let status = result
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(500);
    if (200..300).contains(&status) {
        return Ok(result.remove(endpoint.answer).unwrap_or(Value::Null));
    }
    let problem = result
        .remove("problem")
        .and_then(|p| serde_json::from_value::<kagzi_proto::Problem>(p).ok());
    let (title, detail) = match problem {
        Some(problem) => (Some(problem.title), problem.detail),
        None => (None, String::new()),
    };
    let title = title.unwrap_or_else(|| {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_owned()
    });
    Err(refusal(status, title, detail, report).into())
}
