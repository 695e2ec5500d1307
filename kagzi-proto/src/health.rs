//! `/healthz` and `/readyz` answers.

use serde::{Deserialize, Serialize};

/// A health answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"status": "ok"}))
)]
pub struct Health {
    /// Always `ok`.
    #[cfg_attr(feature = "utoipa", schema(example = "ok"))]
    pub status: String,
}

impl Health {
    /// The answer of a healthy server.
    pub fn ok() -> Self {
        Health {
            status: "ok".to_owned(),
        }
    }
}
