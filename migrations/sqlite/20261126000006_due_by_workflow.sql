-- A claim takes the oldest due runs of its worker's workflows. With `workflow` only a filter
-- on an index of (queue, available_at, id), a claim read past every due run of the queue's
-- other workflows first: beside a backlog of 100,000 runs of a workflow no worker polled,
-- each claim of another workflow took 270 ms. With `workflow` in the index, each of a
-- worker's workflows is read in due order and the scan stops after the runs it takes.
drop index runs_due_idx;
create index runs_due_idx on runs (queue, workflow, available_at, id)
    where status in ('pending', 'sleeping', 'waiting');
