-- Cron schedules on SQLite: the same table and run columns as on PostgreSQL (see the
-- PostgreSQL migration for what each column means). Times are RFC 3339 UTC text.

create table schedules (
    id                 blob primary key,
    name               text unique,
    workflow           text    not null,
    queue              text    not null,
    cron               text    not null,
    time_zone          text    not null,
    input              text    not null,
    retries            integer not null default 0,
    overlap            text    not null check (overlap in ('skip', 'buffer_one', 'allow_all')),
    catch_up_window_ms integer,
    catch_up_max       integer not null,
    paused             integer not null,
    next_fire_at       text,
    last_fired_at      text,
    buffered_at        text,
    version            integer not null,
    created_at         text    not null,
    updated_at         text    not null
);

-- scheduler: `where not paused and (next_fire_at <= ? or buffered_at is not null)` and
-- `select min(next_fire_at) ... where not paused`
create index schedules_due_idx on schedules (next_fire_at) where not paused;
create index schedules_buffered_idx on schedules (id) where buffered_at is not null;

alter table runs add column schedule_id blob;
alter table runs add column scheduled_at text;

-- one run per (schedule, due time): `on conflict (schedule_id, scheduled_at) do nothing`
create unique index runs_schedule_fire_idx on runs (schedule_id, scheduled_at);
-- a schedule's runs, newest first, and the overlap check
create index runs_schedule_idx on runs (schedule_id, id) where schedule_id is not null;
