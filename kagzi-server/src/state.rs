//! The state every request handler shares.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::dispatch::Dispatcher;
use crate::engine::group_commit::Reports;
use crate::engine::known_workers::KnownWorkers;
use crate::engine::wakeup::Wakeups;
use crate::store::{Backoff, Store};

/// Shared server state: the store, the wake-up registries and the settings. Cloning it (as
/// every request does) is one reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Writes starts, step reports and completions in batches (group commit).
    pub reports: Reports,
    /// The registrations of workers that polled this server.
    pub workers: KnownWorkers,
    /// The polls waiting on this server, for starts to be handed to directly.
    pub dispatcher: Arc<Dispatcher>,
    /// Local waiters for queues and runs.
    pub wakeups: Arc<Wakeups>,
    /// The server's configuration.
    pub config: Arc<Config>,
    /// Cancelled when the server shuts down; long-polls return early.
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State over `store` with `config`; starts the batch writers of reports on the current
    /// Tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Self {
        let (dispatcher, orphans) = Dispatcher::new();
        let wakeups = Arc::new(Wakeups::default());
        let lease = chrono::Duration::from_std(config.lease()).unwrap_or_default();
        Self(Arc::new(Shared {
            reports: Reports::start(
                &store,
                Arc::clone(&dispatcher),
                orphans,
                Arc::clone(&wakeups),
                lease,
            ),
            store,
            workers: KnownWorkers::default(),
            dispatcher,
            wakeups,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
        }))
    }

    /// The retry backoff for failed runs.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.config.retry_base_ms),
            max: Duration::from_millis(self.config.retry_max_ms),
        }
    }
}
