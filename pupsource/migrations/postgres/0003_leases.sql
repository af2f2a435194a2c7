-- Partition leases: several processes share a projection's partitions through these columns
-- and the live workers table. `{checkpoints}` and `{workers}` are replaced by validated names.
-- Idempotent: every statement may run again on an existing schema.

-- Who holds the partition, the fencing token of that claim (incremented on every claim), and
-- until when the lease holds by the database clock. NULL owner: free.
ALTER TABLE "{checkpoints}" ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE "{checkpoints}" ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "{checkpoints}" ADD COLUMN IF NOT EXISTS lease_until TIMESTAMPTZ;

-- One row per live worker process of a projection, renewed by its heartbeat. A worker whose
-- row expired (it missed two heartbeats) no longer counts for the fair share.
CREATE TABLE IF NOT EXISTS "{workers}" (
    projection      TEXT        NOT NULL,
    worker_id       TEXT        NOT NULL,
    partition_count INTEGER     NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    CONSTRAINT "{workers}_pkey" PRIMARY KEY (projection, worker_id)
);
