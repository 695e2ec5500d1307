-- A claim takes the oldest due runs: `order by available_at, id limit $n`. An index on
-- (queue, available_at) gives only the first key's order, so when statistics are thin (a
-- new table, a table not yet analyzed) the planner read every due run of the queue and
-- sorted them for each claim: with a backlog of 1,000 runs, a claim read all 1,000 to take
-- 10. With `id` in the index the scan stops after the runs it takes, whatever the backlog.
drop index kagzi.runs_due_idx;
create index runs_due_idx on kagzi.runs (queue, available_at, id)
    where status in ('pending', 'sleeping', 'waiting');
