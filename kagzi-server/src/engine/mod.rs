//! The background side of the server: wake-ups from the database, the watchdog, the cron
//! scheduler, and the group commit of step reports.

pub mod group_commit;
pub mod scheduler;
pub mod wakeup;
pub mod watchdog;
