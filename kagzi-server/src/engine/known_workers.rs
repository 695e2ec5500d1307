//! The registrations of the workers that poll this server, kept in memory.
//!
//! What a worker registered with (its queue, workflows, capacity and host) never changes and
//! its row is never deleted (deregistering marks it offline), so a poll need not read it from
//! the database each time: the first poll of a worker reads it, later polls find it here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lock;
use crate::model::{Worker, WorkerId};
use crate::store::{Result, Store};

/// How many registrations are kept; past this the cache starts afresh (workers that restart
/// register again under new ids, so old entries would otherwise pile up).
const CAPACITY: usize = 10_000;

/// Worker registrations read from the store, by id.
#[derive(Debug, Default)]
pub struct KnownWorkers {
    workers: Mutex<HashMap<WorkerId, Arc<Worker>>>,
}

impl KnownWorkers {
    /// The registration of worker `id`, read from `store` the first time.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::store::Error::NotFound) if no worker has that id, or the
    /// store's error.
    pub async fn get(&self, store: &dyn Store, id: WorkerId) -> Result<Arc<Worker>> {
        if let Some(worker) = lock(&self.workers).get(&id) {
            return Ok(Arc::clone(worker));
        }
        let worker = Arc::new(store.get_worker(id).await?);
        let mut workers = lock(&self.workers);
        if workers.len() >= CAPACITY {
            workers.clear();
        }
        workers.insert(id, Arc::clone(&worker));
        Ok(worker)
    }
}
