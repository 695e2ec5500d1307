-- no-transaction
-- Durable primitives: suspended runs (sleeping on a timer, waiting for a signal or a child),
-- parent/child links, idempotent starts, run timeouts, retry policies, and signals.
-- SQLite cannot change a check constraint in place, so `runs` is rebuilt the documented way:
-- foreign keys off (outside a transaction), copy, swap, check, foreign keys on.

pragma foreign_keys = off;

begin;

create table runs_new (
    id               blob primary key,
    workflow         text    not null,
    queue            text    not null,
    status           text    not null check (status in
        ('pending', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled')),
    input            text    not null,
    output           text,
    error            text,
    attempts         integer not null default 0,
    retries          integer not null default 0,
    available_at     text    not null,
    lease_token      blob,
    lease_expires_at text,
    worker_id        blob,
    created_at       text    not null,
    started_at       text,
    finished_at      text,
    updated_at       text    not null,
    wake_at          text,
    waiting_for      text,
    parent_id        blob references runs (id) on delete set null,
    idempotency_key  text,
    deadline_at      text,
    retry_policy     text
);

insert into runs_new (id, workflow, queue, status, input, output, error, attempts, retries,
                      available_at, lease_token, lease_expires_at, worker_id, created_at,
                      started_at, finished_at, updated_at)
select id, workflow, queue, status, input, output, error, attempts, retries, available_at,
       lease_token, lease_expires_at, worker_id, created_at, started_at, finished_at, updated_at
from runs;

drop table runs;
alter table runs_new rename to runs;

-- claim: `where status in ('pending', 'sleeping', 'waiting') and queue = ? and available_at <= ?`
create index runs_due_idx on runs (queue, available_at)
    where status in ('pending', 'sleeping', 'waiting');
-- watchdog: `where status = 'running' and lease_expires_at < ?`
create index runs_lease_idx on runs (lease_expires_at) where status = 'running';
-- heartbeat and deregister: `where worker_id = ? and status = 'running'`
create index runs_worker_idx on runs (worker_id) where status = 'running';
-- list filters, newest first by id
create index runs_workflow_idx on runs (workflow, id);
create index runs_queue_status_idx on runs (queue, status, id);
create index runs_status_idx on runs (status, id);
-- idempotent start
create unique index runs_idempotency_idx on runs (idempotency_key) where idempotency_key is not null;
-- waking a parent, cancelling descendants, listing children
create index runs_parent_idx on runs (parent_id) where parent_id is not null;
-- watchdog: run timeouts
create index runs_deadline_idx on runs (deadline_at)
    where deadline_at is not null and status in ('pending', 'running', 'sleeping', 'waiting');

create table signals (
    id           integer primary key autoincrement,
    run_id       blob    not null references runs (id) on delete cascade,
    name         text    not null,
    payload      text    not null,
    created_at   text    not null,
    consumed_key text
);

-- receive: the oldest unconsumed signal of a name
create index signals_unconsumed_idx on signals (run_id, name, id) where consumed_key is null;

pragma foreign_key_check;

commit;

pragma foreign_keys = on;
