//! Batches on PostgreSQL: many starts, step reports or completions written in one statement
//! (and one commit), each falling back to the one-by-one path for what the batch could not
//! place.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{PgStore, QUEUE_CHANNEL, RUN_DONE_CHANNEL, to_i32};
use crate::model::{Run, RunId, Step};
use crate::store::decide;
use crate::store::{Completion, Created, NewRun, Result, StepReport, StepWrite, Store};

/// Ten rows that match nothing, appended to the run ids of a batch statement that locks each
/// of its runs by id. PostgreSQL estimates an array parameter at ten elements in a statement's
/// generic plan, and a plan whose cost grows with the batch is otherwise planned anew for
/// every batch smaller than that, which costs more than the statement itself; with the
/// padding each batch costs at least what the generic plan does, so that plan is kept.
macro_rules! pad_batch {
    () => {
        "array_fill(null::uuid, array[10])"
    };
}

pub(super) async fn create_runs(
    store: &PgStore,
    runs: &[NewRun],
    now: DateTime<Utc>,
) -> Vec<Result<Created>> {
    // One statement for the batch; a run it did not insert (its idempotency key is
    // taken) and a failed statement fall back to `create_run`, which answers the existing
    // run or says why not.
    let mut placed: Vec<Option<RunId>> = vec![None; runs.len()];
    if runs.len() > 1 {
        match insert_runs(store, runs, now).await {
            Ok(inserted) => {
                let whole: Vec<usize> = (0..runs.len()).collect();
                scatter(&mut placed, &whole, inserted);
            }
            Err(error) => {
                tracing::warn!(%error, runs = runs.len(), "a start batch failed; starting its runs one by one");
            }
        }
    }
    let mut results = Vec::with_capacity(runs.len());
    for (new, id) in runs.iter().zip(placed) {
        results.push(match id {
            Some(id) => Ok(decide::started(id, new)),
            None => store.create_run(new, now).await,
        });
    }
    results
}

pub(super) async fn record_steps(
    store: &PgStore,
    writes: &[StepWrite],
    now: DateTime<Utc>,
) -> Vec<Result<Step>> {
    // One statement for the batch; a report it could not place goes to `record_step`,
    // which says precisely why.
    let placed = if writes.len() > 1 {
        record_steps_batch(store, writes, now).await
    } else {
        vec![None; writes.len()]
    };
    let mut results = Vec::with_capacity(writes.len());
    for (write, step) in writes.iter().zip(placed) {
        results.push(match step {
            Some(step) => Ok(step),
            None => {
                store
                    .record_step(write.run, write.lease_token, &write.report, now)
                    .await
            }
        });
    }
    results
}

pub(super) async fn complete_runs(
    store: &PgStore,
    completions: &[Completion],
    now: DateTime<Utc>,
) -> Vec<Result<Run>> {
    // One statement (and commit) for the first completion of each run without a parent,
    // with the steps it carries; a child run (its parent may need waking in the same
    // transaction), a repeated run or step key in the batch, a completion the batch could
    // not place (lease lost, a carried step it could not record) and a failed batch fall
    // back to `complete_with_steps`, which says precisely why.
    let mut seen = HashSet::with_capacity(completions.len());
    let firsts: Vec<usize> = (0..completions.len())
        .filter(|&i| {
            let c = &completions[i];
            let mut keys = HashSet::with_capacity(c.steps.len());
            seen.insert(c.run) && c.steps.iter().all(|s| keys.insert(s.key.as_str()))
        })
        .collect();
    let mut placed: Vec<Option<Run>> = vec![None; completions.len()];
    if !firsts.is_empty() {
        let batch: Vec<&Completion> = firsts.iter().map(|&i| &completions[i]).collect();
        match complete_batch(store, &batch, now).await {
            Ok(done) => scatter(&mut placed, &firsts, done),
            Err(error) => {
                tracing::warn!(%error, completions = batch.len(), "a completion batch failed; completing its runs one by one");
            }
        }
    }
    let mut results = Vec::with_capacity(completions.len());
    for (c, run) in completions.iter().zip(placed) {
        results.push(match run {
            Some(run) => Ok(run),
            None => crate::store::complete_with_steps(store, c, now).await,
        });
    }
    results
}

