//! Server configuration: every setting is a `--flag` with a `KAGZI_*` environment twin.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Parser;

/// How the server is configured.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "kagzi-server",
    version,
    about = "The Kagzi durable workflow server"
)]
pub struct Config {
    /// The database: `sqlite://PATH` (the embedded default, created on first start) or a
    /// PostgreSQL URL such as `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "KAGZI_DB_URL", default_value = crate::store::DEFAULT_DB_URL)]
    pub db_url: String,

    /// The address to listen on.
    #[arg(long, env = "KAGZI_SERVER_HOST", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// The port to listen on (0 picks a free one).
    #[arg(long, env = "KAGZI_SERVER_PORT", default_value_t = 50051)]
    pub port: u16,

    /// The most database connections the server opens.
    #[arg(long, env = "KAGZI_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// The largest payload (input, output, step result) accepted, in bytes.
    #[arg(long, env = "KAGZI_MAX_PAYLOAD_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_payload_bytes: usize,

    /// How long a claim's lease lasts without a heartbeat, in milliseconds.
    #[arg(long, env = "KAGZI_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,

    /// How often workers are asked to heartbeat, in milliseconds.
    #[arg(long, env = "KAGZI_HEARTBEAT_MS", default_value_t = 10_000)]
    pub heartbeat_ms: u64,

    /// How often the watchdog looks for expired leases and silent workers, in milliseconds.
    #[arg(long, env = "KAGZI_WATCHDOG_MS", default_value_t = 1_000)]
    pub watchdog_ms: u64,

    /// The delay before a failed run's first retry, in milliseconds; it doubles per attempt.
    #[arg(long, env = "KAGZI_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,

    /// The longest delay between a failed run's retries, in milliseconds.
    #[arg(long, env = "KAGZI_RETRY_MAX_MS", default_value_t = 300_000)]
    pub retry_max_ms: u64,

    /// How long an idle poll may wait for work before the server double-checks the database,
    /// in milliseconds (a guard against a lost notification, not the wake-up path).
    #[arg(long, env = "KAGZI_POLL_RECHECK_MS", default_value_t = 5_000)]
    pub poll_recheck_ms: u64,
}

impl Config {
    /// The configuration with every default; for tests and embedding.
    pub fn defaults() -> Self {
        Self::parse_from(["kagzi-server"])
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// How often workers heartbeat.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// A worker silent for this long is offline: three missed heartbeats.
    pub fn worker_timeout(&self) -> Duration {
        self.heartbeat() * 3
    }
}
