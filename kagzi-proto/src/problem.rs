//! The problem document (RFC 9457): the body of every 4xx and 5xx answer.

use serde::{Deserialize, Serialize};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document: the body of every 4xx and 5xx answer, sent as
/// `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({
        "type": "urn:kagzi:problem:not-found",
        "title": "Not found",
        "status": 404,
        "detail": "run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a not found"
    }))
)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:kagzi:problem:<slug>`, stable across releases.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "utoipa", schema(example = "urn:kagzi:problem:not-found"))]
    pub kind: String,
    /// A short summary of the kind of problem; the same for every occurrence of a kind.
    #[cfg_attr(feature = "utoipa", schema(example = "Not found"))]
    pub title: String,
    /// The HTTP status code of the answer.
    #[cfg_attr(
        feature = "utoipa",
        schema(example = 404, minimum = 400, maximum = 599)
    )]
    pub status: u16,
    /// What went wrong this time. For 5xx answers it never carries internals; those are logged.
    #[cfg_attr(
        feature = "utoipa",
        schema(example = "run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a not found")
    )]
    pub detail: String,
}

/// The prefix of every problem `type` Kagzi sends.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:kagzi:problem:";

impl Problem {
    /// A problem of kind `slug` (its `type` is `urn:kagzi:problem:<slug>`) with `status`,
    /// `title` and `detail`.
    pub fn new(status: u16, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status,
            detail: detail.into(),
        }
    }

    /// The kind's slug (`not-found` for `urn:kagzi:problem:not-found`), if it is one of
    /// Kagzi's.
    pub fn slug(&self) -> Option<&str> {
        self.kind.strip_prefix(PROBLEM_TYPE_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_round_trips_with_its_type_field() -> serde_json::Result<()> {
        let problem = Problem::new(404, "not-found", "Not found", "run 7 not found");
        let json = serde_json::to_value(&problem)?;
        assert_eq!(json["type"], "urn:kagzi:problem:not-found");
        assert_eq!(serde_json::from_value::<Problem>(json)?, problem);
        assert_eq!(problem.slug(), Some("not-found"));
        Ok(())
    }
}