/// Writes the first report of each (run, key) of `writes` in one statement; `None` for
/// a report it did not place (a repeated key, a lost lease, a concurrent writer, a failed
/// statement).
async fn record_steps_batch(
    store: &PgStore,
    writes: &[StepWrite],
    now: DateTime<Utc>,
) -> Vec<Option<Step>> {
    let mut seen = HashSet::with_capacity(writes.len());
    let firsts: Vec<usize> = (0..writes.len())
        .filter(|&i| seen.insert((writes[i].run, writes[i].report.key.as_str())))
        .collect();
    let mut placed: Vec<Option<Step>> = vec![None; writes.len()];
    let batch: Vec<&StepWrite> = firsts.iter().map(|&i| &writes[i]).collect();
    match write_steps(store, &batch, now).await {
        Ok(written) => scatter(&mut placed, &firsts, written),
        Err(error) => {
            tracing::warn!(%error, reports = batch.len(), "a step batch failed; writing its reports one by one");
        }
    }
    placed
}

/// Writes a batch of step reports with distinct (run, key) in one statement, each under
/// its run's lease and first-write-wins, and returns `(1-based position in the batch,
/// recorded step)` for each report it could place: written, or already recorded.
///
/// Each run is locked by a lookup of its id (a lateral subquery), in id order so that
/// concurrent batches lock in one order, and its lease is checked on the locked row. A
/// plain join was planned, on small or unanalyzed tables, as a scan of every running run
/// (`runs_lease_idx`) hashed against the batch: work that grew with the runs in flight,
/// not with the batch. The lookup names only the id, behind `offset 0` (which keeps
/// PostgreSQL from pushing the lease conditions into it), so the primary key is the only
/// index it can use, whatever the statistics were when a plan was cached. A run whose
/// lease is not held is locked for the statement's moment too, and left as it is.
async fn write_steps(
    store: &PgStore,
    batch: &[&StepWrite],
    now: DateTime<Utc>,
) -> Result<Vec<(i64, Step)>> {
    let rows: Vec<Placed> = sqlx::query_as(concat!(
        r"with input as (
              select * from unnest($1::uuid[] || ",
        pad_batch!(),
        r", $2::uuid[], $3::text[], $4::int4[], $5::text[],
                                   $6::jsonb[], $7::text[], $8::int4[])
                  with ordinality
                  as i(run_id, lease_token, key, position, status, output, error, attempts, ord)
          ),
          lease as (
              select i.ord from (select * from input order by run_id) i
              cross join lateral (
                  select r.lease_token, r.status, r.lease_expires_at from kagzi.runs r
                  where r.id = i.run_id
                  for share offset 0
              ) r
              where",
        lease_held!(r: "i.lease_token", "$9"),
        r"),
          written as (
              insert into kagzi.steps
                  (run_id, key, position, status, output, error, attempts, created_at, finished_at)
              select i.run_id, i.key, i.position, i.status, i.output, i.error, i.attempts, $9, $9
              from input i join lease l on l.ord = i.ord",
        step_first_write_wins!(),
        r"returning run_id, key, position, status, output, error, attempts, created_at,
                        finished_at
          )
          select i.ord, w.key, w.position, w.status, w.output, w.error, w.attempts,
                 w.created_at, w.finished_at
          from written w join input i on i.run_id = w.run_id and i.key = w.key
          union all
          select i.ord, s.key, s.position, s.status, s.output, s.error, s.attempts,
                 s.created_at, s.finished_at
          from input i
          join lease l on l.ord = i.ord
          join kagzi.steps s on s.run_id = i.run_id and s.key = i.key
          where not exists (select 1 from written w where w.run_id = i.run_id and w.key = i.key)"
    ))
    .bind(batch.iter().map(|w| w.run).collect::<Vec<_>>())
    .bind(batch.iter().map(|w| w.lease_token).collect::<Vec<_>>())
    .bind(
        batch
            .iter()
            .map(|w| w.report.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|w| to_i32(w.report.position))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|w| w.report.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|w| w.report.output.as_ref().map(Json))
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|w| w.report.error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        batch
            .iter()
            .map(|w| to_i32(w.report.attempts.max(1)))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .fetch_all(&store.pool)
    .await?;
    Ok(rows.into_iter().map(|row| (row.ord, row.step)).collect())
}

