//! Direct dispatch: a start that finds a worker's poll waiting on this server, for its queue
//! and workflow, is written already claimed by that worker and handed to the poll.
//!
//! Without it a start is written `pending`, its `NOTIFY` wakes the poll, and the poll claims
//! the run with a second statement and commit. With it the start's one insert is the claim,
//! and the waiting poll answers as soon as that insert commits (the idea of Temporal's "sync
//! match"). Only polls that found nothing to claim wait here, so a start never jumps a
//! backlog its worker could have claimed.
//!
//! A poll offers its free slots ([`Dispatcher::wait`]); the start writer reserves one per
//! start before its insert ([`Dispatcher::reserve`]) and delivers the task once the insert has
//! committed ([`Reservation::deliver`]), or gives the slot back when the start was not written
//! as claimed ([`Reservation`] dropped). A poll that stops waiting ([`WaitingPoll::close`])
//! first waits for the reservations in flight, so a delivered task always reaches it. A task
//! whose poll went away before answering (its request was dropped) is an orphan: the run is
//! released back to its queue ([`Dispatcher::new`]'s receiver) instead of waiting for its lease
//! to run out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::lock;
use crate::model::{Task, Worker};

/// The polls waiting for work on this server, by queue.
#[derive(Debug)]
pub struct Dispatcher {
    waiting: Mutex<HashMap<String, Vec<Arc<Waiter>>>>,
    orphans: mpsc::UnboundedSender<Task>,
}

/// One waiting poll as the dispatcher sees it.
#[derive(Debug)]
struct Waiter {
    worker: Arc<Worker>,
    slots: Mutex<Slots>,
    /// Wakes the poll when a reservation is delivered or given back.
    settled: Notify,
}

/// A waiting poll's slots.
#[derive(Debug)]
struct Slots {
    /// Whether the poll still takes reservations.
    open: bool,
    /// Slots left to reserve.
    free: u32,
    /// Reservations in flight.
    reserved: u32,
    /// Tasks delivered and not yet taken.
    tasks: Vec<Task>,
    /// The poll is gone (its request was dropped): nobody will take a delivered task.
    abandoned: bool,
}

impl Dispatcher {
    /// A dispatcher, and the receiver of its orphans: tasks delivered to polls that went
    /// away, whose runs are to be released. (At most as many as the polls' slots.)
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Task>) {
        let (orphans, receiver) = mpsc::unbounded_channel();
        let dispatcher = Self {
            waiting: Mutex::default(),
            orphans,
        };
        (Arc::new(dispatcher), receiver)
    }

    /// Offers `max` slots of `worker`'s poll to starts on its queue until the returned
    /// [`WaitingPoll`] is closed or dropped.
    pub fn wait(self: &Arc<Self>, worker: Arc<Worker>, max: u32) -> WaitingPoll {
        let waiter = Arc::new(Waiter {
            worker,
            slots: Mutex::new(Slots {
                open: true,
                free: max,
                reserved: 0,
                tasks: Vec::new(),
                abandoned: false,
            }),
            settled: Notify::new(),
        });
        lock(&self.waiting)
            .entry(waiter.worker.queue.clone())
            .or_default()
            .push(Arc::clone(&waiter));
        WaitingPoll {
            dispatcher: Arc::clone(self),
            waiter,
            closed: false,
        }
    }

    /// Reserves a slot of a poll waiting for `workflow` on `queue`, if one is free. The
    /// longest-waiting poll is served first.
    pub fn reserve(&self, queue: &str, workflow: &str) -> Option<Reservation> {
        let waiting = lock(&self.waiting);
        let waiters = waiting.get(queue)?;
        for waiter in waiters {
            if !waiter.worker.workflows.iter().any(|w| w == workflow) {
                continue;
            }
            let mut slots = lock(&waiter.slots);
            if slots.open && slots.free > 0 {
                slots.free -= 1;
                slots.reserved += 1;
                return Some(Reservation {
                    waiter: Arc::clone(waiter),
                    orphans: self.orphans.clone(),
                    delivered: false,
                });
            }
        }
        None
    }

    /// How many polls wait on `queue` (for operators and tests).
    pub fn waiting(&self, queue: &str) -> usize {
        lock(&self.waiting).get(queue).map_or(0, Vec::len)
    }

    fn forget(&self, waiter: &Arc<Waiter>) {
        let mut waiting = lock(&self.waiting);
        if let Some(waiters) = waiting.get_mut(&waiter.worker.queue) {
            waiters.retain(|w| !Arc::ptr_eq(w, waiter));
            if waiters.is_empty() {
                waiting.remove(&waiter.worker.queue);
            }
        }
    }
}

/// A slot reserved on a waiting poll for one start. Dropped without
/// [`deliver`](Self::deliver), the slot is given back.
#[derive(Debug)]
pub struct Reservation {
    waiter: Arc<Waiter>,
    orphans: mpsc::UnboundedSender<Task>,
    delivered: bool,
}

impl Reservation {
    /// The worker whose poll the slot belongs to: the start is written claimed by it.
    pub fn worker(&self) -> &Worker {
        &self.waiter.worker
    }

    /// Hands the task of a start written claimed to the poll (or, when the poll is gone, to
    /// the orphans).
    pub fn deliver(mut self, task: Task) {
        self.delivered = true;
        let mut slots = lock(&self.waiter.slots);
        slots.reserved -= 1;
        if slots.abandoned {
            drop(slots);
            // The receiver is gone only when the server is: the lease then runs out.
            let _ = self.orphans.send(task);
            return;
        }
        slots.tasks.push(task);
        drop(slots);
        self.waiter.settled.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.delivered {
            let mut slots = lock(&self.waiter.slots);
            slots.reserved -= 1;
            slots.free += 1;
            drop(slots);
            self.waiter.settled.notify_one();
        }
    }
}

