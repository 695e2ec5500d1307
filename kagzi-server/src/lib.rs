//! The Kagzi server: an HTTP/JSON API over a PostgreSQL store, with push-driven long-polls,
//! a watchdog and a cron scheduler. [`app`] builds the router (tests drive it without a socket); [`Server`]
//! runs the whole thing on a socket.

pub mod api;
pub mod config;
pub mod engine;
pub mod logs;
mod meter;
pub mod model;
pub mod schedule;
pub mod state;
pub mod store;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use api::{openapi_document, openapi_json};
pub use config::Config;
pub use state::AppState;
pub use store::{PgStore, SqliteStore, Store};

/// The router of the whole API over `state`.
pub fn app(state: AppState) -> Router {
    api::router(state)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The database could not be reached or migrated.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The socket could not be bound or served.
    #[error("cannot serve on the configured address: {0}")]
    Io(#[from] std::io::Error),
}

/// A running server: its address, and a way to stop it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: AppState,
    tasks: Vec<JoinHandle<()>>,
    serve: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Connects to the configured database, migrates it, binds the configured address and
    /// starts serving, with the notification listener, the watchdog and the scheduler running
    /// beside.
    ///
    /// # Errors
    /// When the database URL is unusable, the database cannot be reached, locked or
    /// migrated, or the address cannot be bound.
    pub async fn start(config: Config) -> Result<Self, ServeError> {
        let store = store::open(&config.db_url, config.db_max_connections).await?;
        tracing::info!(db = %store::redact(&config.db_url), "database opened");
        Self::start_with_store(config, store).await
    }

    /// Like [`Server::start`], over an existing store (tests pass a per-test database).
    ///
    /// # Errors
    /// When the database cannot be migrated or the address cannot be bound.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServeError> {
        store.migrate().await?;
        // Installed before the first request, so that no count is lost.
        meter::handle();
        let listener = TcpListener::bind((config.host, config.port)).await?;
        let addr = listener.local_addr()?;
        let state = AppState::new(store, config);
        let shutdown = state.shutdown.clone();
        let tasks = vec![
            tokio::spawn({
                let (store, wakeups, shutdown) =
                    (state.store.clone(), state.wakeups.clone(), shutdown.clone());
                async move { store.listen(wakeups, shutdown).await }
            }),
            tokio::spawn(engine::watchdog::run(
                state.store.clone(),
                std::time::Duration::from_millis(state.config.watchdog_ms),
                state.config.worker_timeout(),
                shutdown.clone(),
            )),
            tokio::spawn(engine::reaper::run(
                state.store.clone(),
                state.config.retention(),
                std::time::Duration::from_millis(state.config.retention_interval_ms),
                shutdown.clone(),
            )),
            tokio::spawn(engine::scheduler::run(
                state.store.clone(),
                state.wakeups.clone(),
                std::time::Duration::from_millis(state.config.poll_recheck_ms),
                shutdown.clone(),
            )),
        ];
        let router = app(state.clone());
        let serve = tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "kagzi-server listening on http://{addr}");
        Ok(Self {
            addr,
            state,
            tasks,
            serve,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting requests, ends long-polls, waits for in-flight requests, and stops the
    /// background loops.
    ///
    /// # Errors
    /// When serving had failed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Serves until the server is shut down (see [`AppState::shutdown`]).
    ///
    /// # Errors
    /// When serving failed.
    pub async fn wait(self) -> Result<(), ServeError> {
        let served = self.serve.await;
        self.state.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        match served {
            Ok(result) => Ok(result?),
            Err(join) => Err(ServeError::Io(std::io::Error::other(join))),
        }
    }
}
