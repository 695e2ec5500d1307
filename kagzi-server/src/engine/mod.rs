//! The background side of the server: wake-ups from the database, and the watchdog.

pub mod wakeup;
pub mod watchdog;
