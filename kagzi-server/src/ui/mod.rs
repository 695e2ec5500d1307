//! The web dashboard at `/ui`: server-rendered pages of runs, schedules, workers and queues,
//! with the operator actions. Every page reads through the same handlers as the JSON API, so
//! the two never disagree; with API keys configured it asks for one and keeps a session
//! cookie.

mod actions;
mod assets;
mod error;
mod format;
mod layout;
mod run_page;
mod runs;
mod schedules;
mod session;
mod timeline;
mod workers;

use axum::Router;
use axum::response::Redirect;
use axum::routing::{get, post};

use crate::api::auth::Keys;
use crate::state::AppState;

/// The dashboard's routes, `/` redirecting to `/ui`, guarded by the session when `keys` are
/// configured.
pub(crate) fn router(keys: Keys) -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(runs::page))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/runs/{id}", get(run_page::page))
        .route("/ui/runs/{id}/cancel", post(actions::cancel))
        .route("/ui/runs/{id}/signal", post(actions::signal))
        .route("/ui/runs/{id}/retry", post(actions::retry))
        .route("/ui/runs/{id}/fork", post(actions::fork))
        .route("/ui/runs/{id}/delete", post(actions::delete))
        .route("/ui/schedules", get(schedules::list_page))
        .route("/ui/schedules/{id}", get(schedules::page))
        .route("/ui/schedules/{id}/pause", post(actions::pause))
        .route("/ui/schedules/{id}/resume", post(actions::resume))
        .route("/ui/schedules/{id}/trigger", post(actions::trigger))
        .route("/ui/workers", get(workers::workers_page))
        .route("/ui/queues", get(workers::queues_page))
        .route("/ui/login", get(session::form).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn(move |req, next| {
            session::guard(keys.clone(), req, next)
        }))
}
