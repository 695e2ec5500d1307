-- A claim takes the oldest due runs: `order by available_at, id limit ?`. With `id` in the
-- index the scan stops after the runs it takes instead of sorting every due run of the
-- queue, whatever the backlog.
drop index runs_due_idx;
create index runs_due_idx on runs (queue, available_at, id)
    where status in ('pending', 'sleeping', 'waiting');
