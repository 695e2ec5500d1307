-- Cron schedules, and the link from a run to the schedule (and due time) that started it.
--
-- Exactly-once firing: the scheduler fires a schedule in one transaction that locks the
-- schedule row under the `version` it planned from (compare-and-set), inserts the runs, and
-- moves `next_fire_at` on; a replica that planned from the same version finds it changed and
-- does nothing. `runs_schedule_fire_idx` backs this up in the data itself: one run per
-- (schedule, due time), whatever the code does.

create table kagzi.schedules (
    id                 uuid primary key,
    -- an optional unique name, usable in place of the id
    name               text unique,
    workflow           text        not null,
    queue              text        not null,
    -- the cron expression (5 fields, or 6 with seconds first) and the IANA zone it is read in
    cron               text        not null,
    time_zone          text        not null,
    input              jsonb       not null,
    retries            integer     not null default 0,
    overlap            text        not null check (overlap in ('skip', 'buffer_one', 'allow_all')),
    -- catch-up after downtime: due times older than the window are dropped (null: no limit),
    -- and at most `catch_up_max` of the most recent ones start
    catch_up_window_ms bigint,
    catch_up_max       integer     not null,
    paused             boolean     not null,
    -- the next due time (null while paused, or when the expression never matches again)
    next_fire_at       timestamptz,
    -- the latest due time that started a run
    last_fired_at      timestamptz,
    -- `buffer_one`: a due time waiting for the schedule's previous run to end
    buffered_at        timestamptz,
    -- bumped by every change; the scheduler's compare-and-set token
    version            bigint      not null,
    created_at         timestamptz not null,
    updated_at         timestamptz not null
);

-- scheduler: `where not paused and (next_fire_at <= $now or buffered_at is not null)` and
-- `select min(next_fire_at) ... where not paused`
create index schedules_due_idx on kagzi.schedules (next_fire_at) where not paused;
create index schedules_buffered_idx on kagzi.schedules (id) where buffered_at is not null;

alter table kagzi.runs add column schedule_id uuid;
alter table kagzi.runs add column scheduled_at timestamptz;

-- one run per (schedule, due time): `on conflict (schedule_id, scheduled_at) do nothing`.
-- Runs started by hand have null columns, and nulls never collide.
create unique index runs_schedule_fire_idx on kagzi.runs (schedule_id, scheduled_at);
-- a schedule's runs, newest first (`where schedule_id = $1 order by id desc`), and the overlap
-- check (`where schedule_id = $1 and status not in (...)`)
create index runs_schedule_idx on kagzi.runs (schedule_id, id desc) where schedule_id is not null;
