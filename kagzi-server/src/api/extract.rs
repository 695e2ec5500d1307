//! Extractors that answer bad input with the API's problem bodies instead of axum's plain
//! text, and the payload size check.

use std::io;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The payload limit in force, put in each request's extensions by the router.
#[derive(Debug, Clone, Copy)]
pub struct PayloadLimit(pub usize);

/// A JSON body (and JSON response) whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_json(req, state, true).await.map(Self)
    }
}

/// A JSON body that may be any JSON value (a signal's payload), not only an object.
#[derive(Debug, Clone, Default)]
pub struct AnyJson<T>(pub T);

impl<S, T> FromRequest<S> for AnyJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_json(req, state, false).await.map(Self)
    }
}

/// Reads a JSON body. With `object_only`, a body that is not a JSON object is refused:
/// serde would otherwise read a struct from an array of its fields (`[null, null]`).
async fn read_json<S, T>(req: Request, state: &S, object_only: bool) -> Result<T, ApiError>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    let limit = req.extensions().get::<PayloadLimit>().copied();
    if !json_content_type(req.headers()) {
        return Err(ApiError::UnsupportedMediaType(
            "Expected request with `Content-Type: application/json`".to_owned(),
        ));
    }
    let bytes = match Bytes::from_request(req, state).await {
        Ok(bytes) => bytes,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::PayloadTooLarge {
                what: "request body".to_owned(),
                limit: limit.map_or(0, |l| l.0),
            });
        }
        Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
    };
    if object_only {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{') {
            return Err(ApiError::InvalidBody(
                "the request body must be a JSON object".to_owned(),
            ));
        }
    }
    match axum::Json::<T>::from_bytes(&bytes) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => Err(json_rejection(rejection, limit)),
    }
}

/// Whether the request says its body is JSON: `application/json` or `application/*+json`.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection, limit: Option<PayloadLimit>) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
        JsonRejection::MissingJsonContentType(e) => ApiError::UnsupportedMediaType(e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            what: "request body".to_owned(),
            limit: limit.map_or(0, |l| l.0),
        },
        other => ApiError::BadRequest(other.body_text()),
    }
}

/// Path parameters whose rejections are problem bodies.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::BadRequest(e.body_text()))
            }
            Err(other) => Err(ApiError::Internal(other.body_text())),
        }
    }
}

/// Query parameters whose rejections are problem bodies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::BadRequest(e.body_text()))
            }
            Err(other) => Err(ApiError::BadRequest(other.body_text())),
        }
    }
}

/// A value a request carries into the database.
pub trait Payload: Serialize {
    /// Whether any string in it (or, for JSON, any object key) holds U+0000, which
    /// PostgreSQL cannot store in text or JSON.
    fn has_nul(&self) -> bool;
}

impl Payload for String {
    fn has_nul(&self) -> bool {
        self.contains('\0')
    }
}

impl Payload for serde_json::Value {
    fn has_nul(&self) -> bool {
        match self {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(Payload::has_nul),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains('\0') || v.has_nul())
            }
            _ => false,
        }
    }
}

/// Refuses `value` when its JSON encoding is longer than `limit` bytes, or when it holds
/// U+0000 (which the database cannot store).
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] naming `what` and the limit; [`ApiError::InvalidBody`] for
/// U+0000.
pub fn check_payload<T: Payload>(what: &str, value: &T, limit: usize) -> Result<usize, ApiError> {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail, and a serde_json::Value always serializes.
    let _ = serde_json::to_writer(&mut counter, value);
    if counter.0 > limit {
        return Err(ApiError::PayloadTooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    if value.has_nul() {
        return Err(ApiError::InvalidBody(format!(
            "{what} must not contain U+0000 (the NUL character)"
        )));
    }
    Ok(counter.0)
}

struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_check_counts_the_json_encoding() {
        let value = serde_json::json!("x".repeat(10)); // 12 bytes with the quotes
        assert!(check_payload("input", &value, 12).is_ok());
        let err = check_payload("input", &value, 11).expect_err("one byte over the limit");
        assert_eq!(
            err.to_string(),
            "input is larger than the limit of 11 bytes"
        );
    }
}
