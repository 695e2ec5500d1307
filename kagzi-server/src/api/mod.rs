//! The HTTP/JSON API: one module per resource, problem+json errors, bad-input extractors,
//! API keys, the OpenAPI document and its Swagger UI.

pub mod auth;
mod batch;
pub mod error;
pub mod extract;
mod health;
pub mod openapi;
pub(crate) mod queues;
pub(crate) mod repair;
mod reports;
pub(crate) mod runs;
pub(crate) mod schedules;
pub(crate) mod workers;
mod workflows;

use std::any::Any;
use std::iter::once;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, Response, Uri, header};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config as SwaggerConfig, SwaggerUi};

use self::auth::Keys;
use self::error::{ApiError, PROBLEM_JSON, Problem, problem_response};
use self::extract::PayloadLimit;
use crate::state::AppState;

/// Room for the JSON around a payload (field names, lease token, key) in a request body.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

/// Every documented route with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(health::router())
        .merge(runs::router())
        .merge(batch::router())
        .merge(schedules::router())
        .merge(workers::router())
        .merge(queues::router())
        .merge(repair::router())
        .merge(workflows::router())
}

/// The OpenAPI document of the API, as served at `/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, api) = routes().split_for_parts();
    openapi::finish(api)
}

/// The OpenAPI document as the pretty JSON committed in `openapi/openapi.json`, ending in
/// a newline.
pub fn openapi_json() -> String {
    let mut json = openapi_document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    json.push('\n');
    json
}

/// The router with every route, the docs, the fallbacks and the layers.
pub(crate) fn router(state: AppState) -> Router {
    let limit = state.config.max_payload_bytes;
    let keys = Keys::new(state.config.api_keys());
    let (api, doc) = routes().split_for_parts();
    let doc = openapi::finish(doc);
    let docs = SwaggerUi::new("/docs").url("/openapi.json", doc).config(
        SwaggerConfig::from("/openapi.json")
            // The default validator loads a badge from validator.swagger.io: nothing here
            // may depend on the internet.
            .validator_url("none")
            .try_it_out_enabled(true)
            .persist_authorization(true),
    );
    Router::new()
        .merge(api)
        .merge(docs)
        .merge(crate::ui::router(keys.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: axum::middleware::Next| {
                req.extensions_mut().insert(PayloadLimit(limit));
                next.run(req)
            },
        ))
        .layer(DefaultBodyLimit::max(limit.saturating_add(ENVELOPE_BYTES)))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                auth::require_key(keys.clone(), req, next)
            },
        ))
        .layer(CatchPanicLayer::custom(panic_answer))
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::map_response(problem_for_bare_errors))
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new(once(
            header::AUTHORIZATION,
        )))
        .with_state(state)
}

/// Counts and times each request by method, route pattern (never the path itself, which
/// holds ids) and status.
async fn count_request(req: Request, next: axum::middleware::Next) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(req).await;
    crate::meter::http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", uri.path()))
}

/// A handler panicked: log what it said, once, and answer 500 without it.
fn panic_answer(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    ApiError::Internal(format!("a request handler panicked: {message}")).into_response()
}

/// A last guard: an error answer that is not already problem+json (from a layer or a
/// library route, e.g. a Swagger UI asset that does not exist) gets a problem body.
async fn problem_for_bare_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    // The dashboard's error pages are HTML for a person.
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_problem || is_page {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = title.to_lowercase().replace(' ', "-");
    let detail = if status.is_server_error() {
        "the server failed to handle the request; the error is in its log".to_owned()
    } else {
        format!("the request failed with {status}")
    };
    let (parts, _) = response.into_parts();
    let mut fresh = problem_response(&Problem::new(status.as_u16(), &slug, title, detail));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().append(name, value.clone());
        }
    }
    fresh
}

/// Cuts a listing fetched with `limit + 1` rows down to `limit` and returns the next page's
/// cursor (the last row kept), or `None` when this is the last page.
pub(crate) fn next_page<T, C>(
    rows: &mut Vec<T>,
    limit: u32,
    cursor: impl Fn(&T) -> C,
) -> Option<C> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(cursor)
}
