//! The background side of the server: wake-ups from the database, the watchdog, the cron
//! scheduler, the group commit of step reports, and the workers known to this server.

pub mod group_commit;
pub mod known_workers;
pub mod scheduler;
pub mod wakeup;
pub mod watchdog;