/// Completes a batch of distinct runs that have no parent, each under its lease, with the
/// steps each carries (distinct keys per run; first write wins), in one statement, and
/// notifies their result waiters. Returns `(1-based position in the batch, completed
/// run)` for each run it completed.
///
/// A run completes only with every step it carries recorded: the statement locks each
/// held run first, and once its insert (or its conflict with an earlier record, which it
/// waits for if that is still being written) is done, every carried key of a held run has
/// its record. Anything else fails the whole statement, and nothing is written. Runs
/// are locked as in `write_steps`: by id, one lookup each, in id order. Each is then
/// updated at the row version it locked (its `ctid`, which cannot change while the lock
/// is held): a join by id again could be planned, while the table was small, as a scan of
/// every run, and that plan kept once the table had grown.
async fn complete_batch(
    store: &PgStore,
    batch: &[&Completion],
    now: DateTime<Utc>,
) -> Result<Vec<(i64, Run)>> {
    let carried: Vec<(RunId, &StepReport)> = batch
        .iter()
        .flat_map(|c| c.steps.iter().map(|step| (c.run, step)))
        .collect();
    let done: Vec<Ended> = sqlx::query_as(concat!(
        r"with input as (
              select * from unnest($1::uuid[] || ",
        pad_batch!(),
        r", $2::uuid[], $3::jsonb[])
                  with ordinality as i(id, lease_token, output, ord)
          ),
          carried as (
              select * from unnest($4::uuid[], $5::text[], $6::int4[], $7::text[],
                                   $8::jsonb[], $9::text[], $10::int4[])
                  as c(run_id, key, position, status, output, error, attempts)
          ),
          held as (
              select i.id, r.row from (select * from input order by id) i
              cross join lateral (
                  select r.ctid as row, r.lease_token, r.status, r.lease_expires_at,
                         r.parent_id
                  from kagzi.runs r
                  where r.id = i.id
                  for no key update offset 0
              ) r
              where",
        lease_held!(r: "i.lease_token", "$11"),
        r"and r.parent_id is null
          ),
          written as (
              insert into kagzi.steps
                  (run_id, key, position, status, output, error, attempts, created_at, finished_at)
              select c.run_id, c.key, c.position, c.status, c.output, c.error, c.attempts,
                     $11, $11
              from carried c join held h on h.id = c.run_id",
        step_first_write_wins!(),
        r"),
          done as (
              update kagzi.runs r
              set status = 'completed', output = i.output, error = null, finished_at = $11,
                  updated_at = $11, lease_token = null, lease_expires_at = null
              from input i join held h on h.id = i.id
              where r.ctid = h.row
              returning r.*, i.ord
          )
          select ord, ",
        run_columns!(),
        r", pg_notify($12, id::text)::text as notified from done"
    ))
    .bind(batch.iter().map(|c| c.run).collect::<Vec<_>>())
    .bind(batch.iter().map(|c| c.lease_token).collect::<Vec<_>>())
    .bind(batch.iter().map(|c| Json(&c.output)).collect::<Vec<_>>())
    .bind(carried.iter().map(|(run, _)| *run).collect::<Vec<_>>())
    .bind(
        carried
            .iter()
            .map(|(_, s)| s.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        carried
            .iter()
            .map(|(_, s)| to_i32(s.position))
            .collect::<Vec<_>>(),
    )
    .bind(
        carried
            .iter()
            .map(|(_, s)| s.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        carried
            .iter()
            .map(|(_, s)| s.output.as_ref().map(Json))
            .collect::<Vec<_>>(),
    )
    .bind(
        carried
            .iter()
            .map(|(_, s)| s.error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        carried
            .iter()
            .map(|(_, s)| to_i32(s.attempts.max(1)))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .bind(RUN_DONE_CHANNEL)
    .fetch_all(&store.pool)
    .await?;
    Ok(done.into_iter().map(|d| (d.ord, d.run)).collect())
}

/// Inserts a batch of new runs in one statement, skipping those whose idempotency key is
/// taken, and notifies their queues. Returns `(1-based position in the batch, run id)`
/// for each run it inserted.
async fn insert_runs(
    store: &PgStore,
    runs: &[NewRun],
    now: DateTime<Utc>,
) -> Result<Vec<(i64, RunId)>> {
    let ids: Vec<RunId> = runs.iter().map(|_| RunId::at(now)).collect();
    let inserted: Vec<(i64, RunId)> = sqlx::query_as(
        r"with input as (
              select * from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int4[],
                                   $6::timestamptz[], $7::uuid[], $8::text[],
                                   $9::timestamptz[], $10::jsonb[], $13::uuid[],
                                   $14::timestamptz[], $15::uuid[], $16::text[],
                                   $17::bool[])
                  with ordinality
                  as i(id, workflow, queue, input, retries, available_at, parent_id,
                       idempotency_key, deadline_at, retry_policy, lease_token,
                       lease_expires_at, worker_id, build_id, pinned, ord)
          ),
          inserted as (
              insert into kagzi.runs
                  (id, workflow, queue, status, input, retries, available_at, created_at,
                   updated_at, parent_id, idempotency_key, deadline_at, retry_policy,
                   attempts, lease_token, lease_expires_at, worker_id, started_at,
                   build_id, pinned)
              select id, workflow, queue,
                     case when lease_token is null then 'pending' else 'running' end,
                     input, retries, available_at, $11, $11,
                     parent_id, idempotency_key, deadline_at, retry_policy,
                     case when lease_token is null then 0 else 1 end,
                     lease_token, lease_expires_at, worker_id,
                     case when lease_token is null then null else $11 end,
                     build_id, pinned
              from input order by ord
              on conflict (idempotency_key) where idempotency_key is not null do nothing
              returning id, queue, lease_token
          )
          select i.ord, i.id,
                 (select count(pg_notify($12, q.queue))
                  from (select distinct queue from inserted
                        where lease_token is null) q) as notified
          from inserted n join input i on i.id = n.id",
    )
    .bind(&ids)
    .bind(runs.iter().map(|r| r.workflow.as_str()).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| r.queue.as_str()).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| Json(&r.input)).collect::<Vec<_>>())
    .bind(runs.iter().map(|r| to_i32(r.retries)).collect::<Vec<_>>())
    .bind(
        runs.iter()
            .map(|r| r.available_at.max(now))
            .collect::<Vec<_>>(),
    )
    .bind(runs.iter().map(|r| r.parent_id).collect::<Vec<_>>())
    .bind(
        runs.iter()
            .map(|r| r.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(runs.iter().map(|r| r.deadline_at).collect::<Vec<_>>())
    .bind(
        runs.iter()
            .map(|r| r.retry_policy.as_ref().map(Json))
            .collect::<Vec<_>>(),
    )
    .bind(now)
    .bind(QUEUE_CHANNEL)
    .bind(
        runs.iter()
            .map(|r| r.claim.as_ref().map(|c| c.lease_token))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.claim.as_ref().map(|c| c.lease_expires_at))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.claim.as_ref().map(|c| c.worker))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.claim.as_ref().and_then(|c| c.build_id.as_deref()))
            .collect::<Vec<_>>(),
    )
    .bind(
        runs.iter()
            .map(|r| r.claim.as_ref().is_some_and(|c| c.pinned))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(inserted)
}

/// A row of [`complete_batch`]: a batch position and its completed run.
#[derive(sqlx::FromRow)]
struct Ended {
    ord: i64,
    #[sqlx(flatten)]
    run: Run,
}

/// A row of [`write_steps`]: a batch position and its recorded step.
#[derive(sqlx::FromRow)]
struct Placed {
    ord: i64,
    #[sqlx(flatten)]
    step: Step,
}

/// Puts the rows of a batch statement where they belong: each `(1-based position in the
/// batch, row)` goes to `placed[batch_of[position - 1]]`; what the statement did not return
/// stays `None`.
fn scatter<T>(placed: &mut [Option<T>], batch_of: &[usize], rows: Vec<(i64, T)>) {
    for (ord, row) in rows {
        let slot = usize::try_from(ord - 1).ok().and_then(|k| batch_of.get(k));
        if let Some(target) = slot.and_then(|&i| placed.get_mut(i)) {
            *target = Some(row);
        }
    }
}
