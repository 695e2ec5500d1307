//! Signals: messages sent to a run, kept until the run receives them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::RunId;

/// `POST /v1/runs/{id}/signals/{name}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"run_id": "0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a", "name": "approve"}))
)]
pub struct SignalSent {
    /// The run the signal is for.
    pub run_id: RunId,
    /// The signal's name.
    pub name: String,
}

/// A signal sent to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"name": "approve", "payload": {"by": "ada"}, "sent_at": "2026-11-26T09:00:00Z", "received_as": "signal:approve"}))
)]
pub struct Signal {
    /// The signal's name.
    pub name: String,
    /// Its payload.
    pub payload: Value,
    /// When it was sent.
    pub sent_at: DateTime<Utc>,
    /// The step key the run received it as (its journal entry); null while it waits.
    #[serde(default)]
    pub received_as: Option<String>,
}

/// `GET /v1/runs/{id}/signals` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"signals": [{"name": "approve", "payload": {"by": "ada"}, "sent_at": "2026-11-26T09:00:00Z", "received_as": null}]}))
)]
pub struct SignalList {
    /// The run's signals, in the order they were sent (received ones too).
    pub signals: Vec<Signal>,
}
