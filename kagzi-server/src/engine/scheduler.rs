//! The scheduler: starts the runs of cron schedules at their due times.
//!
//! It sleeps until the earliest due time of any schedule, and is woken early when a schedule
//! is created, changed or resumed on this server ([`Wakeups::schedules`]), or when a run that
//! holds back a buffered due time ends; a safety recheck every `recheck` covers changes made
//! through another replica. For each schedule that has come due it plans — in Rust, from the
//! schedule as read — which due times start (catch-up, see [`crate::schedule::plan`]), and
//! asks the store to fire that plan ([`Store::fire_schedule`]): one transaction that applies
//! only if the schedule is still at the version the plan was made from. So every replica may
//! run a scheduler on one database and each due time still starts exactly one run; a unique
//! index on (schedule, due time) guards the same in the data.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::{self, FutureExt};
use tokio_util::sync::CancellationToken;

use crate::engine::wakeup::Wakeups;
use crate::model::RunId;
use crate::schedule::{self, Plan, Schedule};
use crate::store::{self, ScheduleFire, Store};

/// The most schedules fired in one pass; more are fired by the next pass, at once.
const BATCH: u32 = 100;
/// How long to wait before trying again after the database failed.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the scheduler until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    wakeups: Arc<Wakeups>,
    recheck: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let mut blockers = Vec::new();
        let sleep = match pass(&*store, Utc::now(), &mut blockers).await {
            Ok(Some(next)) => (next - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            Ok(None) => recheck,
            Err(e) => {
                tracing::warn!(error = %e, "scheduler could not fire schedules; retrying");
                ERROR_BACKOFF
            }
        };
        // Wake when a run holding back a buffered due time ends. Subscribe first, then look:
        // a run that ended in between is seen by the look.
        let subscriptions: Vec<_> = blockers
            .iter()
            .map(|id| wakeups.runs.subscribe(*id))
            .collect();
        let mut waits: Vec<_> = subscriptions
            .iter()
            .map(|s| {
                let mut notified = Box::pin(s.notified());
                notified.as_mut().enable();
                notified
            })
            .collect();
        if any_ended(&*store, &blockers).await {
            continue;
        }
        let run_ended = async {
            if waits.is_empty() {
                future::pending::<()>().await;
            } else {
                future::select_all(waits.iter_mut().map(|w| w.as_mut()))
                    .map(|_| ())
                    .await;
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wakeups.schedules.notified() => {}
            () = tokio::time::sleep(sleep.min(recheck)) => {}
            () = run_ended => {}
        }
    }
}

/// Whether any of `runs` has ended (or is gone).
async fn any_ended(store: &dyn Store, runs: &[RunId]) -> bool {
    for &id in runs {
        match store.get_run(id).await {
            Ok(run) if !run.status.is_terminal() => {}
            _ => return true,
        }
    }
    false
}

/// Fires every schedule due at `now`; returns when the next one is due. Runs that hold back a
/// buffered due time are added to `blockers`.
async fn pass(
    store: &dyn Store,
    now: DateTime<Utc>,
    blockers: &mut Vec<RunId>,
) -> store::Result<Option<DateTime<Utc>>> {
    let due = store.due_schedules(now, BATCH).await?;
    for schedule in &due {
        fire(store, schedule, now, blockers).await?;
    }
    if due.len() >= BATCH as usize {
        return Ok(Some(now));
    }
    store.next_schedule_fire().await
}

/// Plans and fires one schedule.
#[tracing::instrument(skip_all, fields(schedule_id = %schedule.id))]
async fn fire(
    store: &dyn Store,
    schedule: &Schedule,
    now: DateTime<Utc>,
    blockers: &mut Vec<RunId>,
) -> store::Result<()> {
    let plan = match (schedule.spec(), schedule.next_fire_at) {
        (Ok(spec), Some(next)) => schedule::plan(&spec, next, schedule.catch_up(), now),
        (Ok(_), None) => Plan {
            due: Vec::new(),
            next_fire_at: None,
        },
        (Err(e), _) => {
            // Checked when stored, so only a newer server's expression lands here: stop
            // firing it rather than failing every pass.
            tracing::error!(error = %e, "schedule has an unusable cron expression; not firing it");
            Plan {
                due: Vec::new(),
                next_fire_at: None,
            }
        }
    };
    let fire = ScheduleFire {
        id: schedule.id,
        version: schedule.version,
        due: plan.due,
        next_fire_at: plan.next_fire_at,
    };
    let outcome = store.fire_schedule(&fire, now).await?;
    if !outcome.applied {
        tracing::debug!("schedule changed or fired elsewhere since it was read");
        return Ok(());
    }
    for (run_id, at) in &outcome.started {
        tracing::info!(%run_id, scheduled_at = %at, workflow = %schedule.workflow, "scheduled run started");
    }
    if outcome.skipped > 0 {
        tracing::info!(skipped = outcome.skipped, overlap = ?schedule.overlap, "due times skipped: the previous run is still going");
    }
    if let Some(blocker) = outcome.blocked_by {
        blockers.push(blocker);
    }
    Ok(())
}