/// A poll's offer of its slots; see [`Dispatcher::wait`].
#[derive(Debug)]
pub struct WaitingPoll {
    dispatcher: Arc<Dispatcher>,
    waiter: Arc<Waiter>,
    closed: bool,
}

impl WaitingPoll {
    /// Completes once a task has been delivered.
    pub async fn delivered(&self) {
        loop {
            let settled = self.waiter.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if !lock(&self.waiter.slots).tasks.is_empty() {
                return;
            }
            settled.await;
        }
    }

    /// Stops taking reservations, waits for those in flight (each is one insert) and
    /// answers the tasks delivered.
    pub async fn close(mut self) -> Vec<Task> {
        self.dispatcher.forget(&self.waiter);
        loop {
            let settled = self.waiter.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut slots = lock(&self.waiter.slots);
                slots.open = false;
                if slots.reserved == 0 {
                    // Only now: dropped while it waited above, the poll is abandoned.
                    self.closed = true;
                    return std::mem::take(&mut slots.tasks);
                }
            }
            settled.await;
        }
    }
}

impl Drop for WaitingPoll {
    fn drop(&mut self) {
        if !self.closed {
            // The poll's request went away while it waited.
            self.dispatcher.forget(&self.waiter);
            let mut slots = lock(&self.waiter.slots);
            slots.open = false;
            slots.abandoned = true;
            for task in slots.tasks.drain(..) {
                let _ = self.dispatcher.orphans.send(task);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::model::{RunId, WorkerId};

    fn worker(workflows: &[&str]) -> Arc<Worker> {
        Arc::new(Worker {
            id: WorkerId(Uuid::new_v4()),
            queue: "q".to_owned(),
            workflows: workflows.iter().map(|w| (*w).to_owned()).collect(),
            capacity: 10,
            hostname: None,
            build_id: None,
            pinned_workflows: Vec::new(),
        })
    }

    fn task() -> Task {
        Task {
            run_id: RunId::new(),
            workflow: "a".to_owned(),
            input: serde_json::Value::Null,
            attempt: 1,
            lease_token: Uuid::new_v4(),
            lease_expires_at: Utc::now(),
            journal: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_start_is_reserved_on_a_poll_for_its_queue_and_workflow_within_its_slots() {
        let (dispatcher, _orphans) = Dispatcher::new();
        let b_only = worker(&["b"]);
        let a_too = worker(&["a", "b"]);
        let _b = dispatcher.wait(Arc::clone(&b_only), 5);
        let a = dispatcher.wait(Arc::clone(&a_too), 2);
        assert!(dispatcher.reserve("other", "a").is_none());
        let first = dispatcher.reserve("q", "a").expect("a free slot");
        assert_eq!(first.worker().id, a_too.id);
        let second = dispatcher.reserve("q", "a").expect("a second slot");
        assert!(dispatcher.reserve("q", "a").is_none(), "both slots taken");
        drop(second);
        let again = dispatcher.reserve("q", "a").expect("a slot given back");
        let (one, two) = (task(), task());
        let ids = [one.run_id, two.run_id];
        first.deliver(one);
        again.deliver(two);
        a.delivered().await;
        let tasks = a.close().await;
        assert_eq!(tasks.iter().map(|t| t.run_id).collect::<Vec<_>>(), ids);
        assert!(
            dispatcher.reserve("q", "a").is_none(),
            "a closed poll takes no more"
        );
        assert!(dispatcher.reserve("q", "b").is_some());
    }

    #[tokio::test]
    async fn closing_a_poll_waits_for_the_reservations_in_flight() {
        let (dispatcher, _orphans) = Dispatcher::new();
        let waiting = dispatcher.wait(worker(&["a"]), 1);
        let reservation = dispatcher.reserve("q", "a").expect("a free slot");
        let closing = tokio::spawn(waiting.close());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !closing.is_finished(),
            "the close waits for the reservation"
        );
        let delivered = task();
        let id = delivered.run_id;
        reservation.deliver(delivered);
        let tasks = closing.await.expect("close");
        assert_eq!(tasks.iter().map(|t| t.run_id).collect::<Vec<_>>(), [id]);
    }

    #[tokio::test]
    async fn a_poll_dropped_while_closing_leaves_its_task_an_orphan() {
        let (dispatcher, mut orphans) = Dispatcher::new();
        let waiting = dispatcher.wait(worker(&["a"]), 1);
        let reservation = dispatcher.reserve("q", "a").expect("a free slot");
        let closing = tokio::spawn(waiting.close());
        tokio::time::sleep(Duration::from_millis(50)).await;
        closing.abort();
        assert!(closing.await.is_err(), "the close was dropped");
        let delivered = task();
        let id = delivered.run_id;
        reservation.deliver(delivered);
        assert_eq!(orphans.try_recv().map(|t| t.run_id).ok(), Some(id));
    }

    #[tokio::test]
    async fn tasks_of_a_poll_that_went_away_are_orphans() {
        let (dispatcher, mut orphans) = Dispatcher::new();
        let waiting = dispatcher.wait(worker(&["a"]), 2);
        let early = dispatcher.reserve("q", "a").expect("a free slot");
        let late = dispatcher.reserve("q", "a").expect("a second slot");
        let (one, two) = (task(), task());
        let ids = [one.run_id, two.run_id];
        early.deliver(one);
        drop(waiting);
        late.deliver(two);
        let mut orphaned = Vec::new();
        while let Ok(task) = orphans.try_recv() {
            orphaned.push(task.run_id);
        }
        assert_eq!(orphaned, ids);
        assert!(dispatcher.reserve("q", "a").is_none());
    }
}
