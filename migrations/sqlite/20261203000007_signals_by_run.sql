-- GET /v1/runs/{id}/signals lists a run's signals, received ones too:
-- `where run_id = ?1 order by id desc limit ?2`. The unconsumed index covers waiting ones only.
create index signals_run_idx on signals (run_id, id);
