//! The background side of the server: wake-ups from the database, the watchdog, and the
//! cron scheduler.

pub mod scheduler;
pub mod wakeup;
pub mod watchdog;
