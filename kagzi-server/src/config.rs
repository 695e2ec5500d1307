//! Server configuration: every setting is a `--flag` with a `KAGZI_*` environment twin.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

/// How the server is configured. Its `Debug` output shows neither the API keys nor the
/// database password.
#[derive(Clone, Parser)]
#[command(
    name = "kagzi-server",
    version,
    about = "The Kagzi durable workflow server"
)]
pub struct Config {
    /// The database: `sqlite://PATH` (the embedded default, created on first start) or a
    /// PostgreSQL URL such as `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long, env = "KAGZI_DB_URL", default_value = crate::store::DEFAULT_DB_URL, hide_env_values = true)]
    pub db_url: String,

    /// API keys: when any is set, every `/v1` request needs `Authorization: Bearer <key>`.
    /// Several keys, comma-separated, are all accepted (to rotate keys without downtime).
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(
        long = "api-key",
        env = "KAGZI_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<ApiKey>,

    /// Print the OpenAPI document (JSON) to standard output and exit, without serving.
    #[arg(long)]
    pub print_openapi: bool,

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

    /// How long an idempotency key keeps answering with the run it started, in milliseconds;
    /// after that, a start with the key starts a new run. Keys of child runs are kept for
    /// good (a parent's replay must never start a second child).
    #[arg(
        long,
        env = "KAGZI_IDEMPOTENCY_WINDOW_MS",
        default_value_t = 86_400_000
    )]
    pub idempotency_window_ms: u64,

    /// How long an idle poll may wait for work before the server double-checks the database,
    /// in milliseconds (a guard against a lost notification, not the wake-up path).
    #[arg(long, env = "KAGZI_POLL_RECHECK_MS", default_value_t = 5_000)]
    pub poll_recheck_ms: u64,

    /// The longest a long-poll (a worker's poll, a result wait) is held open, in milliseconds,
    /// whatever timeout it asks for (at most 60000); e.g. below a proxy's idle timeout.
    #[arg(long, env = "KAGZI_LONG_POLL_MAX_MS", default_value_t = 60_000)]
    pub long_poll_max_ms: u64,

    /// How long a completed run is kept after it ended, with its steps and signals: a
    /// duration such as `7d`, `12h`, `30m`, `90s`, or `never` (kept for good).
    #[arg(long, env = "KAGZI_RETENTION_COMPLETED", default_value = "7d")]
    pub retention_completed: Retention,

    /// How long a failed run is kept after it ended (`never`: for good).
    #[arg(long, env = "KAGZI_RETENTION_FAILED", default_value = "30d")]
    pub retention_failed: Retention,

    /// How long a cancelled run is kept after it ended (`never`: for good).
    #[arg(long, env = "KAGZI_RETENTION_CANCELLED", default_value = "7d")]
    pub retention_cancelled: Retention,

    /// How often the reaper deletes runs past their retention, in milliseconds.
    #[arg(long, env = "KAGZI_RETENTION_INTERVAL_MS", default_value_t = 60_000)]
    pub retention_interval_ms: u64,
}

/// How long ended runs are kept: a duration, or for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

impl FromStr for Retention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("never") {
            return Ok(Self(None));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let invalid = || {
            format!(
                "{s:?} is not a retention: give a number and a unit (ms, s, m, h, d), e.g. 7d, or never"
            )
        };
        let n: u64 = number.parse().map_err(|_| invalid())?;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        n.checked_mul(unit_ms)
            .map(|ms| Self(Some(Duration::from_millis(ms))))
            .ok_or_else(invalid)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("never"),
            Some(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

/// One API key. It is kept out of every `Debug` and `Display` output and out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself, to compare with a request's credentials.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = std::convert::Infallible;

    /// Surrounding whitespace is dropped (`KAGZI_API_KEY="a, b"` means keys `a` and `b`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.trim().to_owned()))
    }
}

impl From<&str> for ApiKey {
    fn from(s: &str) -> Self {
        Self(s.trim().to_owned())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("db_url", &crate::store::redact(&self.db_url))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("api_keys", &self.api_keys)
            .field("db_max_connections", &self.db_max_connections)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("lease_ms", &self.lease_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("watchdog_ms", &self.watchdog_ms)
            .field("retry_base_ms", &self.retry_base_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .field("idempotency_window_ms", &self.idempotency_window_ms)
            .field("poll_recheck_ms", &self.poll_recheck_ms)
            .field("long_poll_max_ms", &self.long_poll_max_ms)
            .field("retention_completed", &self.retention_completed)
            .field("retention_failed", &self.retention_failed)
            .field("retention_cancelled", &self.retention_cancelled)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The configured API keys, without empty entries (`KAGZI_API_KEY="a,,b,"`).
    pub fn api_keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.api_keys.iter().filter(|k| !k.0.is_empty())
    }

    /// The configuration with every default; for tests and embedding.
    pub fn defaults() -> Self {
        Self::parse_from(["kagzi-server"])
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// The longest a long-poll is held open.
    pub fn long_poll_max(&self) -> Duration {
        Duration::from_millis(self.long_poll_max_ms)
    }

    /// How often workers heartbeat.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// How long runs that ended in each status are kept (`None`: for good).
    pub fn retention(&self) -> [(crate::model::RunStatus, Option<Duration>); 3] {
        use crate::model::RunStatus;
        [
            (RunStatus::Completed, self.retention_completed.0),
            (RunStatus::Failed, self.retention_failed.0),
            (RunStatus::Cancelled, self.retention_cancelled.0),
        ]
    }

    /// A worker silent for this long is offline: three missed heartbeats.
    pub fn worker_timeout(&self) -> Duration {
        self.heartbeat() * 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_read_durations_and_never() {
        let day = Duration::from_secs(86_400);
        assert_eq!("7d".parse::<Retention>(), Ok(Retention(Some(7 * day))));
        assert_eq!(
            "90s".parse::<Retention>(),
            Ok(Retention(Some(Duration::from_secs(90))))
        );
        assert_eq!("Never".parse::<Retention>(), Ok(Retention(None)));
        for bad in ["", "7", "d", "7w", "-1d", "99999999999999999999d"] {
            let error = bad.parse::<Retention>().expect_err(bad);
            assert!(error.contains("e.g. 7d"), "{error}");
        }
        let config = Config::defaults();
        assert_eq!(config.retention_failed, Retention(Some(30 * day)));
    }

    #[test]
    fn api_keys_split_on_commas_and_never_show_in_debug() {
        let config = Config::parse_from([
            "kagzi-server",
            "--api-key",
            "first-secret, second-secret,,",
            "--db-url",
            "postgres://user:db-password@host/db",
        ]);
        let keys: Vec<&str> = config.api_keys().map(ApiKey::expose).collect();
        assert_eq!(keys, ["first-secret", "second-secret"]);
        let debug = format!("{config:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert!(!debug.contains("db-password"), "{debug}");
        assert!(
            debug.contains("postgres://user:<redacted>@host/db"),
            "{debug}"
        );
        assert!(debug.contains("ApiKey(<redacted>)"));
    }
}
