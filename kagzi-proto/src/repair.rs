//! Repairing runs in production: retrying one that failed, forking one from a step, acting on
//! many at once, and finding out whether a `patched` branch can be retired.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::RunId;

/// The most runs one bulk action (`POST /v1/runs/cancel`, `POST /v1/runs/retry`) changes.
pub const MAX_BULK: u32 = 1000;

/// `POST /v1/runs/{id}/fork` body: where the new run starts, and what it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"from_step": "charge"}))
)]
#[serde(deny_unknown_fields)]
pub struct ForkRun {
    /// The step the fork runs again: the new run's journal holds copies of the steps recorded
    /// before it, and runs it and everything after. Absent: from the start (nothing copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$",
            example = "charge"
        )
    )]
    pub from_step: Option<String>,
    /// The new run's input (default: the original's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// The new run's queue (default: the original's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "utoipa",
        schema(
            min_length = 1,
            max_length = 255,
            pattern = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
        )
    )]
    pub queue: Option<String>,
}

/// `POST /v1/runs/cancel` and `POST /v1/runs/retry` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"changed": ["0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a"], "more": false}))
)]
pub struct BulkOutcome {
    /// The runs this call changed (cancelled, or sent back to `pending`), newest first.
    pub changed: Vec<RunId>,
    /// True when it stopped at its `limit`: call again for the rest. Repeating a call is
    /// harmless: runs it already changed no longer match.
    pub more: bool,
}

/// `GET /v1/workflows/{workflow}/patches/{patch}` answer: whether any run that has not ended
/// may still need the code a `ctx.patched(patch)` guards as the old branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(example = json!({"workflow": "fulfil", "patch": "new-tax", "old_branch": 0, "unmarked": 2, "first_patched_at": "2026-11-26T09:00:00Z", "safe_to_remove": false}))
)]
pub struct PatchUsage {
    /// The workflow.
    pub workflow: String,
    /// The patch id.
    pub patch: String,
    /// Runs not ended that took the old branch (their journal records `false`).
    pub old_branch: u64,
    /// Runs not ended, created before the patch first answered `true`, whose journal has no
    /// answer yet: they may take the old branch when they reach it. Before the patch ever
    /// answered `true`, every run not ended counts.
    pub unmarked: u64,
    /// When a run first took the new branch; null if none has yet.
    #[serde(default)]
    pub first_patched_at: Option<DateTime<Utc>>,
    /// True when both counts are 0: the old branch (and the `patched` call) can be removed.
    pub safe_to_remove: bool,
}
