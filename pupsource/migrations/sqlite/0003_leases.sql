-- Partition leases: processes share a projection's partitions through the lease columns of
-- the checkpoints (added by the store when missing: SQLite has no `ADD COLUMN IF NOT EXISTS`)
-- and the live workers table. `{checkpoints}` and `{workers}` are replaced by validated names.
-- Idempotent: every statement may run again on an existing schema.

-- One row per live worker process of a projection, renewed by its heartbeat. A worker whose
-- row expired (it missed two heartbeats) no longer counts for the fair share. Times are
-- microseconds since the Unix epoch, UTC.
CREATE TABLE IF NOT EXISTS "{workers}" (
    projection      TEXT    NOT NULL,
    worker_id       TEXT    NOT NULL,
    partition_count INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    heartbeat_at    INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    PRIMARY KEY (projection, worker_id)
) WITHOUT ROWID;

-- Fencing tokens: every claim of a partition takes its epoch from this counter, so an
-- (owner, epoch) pair never repeats, even after checkpoint rows were deleted and created again.
CREATE TABLE IF NOT EXISTS "{checkpoints}_epoch" (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO "{checkpoints}_epoch" (id, value) VALUES (1, 0) ON CONFLICT DO NOTHING;
