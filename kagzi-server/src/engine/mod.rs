//! The background side of the server: wake-ups from the database, the watchdog, the cron
//! scheduler, the group commit of step reports, the workers known to this server, and the
//! direct dispatch of starts to waiting polls.

pub mod dispatch;
pub mod group_commit;
pub mod known_workers;
pub mod reaper;
pub mod scheduler;
pub mod wakeup;
pub mod watchdog;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, poisoned or not: the engine's maps and counters are changed in single steps
/// under their lock, so a panic elsewhere cannot leave them half-changed.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
