//! `/healthz` (the process is up), `/readyz` (it can reach its database) and `/metrics` (the
//! Prometheus scrape).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use kagzi_proto::{Health, Problem};
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
        .routes(routes!(metrics))
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

/// Metrics in the Prometheus text format.
///
/// This process's counters and histograms (runs started and ended, durations, HTTP requests,
/// store operations, long polls, schedule fires, and the SDK worker's metrics when a worker
/// runs in this process), then gauges read from the database at each scrape (queue depths and
/// ages, workers online and free slots) and the database pool. Never needs an API key, like
/// `/healthz`; `docs/metrics.md` lists every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics, in the Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
        (status = 404, description = "Metrics are off: an application embedding the server installed its own recorder.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn metrics(State(state): State<AppState>) -> Result<Response> {
    let Some(handle) = crate::meter::handle() else {
        return Err(ApiError::NotFound(
            "metrics: another metrics recorder is installed in this process".to_owned(),
        ));
    };
    let mut text = handle.render();
    crate::meter::store_gauges(&mut text, &*state.store, Utc::now()).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
