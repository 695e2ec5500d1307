//! The background side of the server: wake-ups from the database, the watchdog, the cron
//! scheduler, the group commit of step reports, the workers known to this server, and the
//! direct dispatch of starts to waiting polls.

pub mod dispatch;
pub mod group_commit;
pub mod known_workers;
pub mod scheduler;
pub mod wakeup;
pub mod watchdog;
