-- The durable core on SQLite: the same tables as on PostgreSQL. Ids and lease tokens are
-- 16-byte blobs (UUID v7 ids sort by time), times are RFC 3339 UTC text (which sorts by
-- time), JSON is text, and a worker's workflows are a JSON array.

create table runs (
    id               blob primary key,
    workflow         text    not null,
    queue            text    not null,
    status           text    not null
        check (status in ('pending', 'running', 'completed', 'failed', 'cancelled')),
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
    updated_at       text    not null
);

-- claim: `where status = 'pending' and queue = ? and available_at <= ? order by available_at`
create index runs_due_idx on runs (queue, available_at) where status = 'pending';
-- watchdog: `where status = 'running' and lease_expires_at < ?`
create index runs_lease_idx on runs (lease_expires_at) where status = 'running';
-- heartbeat and deregister: `where worker_id = ? and status = 'running'`
create index runs_worker_idx on runs (worker_id) where status = 'running';
-- list filters, newest first by id
create index runs_workflow_idx on runs (workflow, id);
create index runs_queue_status_idx on runs (queue, status, id);
create index runs_status_idx on runs (status, id);

create table steps (
    run_id      blob    not null references runs (id) on delete cascade,
    key         text    not null,
    position    integer not null,
    status      text    not null check (status in ('completed', 'failed')),
    output      text,
    error       text,
    attempts    integer not null default 1,
    created_at  text    not null,
    finished_at text,
    -- the journal lookup and first-write-wins
    primary key (run_id, key)
);

create table workers (
    id                blob primary key,
    queue             text    not null,
    workflows         text    not null,
    capacity          integer not null,
    hostname          text,
    status            text    not null check (status in ('online', 'offline')),
    registered_at     text    not null,
    last_heartbeat_at text    not null
);

-- watchdog: `where status = 'online' and last_heartbeat_at < ?`
create index workers_heartbeat_idx on workers (last_heartbeat_at) where status = 'online';
