//! Push-driven wake-ups: long-polls wait here, and the database's `NOTIFY`s wake them.
//!
//! Every change that makes work due or ends a run is announced by the store once it commits
//! (PostgreSQL: `NOTIFY`, heard by every replica; SQLite: in process), and
//! [`crate::store::Store::listen`] wakes the waiting polls and result waiters here. A waiter enables its [`Subscription`] *before* it checks the
//! database, so a wake-up between the check and the wait is never missed.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::model::RunId;

/// Waiters keyed by what they wait for; waking a key wakes all of its current waiters.
#[derive(Debug)]
pub struct Registry<K> {
    waiters: Arc<Mutex<HashMap<K, Arc<Notify>>>>,
}

impl<K> Default for Registry<K> {
    fn default() -> Self {
        Self {
            waiters: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone> Registry<K> {
    /// Starts waiting for `key`.
    pub fn subscribe(&self, key: K) -> Subscription<K> {
        let notify = lock(&self.waiters).entry(key.clone()).or_default().clone();
        Subscription {
            key,
            notify,
            waiters: self.waiters.clone(),
        }
    }

    /// Wakes every current waiter for `key`.
    pub fn wake(&self, key: &K) {
        if let Some(notify) = lock(&self.waiters).get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every current waiter, for any key (after a wake-up may have been lost).
    pub fn wake_all(&self) {
        for notify in lock(&self.waiters).values() {
            notify.notify_waiters();
        }
    }
}

fn lock<K>(m: &Mutex<HashMap<K, Arc<Notify>>>) -> MutexGuard<'_, HashMap<K, Arc<Notify>>> {
    // The map stays consistent even if a holder panicked: every operation on it is one call.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One waiter's interest in a key; dropping it forgets the key once nobody waits on it.
#[derive(Debug)]
pub struct Subscription<K: Eq + Hash> {
    key: K,
    notify: Arc<Notify>,
    waiters: Arc<Mutex<HashMap<K, Arc<Notify>>>>,
}

impl<K: Eq + Hash> Subscription<K> {
    /// A future that completes at the next wake-up. Call `enable()` on it (pinned) before
    /// checking the database, then await it.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl<K: Eq + Hash> Drop for Subscription<K> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.waiters);
        // Two holders left (the map and this subscription) means this was the last waiter.
        if Arc::strong_count(&self.notify) <= 2 {
            waiters.remove(&self.key);
        }
    }
}

/// The wake-up registries of one server process.
#[derive(Debug, Default)]
pub struct Wakeups {
    /// Polls waiting for work on a queue.
    pub queues: Registry<String>,
    /// Result waiters waiting for a run to end.
    pub runs: Registry<RunId>,
    /// Wakes the scheduler early: a schedule was created, changed or resumed on this server.
    /// (`notify_one` keeps the wake-up if the scheduler is busy, so none is lost.)
    pub schedules: Notify,
}

impl Wakeups {
    /// Wakes every waiter (after a wake-up may have been lost).
    pub fn wake_all(&self) {
        self.queues.wake_all();
        self.runs.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_wake_after_enable_is_not_missed() {
        let registry = Registry::<String>::default();
        let sub = registry.subscribe("q".to_owned());
        let notified = sub.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        registry.wake(&"q".to_owned());
        tokio::time::timeout(Duration::from_secs(1), notified)
            .await
            .expect("the wake-up reaches the enabled waiter");
    }

    #[tokio::test]
    async fn the_last_subscription_dropped_forgets_the_key() {
        let registry = Registry::<String>::default();
        let a = registry.subscribe("q".to_owned());
        let b = registry.subscribe("q".to_owned());
        drop(a);
        assert_eq!(registry.waiters.lock().expect("lock").len(), 1);
        drop(b);
        assert!(registry.waiters.lock().expect("lock").is_empty());
    }
}
