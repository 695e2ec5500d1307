//! The PostgreSQL store, in the `kagzi` schema: the pool, migrations, the wake-up listener
//! and the lease check here; every statement in the file of the resource it touches
//! (`runs`, `steps`, `workers`, `signals`, `schedules`, and `batch` for the statements that
//! write many reports at once), each the twin of the SQLite file of the same name. Each
//! [`Store`](super::Store) method is the function of the same name in those files. Every
//! report made under a lease, and every heartbeat, is fenced by the one `lease_held!`
//! predicate.
//!
//! Wake-ups travel through `NOTIFY` in the same statement as the change they announce, so every
//! server replica on the database hears them once the change commits:
//! [`QUEUE_CHANNEL`] carries a queue name when a run on it may have become due, and
//! [`RUN_DONE_CHANNEL`] carries a run id when the run ended.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::decide;
use super::retry::Attempt;
use super::{Error, Result};
use crate::engine::wakeup::Wakeups;
use crate::model::RunId;

/// The `NOTIFY` channel that says "a run on this queue may be due" (payload: the queue).
pub const QUEUE_CHANNEL: &str = "kagzi_queue";
/// The `NOTIFY` channel that says "this run ended" (payload: the run id).
pub const RUN_DONE_CHANNEL: &str = "kagzi_run_done";

/// A pooled connection idle this long is pinged before it is used again, so one the database
/// dropped meanwhile (a restart) is replaced instead of failing a request.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The lease fence, the one place where PostgreSQL decides that a lease is held: the run's
/// row carries the lease token `$token`, is running, and its lease has not expired at `$now`.
/// Every report (step, completion, failure, suspension, received signal) and every heartbeat
/// is fenced through it, in the statement that writes or in [`lock_held`] /
/// [`PgStore::ensure_lease`] in front of it. `lease_held!(r: ...)` tests the row named `r`.
#[rustfmt::skip]
macro_rules! lease_held {
    ($token:literal, $now:literal) => {
        concat!(" lease_token = ", $token, " and status = 'running'",
                " and lease_expires_at > ", $now, " ")
    };
    ($row:ident: $token:literal, $now:literal) => {
        concat!(" ", stringify!($row), ".lease_token = ", $token,
                " and ", stringify!($row), ".status = 'running'",
                " and ", stringify!($row), ".lease_expires_at > ", $now, " ")
    };
}

/// First write wins for a step: an insert into `kagzi.steps` that meets a recorded step
/// leaves it as it is, unless that record is a failed attempt, which the new one replaces
/// (its attempts added up).
macro_rules! step_first_write_wins {
    () => {
        " on conflict (run_id, key) do update \
             set position = excluded.position, status = excluded.status, \
                 output = excluded.output, error = excluded.error, \
                 attempts = kagzi.steps.attempts + excluded.attempts, \
                 finished_at = excluded.finished_at \
             where kagzi.steps.status = 'failed' "
    };
}

mod batch;
mod runs;
mod schedules;
mod signals;
mod steps;
mod workers;

/// A store backed by a PostgreSQL pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects a pool of at most `max_connections` to `url`.
    ///
    /// # Errors
    /// [`Error::Config`] with the cause when the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        // One direct connection first, so an unreachable or misconfigured database is reported
        // with its cause rather than as a pool timeout.
        let probe = PgConnection::connect(url).await.map_err(|e| {
            Error::Config(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                super::redact(url)
            ))
        })?;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings a connection both as it returns to the pool and, by default, again
            // as it is taken: two extra round trips per statement, one of them in front of
            // it. Only a connection idle for a while is pinged before use; one used moments
            // ago passed its release ping then.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await?;
        Ok(Self { pool })
    }

    /// Wraps an existing pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection listening on both channels.
    async fn listener(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([QUEUE_CHANNEL, RUN_DONE_CHANNEL])
            .await?;
        Ok(listener)
    }

    /// Checks that `lease_token` is the run's current, unexpired lease.
    async fn ensure_lease(&self, run: RunId, lease_token: Uuid, now: DateTime<Utc>) -> Result<()> {
        let held: Option<bool> = sqlx::query_scalar(concat!(
            "select",
            lease_held!("$2", "$3"),
            "from kagzi.runs where id = $1"
        ))
        .bind(run)
        .bind(lease_token)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        decide::lease_check(run, held)
    }

    /// Explains why a fenced update matched no row.
    async fn lease_error(&self, run: RunId, lease_token: Uuid, now: DateTime<Utc>) -> Error {
        decide::lease_lost(run, self.ensure_lease(run, lease_token, now).await)
    }
}

// Each `Store` method is the function of the same name in the resource files.
store_by_resource!(PgStore);

/// Applies the migrations in the `kagzi` schema, recorded in its own migrations table.
async fn migrate(store: &PgStore) -> Result<()> {
    let mut migrator = sqlx::migrate!("../migrations/postgres");
    migrator.create_schema("kagzi");
    migrator.dangerous_set_table_name("kagzi._sqlx_migrations");
    migrator.run(&store.pool).await?;
    Ok(())
}

/// One round trip to the database.
async fn ping(store: &PgStore) -> Result<()> {
    sqlx::query("select 1").execute(&store.pool).await?;
    Ok(())
}

/// Turns the notifications of both channels into wake-ups, reconnecting when the listening
/// connection drops (and then waking everyone, for what it may have missed).
async fn listen(store: &PgStore, wakeups: Arc<Wakeups>, shutdown: CancellationToken) {
    loop {
        let mut listener = match store.listener().await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for notifications; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Anything sent before LISTEN took effect is covered by waking everyone once.
        wakeups.wake_all();
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = listener.try_recv() => next,
            };
            match next {
                Ok(Some(n)) if n.channel() == QUEUE_CHANNEL => {
                    wakeups.queues.wake(&n.payload().to_owned())
                }
                Ok(Some(n)) => {
                    if let Ok(id) = n.payload().parse::<Uuid>() {
                        wakeups.runs.wake(&RunId(id));
                    }
                }
                Ok(None) => {
                    tracing::warn!("notification connection was lost and re-established");
                    wakeups.wake_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// The parts of a run's row the fenced reports need.
#[derive(sqlx::FromRow)]
struct Held {
    /// What decides a failure's retry.
    #[sqlx(flatten)]
    attempt: Attempt,
    /// The run's queue.
    queue: String,
}

/// Locks the run's row for the rest of the transaction when `lease_token` is its current,
/// unexpired lease; `None` otherwise (see [`PgStore::lease_error`] for why).
async fn lock_held(
    conn: &mut PgConnection,
    run: RunId,
    lease_token: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Held>> {
    let held = sqlx::query_as::<_, Held>(concat!(
        // A manual retry starts the retry policy's count again (`attempt_base`).
        r"select attempts - attempt_base as attempts, retries, retry_policy, queue
          from kagzi.runs
          where id = $1 and",
        lease_held!("$2", "$3"),
        "for update"
    ))
    .bind(run)
    .bind(lease_token)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(held)
}

/// Sends a notification on `channel`, delivered when the transaction commits.
async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts and sizes the API accepts as `u32` are stored as `integer`; larger values saturate.
fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Durations the API accepts as `u64` milliseconds are stored as `bigint`; larger saturate.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_fence_tests_token_status_and_expiry() {
        assert_eq!(
            lease_held!("$2", "$3"),
            " lease_token = $2 and status = 'running' and lease_expires_at > $3 "
        );
        assert_eq!(
            lease_held!(r: "i.lease_token", "$9"),
            " r.lease_token = i.lease_token and r.status = 'running' and r.lease_expires_at > $9 "
        );
    }
}
