//! The one `impl Store` of both dialects: `store_by_resource!` sends each [`Store`] method
//! to the function of the same name in the dialect's resource files, so the PostgreSQL and
//! SQLite stores are written as the same files of the same functions around their own SQL.
//!
//! [`Store`]: super::Store

/// Implements [`Store`] for a dialect's store type by calling, for each method, the function
/// of the same name in that dialect's resource module (`runs`, `steps`, `workers`, `signals`,
/// `schedules`, `batch`), or for `migrate`, `ping` and `listen` in the dialect's own module,
/// with the store first. Both dialects are written as the same files of the same functions
/// around their own SQL; this table is the one place where the trait meets them, so that
/// neither side repeats it and a function missing on one side does not compile.
macro_rules! store_by_resource {
    ($store:ty) => {
        const _: () = {
            use ::chrono::{DateTime, Utc};
            use ::serde_json::Value;
            use ::std::sync::Arc;
            use ::tokio_util::sync::CancellationToken;
            use ::uuid::Uuid;

            use $crate::engine::wakeup::Wakeups;
            use $crate::model::{Lease, Run, RunId, RunStatus, Step, Task, Worker, WorkerId};
            use $crate::schedule::{Schedule, ScheduleId};
            use $crate::store::{
                Backoff, Completion, Created, FireOutcome, Fork, NewRun, NewSchedule, NewWorker,
                PatchUsage, PoolStats, QueueStats, Result, RunCounts, RunFilter, ScheduleFilter,
                ScheduleFire, ScheduleKey, ScheduleUpdate, Signal, StepReport, StepWrite, Store,
                Suspend, WorkerFilter, WorkerInfo,
            };

            #[::async_trait::async_trait]
            impl Store for $store {
                fn pool_stats(&self) -> PoolStats {
                    PoolStats {
                        open: self.pool.size(),
                        idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                        max: self.pool.options().get_max_connections(),
                    }
                }

                async fn migrate(&self) -> Result<()> {
                    migrate(self).await
                }

                async fn ping(&self) -> Result<()> {
                    ping(self).await
                }

                async fn listen(&self, wakeups: Arc<Wakeups>, shutdown: CancellationToken) {
                    listen(self, wakeups, shutdown).await
                }

                async fn create_run(&self, new: &NewRun, now: DateTime<Utc>) -> Result<Created> {
                    runs::create_run(self, new, now).await
                }

                async fn get_run(&self, id: RunId) -> Result<Run> {
                    $crate::meter::store_op("get_run", runs::get_run(self, id)).await
                }

                async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
                    $crate::meter::store_op("list_runs", runs::list_runs(self, filter)).await
                }

                async fn cancel_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run> {
                    let result =
                        $crate::meter::store_op("cancel_run", runs::cancel_run(self, id, now))
                            .await;

                    if let Ok(run) = &result {
                        $crate::meter::run_changed(run);
                    }

                    result
                }

                async fn complete_run(
                    &self,
                    run: RunId,
                    lease_token: Uuid,
                    output: &Value,
                    now: DateTime<Utc>,
                ) -> Result<Run> {
                    let result = $crate::meter::store_op(
                        "complete_run",
                        runs::complete_run(self, run, lease_token, output, now),
                    )
                    .await;

                    if let Ok(run) = &result {
                        $crate::meter::run_changed(run);
                    }

                    result
                }

                async fn fail_run(
                    &self,
                    run: RunId,
                    lease_token: Uuid,
                    error: &str,
                    retryable: bool,
                    backoff: Backoff,
                    now: DateTime<Utc>,
                ) -> Result<Run> {
                    let result = $crate::meter::store_op(
                        "fail_run",
                        runs::fail_run(self, run, lease_token, error, retryable, backoff, now),
                    )
                    .await;

                    if let Ok(run) = &result {
                        $crate::meter::run_changed(run);
                    }

                    result
                }

                async fn suspend_run(
                    &self,
                    run: RunId,
                    lease_token: Uuid,
                    suspend: &Suspend,
                    now: DateTime<Utc>,
                ) -> Result<Run> {
                    $crate::meter::store_op(
                        "suspend_run",
                        runs::suspend_run(self, run, lease_token, suspend, now),
                    )
                    .await
                }

                async fn expire_deadlines(&self, now: DateTime<Utc>) -> Result<u64> {
                    let result = $crate::meter::store_op(
                        "expire_deadlines",
                        runs::expire_deadlines(self, now),
                    )
                    .await;

                    if let Ok(n) = &result {
                        $crate::meter::runs_timed_out(*n);
                    }

                    result
                }

                async fn expire_leases(&self, now: DateTime<Utc>) -> Result<u64> {
                    let result =
                        $crate::meter::store_op("expire_leases", runs::expire_leases(self, now))
                            .await;

                    if let Ok(n) = &result {
                        $crate::meter::leases_expired(*n);
                    }

                    result
                }

                async fn list_steps(&self, id: RunId) -> Result<Vec<Step>> {
                    $crate::meter::store_op("list_steps", steps::list_steps(self, id)).await
                }

                async fn record_step(
                    &self,
                    run: RunId,
                    lease_token: Uuid,
                    report: &StepReport,
                    now: DateTime<Utc>,
                ) -> Result<Step> {
                    let result = $crate::meter::store_op(
                        "record_step",
                        steps::record_step(self, run, lease_token, report, now),
                    )
                    .await;

                    if let Ok(_step) = &result {
                        $crate::meter::step_recorded(
                            report.status == $crate::model::StepStatus::Failed,
                        );
                    }

                    result
                }

                async fn register_worker(
                    &self,
                    new: &NewWorker,
                    now: DateTime<Utc>,
                ) -> Result<WorkerId> {
                    $crate::meter::store_op(
                        "register_worker",
                        workers::register_worker(self, new, now),
                    )
                    .await
                }

                async fn get_worker(&self, id: WorkerId) -> Result<Worker> {
                    $crate::meter::store_op("get_worker", workers::get_worker(self, id)).await
                }

                async fn heartbeat(
                    &self,
                    worker: WorkerId,
                    held: &[Lease],
                    lease_expires_at: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<Vec<RunId>> {
                    $crate::meter::store_op(
                        "heartbeat",
                        workers::heartbeat(self, worker, held, lease_expires_at, now),
                    )
                    .await
                }

                async fn deregister_worker(
                    &self,
                    worker: WorkerId,
                    now: DateTime<Utc>,
                ) -> Result<u64> {
                    $crate::meter::store_op(
                        "deregister_worker",
                        workers::deregister_worker(self, worker, now),
                    )
                    .await
                }

                async fn claim(
                    &self,
                    worker: &Worker,
                    max: u32,
                    lease_expires_at: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<Vec<Task>> {
                    $crate::meter::store_op(
                        "claim",
                        workers::claim(self, worker, max, lease_expires_at, now),
                    )
                    .await
                }

                async fn next_due(&self, worker: &Worker) -> Result<Option<DateTime<Utc>>> {
                    $crate::meter::store_op("next_due", workers::next_due(self, worker)).await
                }

                async fn claim_or_next_due(
                    &self,
                    worker: &Worker,
                    max: u32,
                    lease_expires_at: DateTime<Utc>,
                    now: DateTime<Utc>,
                ) -> Result<(Vec<Task>, Option<DateTime<Utc>>)> {
                    $crate::meter::store_op(
                        "claim_or_next_due",
                        workers::claim_or_next_due(self, worker, max, lease_expires_at, now),
                    )
                    .await
                }

                async fn mark_workers_offline(&self, cutoff: DateTime<Utc>) -> Result<u64> {
                    $crate::meter::store_op(
                        "mark_workers_offline",
                        workers::mark_workers_offline(self, cutoff),
                    )
                    .await
                }

                async fn send_signal(
                    &self,
                    run: RunId,
                    name: &str,
                    payload: &Value,
                    now: DateTime<Utc>,
                ) -> Result<()> {
                    $crate::meter::store_op(
                        "send_signal",
                        signals::send_signal(self, run, name, payload, now),
                    )
                    .await
                }

                async fn receive_signal(
                    &self,
                    run: RunId,
                    lease_token: Uuid,
                    name: &str,
                    key: &str,
                    position: u32,
                    now: DateTime<Utc>,
                ) -> Result<Option<Step>> {
                    $crate::meter::store_op(
                        "receive_signal",
                        signals::receive_signal(self, run, lease_token, name, key, position, now),
                    )
                    .await
                }

                async fn create_schedule(
                    &self,
                    new: &NewSchedule,
                    now: DateTime<Utc>,
                ) -> Result<Schedule> {
                    $crate::meter::store_op(
                        "create_schedule",
                        schedules::create_schedule(self, new, now),
                    )
                    .await
                }

                async fn get_schedule(&self, key: &ScheduleKey) -> Result<Schedule> {
                    $crate::meter::store_op("get_schedule", schedules::get_schedule(self, key))
                        .await
                }

                async fn list_schedules(&self, filter: &ScheduleFilter) -> Result<Vec<Schedule>> {
                    $crate::meter::store_op(
                        "list_schedules",
                        schedules::list_schedules(self, filter),
                    )
                    .await
                }

                async fn update_schedule(
                    &self,
                    id: ScheduleId,
                    version: i64,
                    update: &ScheduleUpdate,
                    now: DateTime<Utc>,
                ) -> Result<Schedule> {
                    $crate::meter::store_op(
                        "update_schedule",
                        schedules::update_schedule(self, id, version, update, now),
                    )
                    .await
                }

                async fn set_schedule_paused(
                    &self,
                    id: ScheduleId,
                    paused: bool,
                    next_fire_at: Option<DateTime<Utc>>,
                    now: DateTime<Utc>,
                ) -> Result<Schedule> {
                    $crate::meter::store_op(
                        "set_schedule_paused",
                        schedules::set_schedule_paused(self, id, paused, next_fire_at, now),
                    )
                    .await
                }

                async fn delete_schedule(&self, id: ScheduleId) -> Result<()> {
                    $crate::meter::store_op("delete_schedule", schedules::delete_schedule(self, id))
                        .await
                }

                async fn trigger_schedule(
                    &self,
                    id: ScheduleId,
                    now: DateTime<Utc>,
                ) -> Result<RunId> {
                    let result = $crate::meter::store_op(
                        "trigger_schedule",
                        schedules::trigger_schedule(self, id, now),
                    )
                    .await;

                    if let Ok(_run) = &result {
                        $crate::meter::schedule_fired(1, 0);
                    }

                    result
                }

                async fn due_schedules(
                    &self,
                    now: DateTime<Utc>,
                    limit: u32,
                ) -> Result<Vec<Schedule>> {
                    $crate::meter::store_op(
                        "due_schedules",
                        schedules::due_schedules(self, now, limit),
                    )
                    .await
                }

                async fn next_schedule_fire(&self) -> Result<Option<DateTime<Utc>>> {
                    $crate::meter::store_op(
                        "next_schedule_fire",
                        schedules::next_schedule_fire(self),
                    )
                    .await
                }

                async fn fire_schedule(
                    &self,
                    fire: &ScheduleFire,
                    now: DateTime<Utc>,
                ) -> Result<FireOutcome> {
                    let result = $crate::meter::store_op(
                        "fire_schedule",
                        schedules::fire_schedule(self, fire, now),
                    )
                    .await;

                    if let Ok(outcome) = &result {
                        $crate::meter::schedule_fired(outcome.started.len(), outcome.skipped);
                    }

                    result
                }

                async fn count_runs(&self, filter: &RunFilter, cap: u64) -> Result<RunCounts> {
                    $crate::meter::store_op("count_runs", runs::count_runs(self, filter, cap)).await
                }

                async fn list_signals(&self, run: RunId) -> Result<Vec<Signal>> {
                    $crate::meter::store_op("list_signals", signals::list_signals(self, run)).await
                }

                async fn list_workers(&self, filter: &WorkerFilter) -> Result<Vec<WorkerInfo>> {
                    $crate::meter::store_op("list_workers", workers::list_workers(self, filter))
                        .await
                }

                async fn queue_stats(&self, now: DateTime<Utc>) -> Result<Vec<QueueStats>> {
                    $crate::meter::store_op("queue_stats", workers::queue_stats(self, now)).await
                }

                async fn retry_run(&self, id: RunId, now: DateTime<Utc>) -> Result<Run> {
                    let result =
                        $crate::meter::store_op("retry_run", runs::retry_run(self, id, now)).await;

                    if let Ok(run) = &result {
                        $crate::meter::run_changed(run);
                    }

                    result
                }

                async fn fork_run(
                    &self,
                    id: RunId,
                    fork: &Fork,
                    now: DateTime<Utc>,
                ) -> Result<Run> {
                    let result =
                        $crate::meter::store_op("fork_run", runs::fork_run(self, id, fork, now))
                            .await;

                    if let Ok(run) = &result {
                        $crate::meter::run_started(&run.workflow, &run.queue);
                    }

                    result
                }

                async fn delete_run(&self, id: RunId) -> Result<()> {
                    $crate::meter::store_op("delete_run", runs::delete_run(self, id)).await
                }

                async fn reap_runs(
                    &self,
                    status: RunStatus,
                    cutoff: DateTime<Utc>,
                    limit: u32,
                ) -> Result<u64> {
                    $crate::meter::store_op(
                        "reap_runs",
                        runs::reap_runs(self, status, cutoff, limit),
                    )
                    .await
                }

                async fn patch_usage(&self, workflow: &str, patch: &str) -> Result<PatchUsage> {
                    $crate::meter::store_op(
                        "patch_usage",
                        steps::patch_usage(self, workflow, patch),
                    )
                    .await
                }

                async fn create_runs(
                    &self,
                    runs: &[NewRun],
                    now: DateTime<Utc>,
                ) -> Vec<Result<Created>> {
                    let results = $crate::meter::store_batch(
                        "create_runs",
                        batch::create_runs(self, runs, now),
                    )
                    .await;

                    for (new, created) in runs.iter().zip(&results) {
                        if let Ok(created) = created
                            && !created.existing
                        {
                            $crate::meter::run_started(&new.workflow, &new.queue);
                        }
                    }

                    results
                }

                async fn record_steps(
                    &self,
                    writes: &[StepWrite],
                    now: DateTime<Utc>,
                ) -> Vec<Result<Step>> {
                    let results = $crate::meter::store_batch(
                        "record_steps",
                        batch::record_steps(self, writes, now),
                    )
                    .await;

                    for (write, step) in writes.iter().zip(&results) {
                        if step.is_ok() {
                            $crate::meter::step_recorded(
                                write.report.status == $crate::model::StepStatus::Failed,
                            );
                        }
                    }

                    results
                }

                async fn complete_runs(
                    &self,
                    completions: &[Completion],
                    now: DateTime<Utc>,
                ) -> Vec<Result<Run>> {
                    let results = $crate::meter::store_batch(
                        "complete_runs",
                        batch::complete_runs(self, completions, now),
                    )
                    .await;

                    for (completion, run) in completions.iter().zip(&results) {
                        if let Ok(run) = run {
                            for step in &completion.steps {
                                $crate::meter::step_recorded(
                                    step.status == $crate::model::StepStatus::Failed,
                                );
                            }
                            $crate::meter::run_changed(run);
                        }
                    }

                    results
                }
            }
        };
    };
}
