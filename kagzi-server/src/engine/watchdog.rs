//! The watchdog: hands runs whose lease expired back to `pending`, fails runs whose deadline
//! passed, and marks silent workers offline. Every replica runs one; the statements are safe to run concurrently.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::store::Store;

/// Runs the watchdog every `interval` until `shutdown`. A worker is offline once it has been
/// silent for `worker_timeout`.
pub async fn run(
    store: Arc<dyn Store>,
    interval: Duration,
    worker_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Utc::now();
        match store.expire_leases(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "re-queued runs whose lease expired"),
            Err(e) => tracing::warn!(error = %e, "watchdog could not expire leases"),
        }
        match store.expire_deadlines(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "failed runs whose deadline passed"),
            Err(e) => tracing::warn!(error = %e, "watchdog could not time out runs"),
        }
        let cutoff =
            now - chrono::Duration::from_std(worker_timeout).unwrap_or(chrono::Duration::MAX);
        match store.mark_workers_offline(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(workers = n, "marked silent workers offline"),
            Err(e) => tracing::warn!(error = %e, "watchdog could not mark workers offline"),
        }
    }
}
