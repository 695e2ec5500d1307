//! Step retries inside one run attempt: how many attempts, and how long between them.

use std::time::Duration;

/// How often, and how patiently, a step is retried inside one run attempt.
///
/// The delay before retry `n` (1-based) is `initial_interval * backoff_coefficient^(n-1)`,
/// capped at `max_interval`, then scaled by a random factor in `[0.5, 1.0]` (jitter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (0 is treated as 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_interval: Duration,
    /// Factor the delay grows by on each retry.
    pub backoff_coefficient: f64,
    /// Upper bound on the delay between attempts.
    pub max_interval: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 100 ms first delay, doubling, at most 10 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries: the default for a step.
    pub fn once() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// The delay, before jitter, after failed attempt `attempt` (1-based).
    fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }

    /// The delay, with jitter, to wait after failed attempt `attempt` (1-based).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * jitter)
            .unwrap_or(base)
            .min(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_within_bounds() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.base_delay(1), Duration::from_millis(100));
        assert_eq!(policy.base_delay(2), Duration::from_millis(200));
        assert_eq!(policy.base_delay(5), Duration::from_millis(1600));
        assert_eq!(policy.base_delay(30), Duration::from_secs(10));
        assert_eq!(policy.base_delay(u32::MAX), Duration::from_secs(10));
        for attempt in 1..40 {
            let base = policy.base_delay(attempt);
            let delay = policy.delay(attempt);
            assert!(
                delay <= base && delay + Duration::from_micros(1) >= base / 2,
                "{delay:?} vs {base:?}"
            );
            assert!(delay <= policy.max_interval);
        }
        let odd = RetryPolicy {
            backoff_coefficient: f64::NAN,
            ..RetryPolicy::default()
        };
        assert_eq!(odd.base_delay(2), odd.max_interval);
    }
}
