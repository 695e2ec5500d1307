//! Group commit: starts, step results and completions that arrive together, from many
//! clients and runs, are written in one statement and one commit ([`Store::create_runs`],
//! [`Store::record_steps`], [`Store::complete_runs`]); each is answered only once its batch
//! is durable.
//!
//! There is no timer: a batch is whatever queued while the previous batch was being
//! written, so a lone report is written at once and a busy server writes many per commit.

use std::future::Future;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::dispatch::{Dispatcher, Reservation};
use super::wakeup::Wakeups;
use crate::model::{Run, Step, Task};
use crate::store::{Claim, Completion, Created, NewRun, Result, StepWrite, Store, Suspend};

/// The most reports in one batch.
const MAX_BATCH: usize = 128;
/// The most payload bytes in one batch (a single larger report still goes alone).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How many batches of one kind are written at once. One: while a batch is written the next
/// one gathers, and fewer, larger commits beat more, smaller ones written side by side (see
/// docs/performance.md), while a lone report is still written at once.
const IN_FLIGHT: usize = 1;
/// How many reports may queue for a batch before senders wait.
const QUEUE: usize = 4096;

/// A report waiting for its batch.
struct Pending<W, R> {
    write: W,
    bytes: usize,
    done: oneshot::Sender<Result<R>>,
}

/// Hands reports of one kind (`W`, answered with an `R`) to a batch writer and waits for
/// their results.
#[derive(Debug)]
pub struct GroupCommit<W, R> {
    queue: mpsc::Sender<Pending<W, R>>,
}

impl<W, R> Clone for GroupCommit<W, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<W: Send + 'static, R: Send + 'static> GroupCommit<W, R> {
    /// Starts a batch writer (on the current Tokio runtime) that writes each batch with
    /// `write`, which answers one result per report, in order. It stops when the last
    /// handle is dropped.
    pub fn start<F, Fut>(write: F) -> Self
    where
        F: Fn(Vec<W>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<R>>> + Send + 'static,
    {
        let (queue, reports) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(write, reports));
        Self { queue }
    }

    /// Writes `write` (its payload about `bytes` long) with whatever other reports are
    /// arriving, and answers its own result once the batch is durable.
    ///
    /// # Errors
    /// As the store's method for one report.
    pub async fn submit(&self, write: W, bytes: usize) -> Result<R> {
        let (done, answer) = oneshot::channel();
        let pending = Pending { write, bytes, done };
        if self.queue.send(pending).await.is_err() {
            return Err(sqlx::Error::WorkerCrashed.into());
        }
        // Dropped unanswered only if the writer panicked.
        answer
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::WorkerCrashed.into()))
    }
}

/// Collects queued reports into batches and writes [`IN_FLIGHT`] batches at a time.
async fn write_batches<W, R, F, Fut>(write: F, mut reports: mpsc::Receiver<Pending<W, R>>)
where
    W: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<W>) -> Fut,
    Fut: Future<Output = Vec<Result<R>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = reports.recv().await {
        // While every slot is busy, more reports queue up and join this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match reports.try_recv() {
                Ok(next) => {
                    bytes += next.bytes;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let (writes, answers): (Vec<W>, Vec<_>) =
            batch.into_iter().map(|p| (p.write, p.done)).unzip();
        let written = write(writes);
        tokio::spawn(async move {
            let results = written.await;
            for (answer, result) in answers.into_iter().zip(results) {
                // The request may have gone away; its report is recorded all the same.
                let _ = answer.send(result);
            }
            drop(slot);
        });
    }
}

/// The group-commit writers of a server: starts, step reports and completions.
#[derive(Debug, Clone)]
pub struct Reports {
    /// Starts of new runs.
    pub starts: GroupCommit<NewRun, Created>,
    /// Step results.
    pub steps: GroupCommit<StepWrite, Step>,
    /// Completions.
    pub completions: GroupCommit<Completion, Run>,
}

