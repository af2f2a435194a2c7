-- Projections: checkpoints per (projection, partition count, partition) and parked events.
-- `{checkpoints}` and `{dead_letters}` are replaced by validated table names.
-- Idempotent: every statement may run again on an existing schema.

CREATE TABLE IF NOT EXISTS "{checkpoints}" (
    projection      TEXT    NOT NULL,
    partition_count INTEGER NOT NULL CHECK (partition_count >= 1),
    partition       INTEGER NOT NULL CHECK (partition >= 0 AND partition < partition_count),
    -- The position of the last event handled (or skipped) by this partition.
    transaction_id  INTEGER NOT NULL DEFAULT 0,
    global_position INTEGER NOT NULL DEFAULT 0,
    -- Microseconds since the Unix epoch, UTC.
    updated_at      INTEGER NOT NULL,
    -- The last handler failure since the last successful batch, for `status`.
    last_error      TEXT,
    last_error_at   INTEGER,
    PRIMARY KEY (projection, partition_count, partition)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS "{dead_letters}" (
    projection      TEXT    NOT NULL,
    transaction_id  INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    bounded_context TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    -- NULL when the event was parked only because an earlier event of its aggregate was.
    error           TEXT,
    attempts        INTEGER NOT NULL,
    parked_at       INTEGER NOT NULL,
    PRIMARY KEY (projection, global_position)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS "{dead_letters}_aggregate_idx"
    ON "{dead_letters}" (projection, bounded_context, aggregate_type, aggregate_id);
