-- Where each worker process runs: its host (on Linux with its boot id and PID namespace) and
-- its process id, recorded with its registration. A restarted process takes over at once the
-- partitions of a process of its own host that is gone, instead of waiting for their leases to
-- expire. `{workers}` is replaced by a validated name. Idempotent: every statement may run
-- again on an existing schema.

ALTER TABLE "{workers}" ADD COLUMN IF NOT EXISTS host TEXT;
ALTER TABLE "{workers}" ADD COLUMN IF NOT EXISTS pid BIGINT;
