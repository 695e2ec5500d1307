//! The SQLite store: the embedded, zero-setup default for one machine. The file, the one
//! connection, migrations, the in-process wake-ups and the lease check are here; every
//! statement is in the file of the resource it touches (`runs`, `steps`, `workers`,
//! `signals`, `schedules`, and `batch` for many reports written in one transaction), each the
//! twin of the PostgreSQL file of the same name. Each [`Store`](super::Store) method is the
//! function of the same name in those files. Every report made under a lease is fenced by
//! the one `lease_held!` predicate.
//!
//! One server owns the database file: it holds an exclusive lock on it while it runs, so a
//! second server on the same file refuses to start instead of racing the first. All access
//! goes through one connection (WAL mode, `synchronous = FULL`), so read-then-write
//! transactions never contend and a committed step survives a crash of the process. Wake-ups
//! are delivered in process once a change commits.

use std::fs::{File, TryLockError};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::decide;
use super::{Error, Result};
use crate::engine::wakeup::Wakeups;
use crate::model::RunId;

/// The lease fence, the one place where SQLite decides that a lease is held: the run's row
/// carries the lease token `$token`, is running, and its lease has not expired at `$now`.
/// Every report (step, completion, failure, suspension, received signal) and every heartbeat
/// is fenced through it, in the statement that writes or in [`SqliteStore::ensure_lease`]
/// before it in the same transaction (the one connection lets nothing in between).
#[rustfmt::skip]
macro_rules! lease_held {
    ($token:literal, $now:literal) => {
        concat!(" lease_token = ", $token, " and status = 'running'",
                " and lease_expires_at > ", $now, " ")
    };
}

/// First write wins for a step: an insert into `steps` that meets a recorded step leaves it
/// as it is, unless that record is a failed attempt, which the new one replaces (its attempts
/// added up).
macro_rules! step_first_write_wins {
    () => {
        " on conflict (run_id, key) do update \
             set position = excluded.position, status = excluded.status, \
                 output = excluded.output, error = excluded.error, \
                 attempts = steps.attempts + excluded.attempts, \
                 finished_at = excluded.finished_at \
             where steps.status = 'failed' "
    };
}

mod batch;
mod runs;
mod schedules;
mod signals;
mod steps;
mod workers;

/// A wake-up, sent once the change it announces has committed.
#[derive(Debug, Clone)]
enum Note {
    /// A run on this queue may be due.
    Queue(String),
    /// This run ended.
    RunDone(RunId),
}

/// A store in an SQLite database file (or in memory).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    notes: broadcast::Sender<Note>,
    /// Held for the store's lifetime: the exclusive lock on the database file.
    _lock: Option<Arc<File>>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database `url` names: `sqlite://PATH` or
    /// `sqlite::memory:`.
    ///
    /// # Errors
    /// [`Error::Locked`] when another server holds the file; database errors otherwise.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let filename = options.get_filename().to_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let in_memory = url.contains(":memory:") || filename.as_os_str().is_empty();
        let lock = if in_memory {
            None
        } else {
            let file = File::open(&filename)
                .map_err(|e| Error::Config(format!("{}: {e}", filename.display())))?;
            match file.try_lock() {
                Ok(()) => Some(Arc::new(file)),
                Err(TryLockError::WouldBlock) => {
                    pool.close().await;
                    return Err(Error::Locked(filename.display().to_string()));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::Config(format!(
                        "cannot lock {}: {e}",
                        filename.display()
                    )));
                }
            }
        };
        let (notes, _) = broadcast::channel(1024);
        Ok(Self {
            pool,
            notes,
            _lock: lock,
        })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn notify(&self, note: Note) {
        // No receiver just means no server is listening (e.g. in store tests).
        let _ = self.notes.send(note);
    }

    fn notify_queues(&self, mut queues: Vec<String>) {
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            self.notify(Note::Queue(queue));
        }
    }

    /// Checks that `lease_token` is the run's current, unexpired lease.
    async fn ensure_lease<'e, E>(
        executor: E,
        run: RunId,
        lease_token: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()>
    where
        E: sqlx::Executor<'e, Database = Sqlite>,
    {
        let held: Option<bool> = sqlx::query_scalar(concat!(
            "select",
            lease_held!("?2", "?3"),
            "from runs where id = ?1"
        ))
        .bind(run)
        .bind(lease_token)
        .bind(now)
        .fetch_optional(executor)
        .await?;
        decide::lease_check(run, held)
    }
}

// Each `Store` method is the function of the same name in the resource files.
store_by_resource!(SqliteStore);

/// Applies the migrations.
async fn migrate(store: &SqliteStore) -> Result<()> {
    sqlx::migrate!("../migrations/sqlite")
        .run(&store.pool)
        .await?;
    Ok(())
}

/// One round trip to the database.
async fn ping(store: &SqliteStore) -> Result<()> {
    sqlx::query("select 1").execute(&store.pool).await?;
    Ok(())
}

/// Turns the notes sent after each commit into wake-ups (everyone, when some were missed).
async fn listen(store: &SqliteStore, wakeups: Arc<Wakeups>, shutdown: CancellationToken) {
    let mut notes = store.notes.subscribe();
    loop {
        let note = tokio::select! {
            () = shutdown.cancelled() => return,
            note = notes.recv() => note,
        };
        match note {
            Ok(Note::Queue(queue)) => wakeups.queues.wake(&queue),
            Ok(Note::RunDone(run)) => wakeups.runs.wake(&run),
            Err(broadcast::error::RecvError::Lagged(_)) => wakeups.wake_all(),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Durations the API accepts as `u64` milliseconds are stored as integers; larger saturate.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_fence_tests_token_status_and_expiry() {
        assert_eq!(
            lease_held!("?2", "?3"),
            " lease_token = ?2 and status = 'running' and lease_expires_at > ?3 "
        );
    }
}
