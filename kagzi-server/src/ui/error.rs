//! `UiError`: a failed page, shown as HTML with the API's status and words.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, Nav};
use crate::api::error::ApiError;

/// A page that could not be shown, and why.
#[derive(Debug)]
pub(crate) struct UiError {
    status: StatusCode,
    title: String,
    detail: String,
}

/// What a page handler returns.
pub(crate) type Result<T, E = UiError> = std::result::Result<T, E>;

impl UiError {
    /// A 400 for a bad value in a page's query or form.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            title: "Bad request".to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        let problem = e.to_problem();
        Self {
            status: StatusCode::from_u16(problem.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            title: problem.title,
            detail: problem.detail,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = html! {
            section.problem-page {
                h1 { (self.status.as_u16()) " · " (self.title) }
                p { (self.detail) }
                p { a href="/ui" { "Back to the runs" } }
            }
        };
        let page = layout::page(&self.title, Nav::None, false, body);
        (self.status, page).into_response()
    }
}
