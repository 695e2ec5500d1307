-- Safe change and repair: worker build ids and pinned runs, retry and fork of runs, and the
-- retention reaper.

-- the run this one was forked from (POST /v1/runs/{id}/fork); its journal began as a copy
alter table runs add column forked_from blob references runs (id) on delete set null;
-- the build id of the worker that first claimed the run
alter table runs add column build_id text;
-- a pinned run is claimed only by workers of its build id (once it has one)
alter table runs add column pinned integer not null default 0;
-- attempts made before the last manual retry: the retry policy counts from here
alter table runs add column attempt_base integer not null default 0;

alter table workers add column build_id text;
-- runs of these workflows (a JSON array) this worker claims first are pinned to its build
alter table workers add column pinned_workflows text not null default '[]';

-- the reaper: `where status = ?1 and finished_at < ?2 order by finished_at limit ?3`
create index runs_ended_idx on runs (status, finished_at)
    where status in ('completed', 'failed', 'cancelled');

-- patch retirement: `where key = ?1` over every run's journal
create index steps_patch_idx on steps (key) where key like 'patch:%';

-- a fork's source: `where forked_from = ?1`
create index runs_forked_idx on runs (forked_from) where forked_from is not null;
