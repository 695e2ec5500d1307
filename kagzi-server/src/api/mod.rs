//! The HTTP/JSON API: one module per resource, problem+json errors, bad-input extractors.

pub mod error;
pub mod extract;
mod health;
mod reports;
mod runs;
mod schedules;
mod workers;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use axum::http::Uri;
use tower_http::trace::TraceLayer;

use self::error::ApiError;
use self::extract::PayloadLimit;
use crate::state::AppState;

/// Room for the JSON around a payload (field names, lease token, key) in a request body.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// The router with every route, the fallbacks and the layers.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.max_payload_bytes;
    Router::new()
        .merge(health::router())
        .merge(runs::router())
        .merge(schedules::router())
        .merge(workers::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: axum::middleware::Next| {
                req.extensions_mut().insert(PayloadLimit(limit));
                next.run(req)
            },
        ))
        .layer(DefaultBodyLimit::max(limit.saturating_add(ENVELOPE_BYTES)))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}
