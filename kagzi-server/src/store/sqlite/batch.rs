//! Batches on SQLite: many starts, step reports or completions written in one transaction
//! (one commit), each falling back to the one-by-one path when the transaction fails.

use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::runs::{finish_run, insert_run};
use super::steps::write_step;
use super::{Note, SqliteStore};
use crate::model::{Run, Step};
use crate::store::{Completion, Created, Error, NewRun, Result, StepWrite, Store};

pub(super) async fn create_runs(
    store: &SqliteStore,
    runs: &[NewRun],
    now: DateTime<Utc>,
) -> Vec<Result<Created>> {
    let batch = async {
        let mut tx = store.pool.begin().await?;
        let mut results = Vec::with_capacity(runs.len());
        for new in runs {
            results.push(insert_run(&mut tx, new, now).await);
        }
        tx.commit().await?;
        Ok::<_, Error>(results)
    };
    match batch.await {
        Ok(results) => {
            let queues = runs
                .iter()
                .zip(&results)
                .filter(|(new, r)| new.claim.is_none() && r.as_ref().is_ok_and(|c| !c.existing))
                .map(|(new, _)| new.queue.clone())
                .collect();
            store.notify_queues(queues);
            results
        }
        Err(_) => {
            let mut results = Vec::with_capacity(runs.len());
            for new in runs {
                results.push(store.create_run(new, now).await);
            }
            results
        }
    }
}

pub(super) async fn record_steps(
    store: &SqliteStore,
    writes: &[StepWrite],
    now: DateTime<Utc>,
) -> Vec<Result<Step>> {
    let batch = async {
        let mut tx = store.pool.begin().await?;
        let mut results = Vec::with_capacity(writes.len());
        for w in writes {
            results.push(write_step(&mut tx, w.run, w.lease_token, &w.report, now).await);
        }
        tx.commit().await?;
        Ok::<_, Error>(results)
    };
    match batch.await {
        Ok(results) => results,
        Err(_) => {
            let mut results = Vec::with_capacity(writes.len());
            for w in writes {
                results.push(
                    store
                        .record_step(w.run, w.lease_token, &w.report, now)
                        .await,
                );
            }
            results
        }
    }
}

pub(super) async fn complete_runs(
    store: &SqliteStore,
    completions: &[Completion],
    now: DateTime<Utc>,
) -> Vec<Result<Run>> {
    let batch = async {
        let mut tx = store.pool.begin().await?;
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            results.push(finish_with_steps(&mut tx, c, now).await);
        }
        tx.commit().await?;
        Ok::<_, Error>(results)
    };
    match batch.await {
        Ok(results) => {
            let mut queues = Vec::new();
            let results = results
                .into_iter()
                .map(|result| {
                    result.map(|(run, parent_queue)| {
                        store.notify(Note::RunDone(run.id));
                        queues.extend(parent_queue);
                        run
                    })
                })
                .collect();
            store.notify_queues(queues);
            results
        }
        Err(_) => {
            let mut results = Vec::with_capacity(completions.len());
            for c in completions {
                results.push(crate::store::complete_with_steps(store, c, now).await);
            }
            results
        }
    }
}

/// Records the steps `c` carries, then completes its run, on `conn`.
async fn finish_with_steps(
    conn: &mut SqliteConnection,
    c: &Completion,
    now: DateTime<Utc>,
) -> Result<(Run, Option<String>)> {
    for step in &c.steps {
        write_step(&mut *conn, c.run, c.lease_token, step, now).await?;
    }
    finish_run(conn, c.run, c.lease_token, &c.output, now).await
}
