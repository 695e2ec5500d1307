-- The durable core: runs, their step journal, and workers.
-- Everything lives in the `kagzi` schema so Kagzi never clashes with the host application.

create table kagzi.runs (
    id               uuid primary key,
    workflow         text        not null,
    queue            text        not null,
    status           text        not null
        check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
    input            jsonb       not null,
    output           jsonb,
    error            text,
    -- number of times the run was claimed by a worker
    attempts         integer     not null default 0,
    -- how many times a failed run is re-queued
    retries          integer     not null default 0,
    -- when a pending run becomes due (start delay, retry backoff)
    available_at     timestamptz not null,
    -- the current lease: fencing token, expiry and holder (null unless running)
    lease_token      uuid,
    lease_expires_at timestamptz,
    worker_id        uuid,
    created_at       timestamptz not null,
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz not null
);

-- claim: `where status = 'pending' and queue = $1 and available_at <= $now order by available_at`
create index runs_due_idx on kagzi.runs (queue, available_at) where status = 'pending';
-- watchdog: `where status = 'running' and lease_expires_at < $now`
create index runs_lease_idx on kagzi.runs (lease_expires_at) where status = 'running';
-- heartbeat and deregister: `where worker_id = $1 and status = 'running'`
create index runs_worker_idx on kagzi.runs (worker_id) where status = 'running';
-- list filters, newest first by id (uuid v7 is time ordered)
create index runs_workflow_idx on kagzi.runs (workflow, id desc);
create index runs_queue_status_idx on kagzi.runs (queue, status, id desc);
create index runs_status_idx on kagzi.runs (status, id desc);

create table kagzi.steps (
    run_id      uuid        not null references kagzi.runs (id) on delete cascade,
    key         text        not null,
    position    integer     not null,
    status      text        not null check (status in ('completed', 'failed')),
    output      jsonb,
    error       text,
    attempts    integer     not null default 1,
    created_at  timestamptz not null,
    finished_at timestamptz,
    -- the journal lookup and first-write-wins: `where run_id = any($1)`, `on conflict (run_id, key)`
    primary key (run_id, key)
);

create table kagzi.workers (
    id                uuid primary key,
    queue             text        not null,
    workflows         text[]      not null,
    capacity          integer     not null,
    hostname          text,
    status            text        not null check (status in ('online', 'offline')),
    registered_at     timestamptz not null,
    last_heartbeat_at timestamptz not null
);

-- watchdog: `where status = 'online' and last_heartbeat_at < $cutoff`
create index workers_heartbeat_idx on kagzi.workers (last_heartbeat_at) where status = 'online';
