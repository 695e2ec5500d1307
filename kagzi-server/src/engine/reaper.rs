//! The reaper: deletes runs that ended longer ago than their status's retention window, with
//! their steps and signals, in small batches. Every replica runs one; a batch skips the runs
//! another replica is deleting, and a run with a child that has not ended is kept.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::model::RunStatus;
use crate::store::Store;

/// The most runs one statement deletes, so that no statement holds locks long.
const BATCH: u32 = 500;
/// The pause between two full batches, so that claims and reports run in between.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);

/// Deletes ended runs past `retention` every `interval` until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    retention: [(RunStatus, Option<Duration>); 3],
    interval: Duration,
    shutdown: CancellationToken,
) {
    if retention.iter().all(|(_, keep)| keep.is_none()) {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (status, keep) in retention {
            let Some(keep) = keep else { continue };
            let cutoff =
                Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            let mut deleted = 0;
            loop {
                match store.reap_runs(status, cutoff, BATCH).await {
                    Ok(n) => {
                        deleted += n;
                        if n < u64::from(BATCH) {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %status, "the reaper could not delete runs");
                        break;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(BETWEEN_BATCHES) => {}
                }
            }
            if deleted > 0 {
                tracing::info!(runs = deleted, %status, "deleted runs past their retention");
            }
        }
    }
}
