//! `ApiError`: every failure the HTTP API reports, as an RFC 9457 `application/problem+json`
//! body (`type`, `title`, `status`, `detail`). Server errors are logged here, once, and their
//! bodies never carry internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use kagzi_proto::{PROBLEM_JSON, Problem};

use crate::store;

/// An error the API answers with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed: bad JSON syntax, a bad path or query parameter, a bad value.
    #[error("{0}")]
    BadRequest(String),
    /// The JSON is well-formed but does not fit the schema (missing field, wrong type).
    #[error("{0}")]
    InvalidBody(String),
    /// The body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A payload is larger than the configured limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// What was too large, e.g. `input` or `request body`.
        what: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The request carries no valid API key (only when the server has `KAGZI_API_KEY` set).
    #[error("{detail}")]
    Unauthorized {
        /// What is wrong with the credentials (never the credentials themselves).
        detail: String,
        /// The `WWW-Authenticate` challenge to send (RFC 6750).
        challenge: &'static str,
    },
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request contradicts the current state.
    #[error("{0}")]
    Conflict(String),
    /// A worker's report under a lease it no longer holds.
    #[error("{0}")]
    LeaseLost(String),
    /// The server is not ready (e.g. the database is unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed inside the server; the detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The handlers' result type.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The answer carrying `problem`: its status, `application/problem+json`, the document.
pub fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Serializing four plain fields cannot fail.
    let body = serde_json::to_vec(problem).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
        body,
    )
        .into_response()
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Self::InvalidBody(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
            ),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Self::LeaseLost(_) => (StatusCode::CONFLICT, "lease-lost", "Lease lost"),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

impl ApiError {
    /// This error about one part of the request (`reports[3]`): its detail names the part.
    pub(crate) fn within(self, part: &str) -> Self {
        match self {
            Self::BadRequest(detail) => Self::BadRequest(format!("{part}: {detail}")),
            Self::InvalidBody(detail) => Self::InvalidBody(format!("{part}: {detail}")),
            Self::PayloadTooLarge { what, limit } => Self::PayloadTooLarge {
                what: format!("{part}: {what}"),
                limit,
            },
            other => other,
        }
    }

    /// The problem document this error answers with. Internals of 5xx errors are logged
    /// here, not shown.
    pub(crate) fn to_problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let detail = match self {
            Self::Internal(detail) => {
                tracing::error!(%detail, "request failed");
                "the server failed to handle the request; the error is in its log".to_owned()
            }
            Self::Unavailable(detail) => {
                tracing::warn!(%detail, "service unavailable");
                "the server cannot reach its database".to_owned()
            }
            other => other.to_string(),
        };
        Problem::new(status.as_u16(), slug, title, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = problem_response(&self.to_problem());
        if let Self::Unauthorized { challenge, .. } = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::NotFound(what) => Self::NotFound(format!("{what} not found")),
            store::Error::Conflict(detail) => Self::Conflict(detail),
            e @ store::Error::LeaseLost(_) => Self::LeaseLost(e.to_string()),
            store::Error::Database(e) if is_transient(&e) => Self::Unavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Whether a database error says "try again" (the database is restarting or unreachable, a
/// connection dropped, a transaction lost a race) rather than "this request is wrong".
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE classes 08 (connection exception) and 57 (operator intervention, e.g.
        // admin shutdown), serialization failures and deadlocks.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || code.starts_with("57") || code == "40001" || code == "40P01"
        }),
        _ => false,
    }
}
