//! `/healthz` (the process is up) and `/readyz` (it can reach its database).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::error::{ApiError, Result};
use super::extract::Json;
use crate::state::AppState;

/// The routes of this resource.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// A health answer.
#[derive(Debug, Serialize)]
pub(crate) struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Health>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(Health { status: "ok" }))
}
