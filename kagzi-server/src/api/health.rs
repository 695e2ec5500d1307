//! `/healthz` (the process is up) and `/readyz` (it can reach its database).

use axum::extract::State;
use kagzi_proto::Health;
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

/// Liveness: the process is up.
///
/// Answers 200 as long as the process serves requests; it does not touch the database. Never
/// needs an API key: point a container's liveness probe here.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The server is up.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health::ok())
}

/// Readiness: the server can reach its database.
///
/// Answers 200 when a statement reaches the database, 503 when it cannot. Never needs an API
/// key: point a load balancer's readiness check here.
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
    Ok(Json(Health::ok()))
}
