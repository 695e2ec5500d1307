//! `/healthz` (the process is up) and `/readyz` (it can reach its database).

use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, Result};
use super::extract::Json;
use crate::state::AppState;

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// A health answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub(crate) struct Health {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// Liveness: the process is up and serving. Never needs an API key.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The server is up.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the server can reach its database. Never needs an API key.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses((status = 200, description = "The server can reach its database.", body = Health)),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Health>> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(Health { status: "ok" }))
}
