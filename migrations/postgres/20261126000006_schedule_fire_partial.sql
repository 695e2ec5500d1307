-- Only scheduled runs have a (schedule_id, scheduled_at). The unique index that makes each
-- due time fire once held an entry for every run, and each start, claim and completion of
-- an unscheduled run wrote one that nothing ever looked up. Keep entries for scheduled runs
-- only (NULLs never conflicted, so uniqueness is unchanged).
drop index kagzi.runs_schedule_fire_idx;
create unique index runs_schedule_fire_idx on kagzi.runs (schedule_id, scheduled_at)
    where schedule_id is not null;
