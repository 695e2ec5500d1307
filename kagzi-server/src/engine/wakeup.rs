//! Push-driven wake-ups: long-polls wait here, and the database's `NOTIFY`s wake them.
//!
//! Every change that makes work due or ends a run is announced by the store once it commits
//! (PostgreSQL: `NOTIFY`, heard by every replica; SQLite: in process), and
//! [`crate::store::Store::listen`] wakes the waiting polls and result waiters here. A waiter enables its [`Subscription`] *before* it checks the
//! database, so a wake-up between the check and the wait is never missed.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::lock;
use crate::model::{Run, RunId};

/// Waiters keyed by what they wait for; waking a key wakes all of its current waiters. A
/// wake-up may carry a value (`V`), which spares the waiters a read of what changed.
#[derive(Debug)]
pub struct Registry<K, V = ()> {
    waiters: Arc<Mutex<HashMap<K, Arc<Entry<V>>>>>,
}

/// The waiters of one key.
#[derive(Debug)]
struct Entry<V> {
    notify: Notify,
    /// The value of the last wake-up that carried one.
    value: Mutex<Option<V>>,
}

impl<V> Default for Entry<V> {
    fn default() -> Self {
        Self {
            notify: Notify::new(),
            value: Mutex::new(None),
        }
    }
}

impl<K, V> Default for Registry<K, V> {
    fn default() -> Self {
        Self {
            waiters: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Registry<K, V> {
    /// Starts waiting for `key`.
    pub fn subscribe(&self, key: K) -> Subscription<K, V> {
        let entry = lock(&self.waiters).entry(key.clone()).or_default().clone();
        Subscription {
            key,
            entry,
            waiters: self.waiters.clone(),
        }
    }

    /// Wakes every current waiter for `key`.
    pub fn wake(&self, key: &K) {
        if let Some(entry) = lock(&self.waiters).get(key) {
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every current waiter for `key` and hands them `value`, if anybody waits.
    pub fn wake_with(&self, key: &K, value: V) {
        if let Some(entry) = lock(&self.waiters).get(key) {
            *lock(&entry.value) = Some(value);
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every current waiter, for any key (after a wake-up may have been lost).
    pub fn wake_all(&self) {
        for entry in lock(&self.waiters).values() {
            entry.notify.notify_waiters();
        }
    }
}

/// One waiter's interest in a key; dropping it forgets the key once nobody waits on it.
#[derive(Debug)]
pub struct Subscription<K: Eq + Hash, V = ()> {
    key: K,
    entry: Arc<Entry<V>>,
    waiters: Arc<Mutex<HashMap<K, Arc<Entry<V>>>>>,
}

impl<K: Eq + Hash, V: Clone> Subscription<K, V> {
    /// A future that completes at the next wake-up. Call `enable()` on it (pinned) before
    /// checking the database, then await it.
    pub fn notified(&self) -> Notified<'_> {
        self.entry.notify.notified()
    }

    /// The value the last wake-up carried, if one did.
    pub fn value(&self) -> Option<V> {
        lock(&self.entry.value).clone()
    }
}

impl<K: Eq + Hash, V> Drop for Subscription<K, V> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.waiters);
        // Two holders left (the map and this subscription) means this was the last waiter.
        if Arc::strong_count(&self.entry) <= 2 {
            waiters.remove(&self.key);
        }
    }
}

/// The wake-up registries of one server process.
#[derive(Debug, Default)]
pub struct Wakeups {
    /// Polls waiting for work on a queue.
    pub queues: Registry<String>,
    /// Result waiters waiting for a run to end; a run that ended on this server is handed
    /// to them with the wake-up.
    pub runs: Registry<RunId, Run>,
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
