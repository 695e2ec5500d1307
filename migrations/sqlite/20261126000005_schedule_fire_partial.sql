-- Only scheduled runs have a (schedule_id, scheduled_at): the unique index that makes each
-- due time fire once keeps entries for those runs only (NULLs never conflicted, so
-- uniqueness is unchanged).
drop index runs_schedule_fire_idx;
create unique index runs_schedule_fire_idx on runs (schedule_id, scheduled_at)
    where schedule_id is not null;
