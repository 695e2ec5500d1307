-- Durable primitives: suspended runs (sleeping on a timer, waiting for a signal or a child),
-- parent/child links, idempotent starts, run timeouts, retry policies, and signals.

alter table kagzi.runs drop constraint runs_status_check;
alter table kagzi.runs add constraint runs_status_check check (status in
    ('pending', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled'));

alter table kagzi.runs
    -- when a suspended run wakes by itself (sleep end, signal timeout); null: only an event wakes it
    add column wake_at         timestamptz,
    -- what a suspended run waits for, e.g. `signal:approval` or `child:<id>`
    add column waiting_for     text,
    add column parent_id       uuid references kagzi.runs (id) on delete set null,
    add column idempotency_key text,
    -- the run fails with a timeout once this passes, whatever it is doing
    add column deadline_at     timestamptz,
    -- max_attempts, initial_interval_ms, backoff_coefficient, max_interval_ms, non_retryable_errors
    add column retry_policy    jsonb;

-- claim: suspended runs whose wake time came are claimed like pending ones
-- (`where status in ('pending', 'sleeping', 'waiting') and queue = $1 and available_at <= $now`)
drop index kagzi.runs_due_idx;
create index runs_due_idx on kagzi.runs (queue, available_at)
    where status in ('pending', 'sleeping', 'waiting');
-- idempotent start: `on conflict (idempotency_key)`
create unique index runs_idempotency_idx on kagzi.runs (idempotency_key)
    where idempotency_key is not null;
-- waking a parent, cancelling descendants, listing children: `where parent_id = $1`
create index runs_parent_idx on kagzi.runs (parent_id) where parent_id is not null;
-- watchdog: `where deadline_at < $now and status not in (terminal)`
create index runs_deadline_idx on kagzi.runs (deadline_at)
    where deadline_at is not null and status in ('pending', 'running', 'sleeping', 'waiting');

create table kagzi.signals (
    id           bigint generated always as identity primary key,
    run_id       uuid        not null references kagzi.runs (id) on delete cascade,
    name         text        not null,
    payload      jsonb       not null,
    created_at   timestamptz not null,
    -- the step key that consumed the signal; null while it waits to be received
    consumed_key text
);

-- receive: the oldest unconsumed signal of a name, `where run_id = $1 and name = $2 order by id`
create index signals_unconsumed_idx on kagzi.signals (run_id, name, id) where consumed_key is null;
