-- 0005: the due index carries the PBX host, so the scheduler can walk the
-- due jobs past a host whose workers are all busy (rate-limited, slow)
-- by looking at index entries alone, without reading its rows, and that
-- host's backlog can never hide other hosts' due jobs.

DROP INDEX renewal_jobs_due;
CREATE INDEX renewal_jobs_due ON renewal_jobs (due_at, pbx_host, tenant_id);