impl Reports {
    /// Starts the writers over `store` on the current Tokio runtime. Starts that find a poll
    /// waiting in `dispatcher` are written claimed for it, with a lease of `lease`, and the
    /// dispatcher's `orphans` are released; a run completed here is handed to its result
    /// waiters in `wakeups`.
    pub fn start(
        store: &Arc<dyn Store>,
        dispatcher: Arc<Dispatcher>,
        orphans: mpsc::UnboundedReceiver<Task>,
        wakeups: Arc<Wakeups>,
        lease: chrono::Duration,
    ) -> Self {
        let for_starts = Arc::clone(store);
        let for_steps = Arc::clone(store);
        let for_completions = Arc::clone(store);
        tokio::spawn(release_orphans(Arc::clone(store), orphans));
        Self {
            starts: GroupCommit::start(move |runs: Vec<NewRun>| {
                let store = Arc::clone(&for_starts);
                let dispatcher = Arc::clone(&dispatcher);
                async move { start_runs(&*store, &dispatcher, runs, lease).await }
            }),
            steps: GroupCommit::start(move |writes: Vec<StepWrite>| {
                let store = Arc::clone(&for_steps);
                async move { store.record_steps(&writes, Utc::now()).await }
            }),
            completions: GroupCommit::start(move |writes: Vec<Completion>| {
                let store = Arc::clone(&for_completions);
                let wakeups = Arc::clone(&wakeups);
                async move {
                    let results = store.complete_runs(&writes, Utc::now()).await;
                    for run in results.iter().flatten() {
                        if run.status.is_terminal() {
                            wakeups.runs.wake_with(&run.id, run.clone());
                        }
                    }
                    results
                }
            }),
        }
    }
}

/// Writes a batch of starts, each due one claimed for a waiting poll if there is one (direct
/// dispatch), and hands the claimed runs to their polls once written.
async fn start_runs(
    store: &dyn Store,
    dispatcher: &Dispatcher,
    mut runs: Vec<NewRun>,
    lease: chrono::Duration,
) -> Vec<Result<Created>> {
    let now = Utc::now();
    let lease_expires_at = now + lease;
    let reservations: Vec<Option<Reservation>> = runs
        .iter_mut()
        .map(|run| {
            if run.available_at > now {
                return None;
            }
            let reservation = dispatcher.reserve(&run.queue, &run.workflow)?;
            let worker = reservation.worker();
            run.claim = Some(Claim {
                worker: worker.id,
                build_id: worker.build_id.clone(),
                pinned: worker.pins(&run.workflow),
                lease_token: Uuid::new_v4(),
                lease_expires_at,
            });
            Some(reservation)
        })
        .collect();
    let results = store.create_runs(&runs, now).await;
    for ((run, reservation), result) in runs.into_iter().zip(reservations).zip(&results) {
        // A start not written as new (its idempotency key named an earlier run) or not
        // written at all gives its slot back as the reservation drops.
        if let (Some(reservation), Some(claim), Ok(created)) =
            (reservation, run.claim.as_ref(), result)
            && created.claimed
        {
            reservation.deliver(Task {
                run_id: created.id,
                workflow: run.workflow,
                input: run.input,
                attempt: 1,
                lease_token: claim.lease_token,
                lease_expires_at: claim.lease_expires_at,
                journal: Vec::new(),
            });
        }
    }
    results
}

/// Releases the runs of tasks whose polls went away before answering: each goes back to its
/// queue at once (as a yield does) rather than when its lease runs out.
async fn release_orphans(store: Arc<dyn Store>, mut orphans: mpsc::UnboundedReceiver<Task>) {
    while let Some(task) = orphans.recv().await {
        let released = store
            .suspend_run(
                task.run_id,
                task.lease_token,
                &Suspend::default(),
                Utc::now(),
            )
            .await;
        if let Err(error) = released {
            tracing::warn!(run_id = %task.run_id, %error, "an undelivered run could not be released; it is reclaimed when its lease runs out");
        }
    }
}
