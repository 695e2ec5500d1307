//! What a failed attempt leads to, the same on both stores: tried again after a backoff (the
//! server's exponential one, or the run's own retry policy), or the end of the run.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::Backoff;
use super::decide::after;
use crate::model::RetryPolicy;

/// How long from `now` the retry of attempt `attempt` waits: `base * 2^(attempt-1)`, at most
/// `max`, times a jitter factor in `[0.8, 1.2)`.
pub fn retry_delay(backoff: Backoff, attempt: i32, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).clamp(0, 62);
    let raw = backoff.base.as_secs_f64() * 2f64.powi(exponent);
    Duration::from_secs_f64(
        raw.min(backoff.max.as_secs_f64()) * (0.8 + jitter.clamp(0.0, 1.0) * 0.4),
    )
}

/// Decides whether a failed attempt is retried, and after how long. `retryable` is the
/// worker's verdict; a `policy` (when the run has one) overrides `retries` and `backoff`.
/// `jitter` (in `[0, 1)`, drawn by the caller) spreads the delay over `[0.8, 1.2)` of it.
pub fn retry_after(
    attempts: i32,
    retries: i32,
    policy: Option<&RetryPolicy>,
    error: &str,
    retryable: bool,
    backoff: Backoff,
    jitter: f64,
) -> Option<Duration> {
    if !retryable {
        return None;
    }
    match policy {
        None => (attempts <= retries).then(|| retry_delay(backoff, attempts, jitter)),
        Some(policy) => {
            let allowed = i64::from(policy.max_attempts.max(1));
            if i64::from(attempts) >= allowed
                || policy
                    .non_retryable_errors
                    .iter()
                    .any(|e| !e.is_empty() && error.contains(e.as_str()))
            {
                return None;
            }
            let exponent = attempts.saturating_sub(1).clamp(0, 1000);
            let raw = policy.initial_interval_ms as f64
                * policy.backoff_coefficient.max(1.0).powi(exponent);
            let capped = raw.min(policy.max_interval_ms as f64).max(0.0);
            Some(Duration::from_secs_f64(
                capped / 1000.0 * (0.8 + jitter * 0.4),
            ))
        }
    }
}

/// The columns of a held run that decide what its failure leads to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Attempt {
    /// How many times the run was claimed, this attempt included.
    pub(super) attempts: i32,
    /// How many retries the run was started with.
    pub(super) retries: i32,
    /// The run's retry policy, which overrides `retries` and the server's backoff.
    pub(super) retry_policy: Option<Json<RetryPolicy>>,
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    /// The run goes back to `pending` (true) or ends `failed` (false).
    pub(super) retry: bool,
    /// When the run is due again: after the backoff when it is retried, `now` otherwise.
    pub(super) available_at: DateTime<Utc>,
}

impl Failure {
    /// Decides the failure of `attempt` with `error`, as [`retry_after`] does, at `now`.
    pub(super) fn of(
        attempt: &Attempt,
        error: &str,
        retryable: bool,
        backoff: Backoff,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Self {
        let retry = retry_after(
            attempt.attempts,
            attempt.retries,
            attempt.retry_policy.as_ref().map(|p| &p.0),
            error,
            retryable,
            backoff,
            jitter,
        );
        Self {
            retry: retry.is_some(),
            available_at: after(now, retry.unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_interval_ms: 1_000,
            backoff_coefficient: 2.0,
            max_interval_ms: 10_000,
            non_retryable_errors: vec!["card declined".to_owned()],
        }
    }

    fn attempt(attempts: i32, retries: i32, policy: Option<RetryPolicy>) -> Attempt {
        Attempt {
            attempts,
            retries,
            retry_policy: policy.map(Json),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
    }

    #[test]
    fn the_delay_doubles_per_attempt_up_to_the_maximum() {
        assert_eq!(retry_delay(BACKOFF, 1, 0.5), Duration::from_secs(1));
        assert_eq!(retry_delay(BACKOFF, 3, 0.5), Duration::from_secs(4));
        assert_eq!(retry_delay(BACKOFF, 40, 0.5), Duration::from_secs(60));
        assert_eq!(retry_delay(BACKOFF, 1, 0.0), Duration::from_millis(800));
        assert_eq!(retry_delay(BACKOFF, 1, 7.0), Duration::from_millis(1_200));
    }

    #[test]
    fn without_a_policy_the_run_is_retried_while_retries_remain() {
        let retry = |attempts| retry_after(attempts, 2, None, "boom", true, BACKOFF, 0.5);
        assert_eq!(retry(1), Some(Duration::from_secs(1)));
        assert_eq!(retry(2), Some(Duration::from_secs(2)));
        assert_eq!(retry(3), None);
    }

    #[test]
    fn an_error_the_worker_calls_fatal_is_never_retried() {
        assert_eq!(retry_after(1, 5, None, "boom", false, BACKOFF, 0.5), None);
        let policy = policy(5);
        assert_eq!(
            retry_after(1, 0, Some(&policy), "boom", false, BACKOFF, 0.5),
            None
        );
    }

    #[test]
    fn a_policy_counts_attempts_grows_its_interval_and_names_fatal_errors() {
        let policy = policy(4);
        let retry =
            |attempts, error| retry_after(attempts, 0, Some(&policy), error, true, BACKOFF, 0.5);
        assert_eq!(retry(1, "boom"), Some(Duration::from_secs(1)));
        assert_eq!(retry(3, "boom"), Some(Duration::from_secs(4)));
        assert_eq!(retry(4, "boom"), None, "four attempts in all");
        assert_eq!(retry(1, "the card declined twice"), None);
        let long = RetryPolicy {
            max_attempts: 100,
            ..policy.clone()
        };
        assert_eq!(
            retry_after(50, 0, Some(&long), "boom", true, BACKOFF, 0.5),
            Some(Duration::from_secs(10)),
            "at most max_interval_ms"
        );
    }

    #[test]
    fn a_failure_is_due_after_its_backoff_or_ends_the_run_now() {
        let retried = Failure::of(&attempt(1, 3, None), "boom", true, BACKOFF, now(), 0.5);
        assert_eq!(
            retried,
            Failure {
                retry: true,
                available_at: now() + chrono::Duration::seconds(1),
            }
        );
        let policy = Some(policy(1));
        let ended = Failure::of(&attempt(1, 3, policy), "boom", true, BACKOFF, now(), 0.5);
        assert_eq!(
            ended,
            Failure {
                retry: false,
                available_at: now(),
            }
        );
    }
}
