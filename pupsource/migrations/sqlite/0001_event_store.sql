-- Event store: the log and the aggregate heads.
-- `{events}` and `{aggregate_heads}` are replaced by validated table names.
-- Idempotent: every statement may run again on an existing schema.

CREATE TABLE IF NOT EXISTS "{events}" (
    -- AUTOINCREMENT: a position is never reused, even after the last row is deleted.
    global_position   INTEGER PRIMARY KEY AUTOINCREMENT,
    bounded_context   TEXT    NOT NULL,
    aggregate_type    TEXT    NOT NULL,
    aggregate_id      TEXT    NOT NULL,
    aggregate_version INTEGER NOT NULL CHECK (aggregate_version >= 1),
    event_id          BLOB    NOT NULL UNIQUE,
    event_type        TEXT    NOT NULL,
    event_version     INTEGER NOT NULL,
    payload           TEXT    NOT NULL,
    metadata          TEXT    NOT NULL,
    causation_id      TEXT,
    correlation_id    TEXT,
    trace_id          TEXT,
    -- SipHash-1-3 of aggregate_id under the fixed key (pupsource::partition).
    partition_hash    INTEGER NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    created_at        INTEGER NOT NULL,
    UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version)
);

CREATE TABLE IF NOT EXISTS "{aggregate_heads}" (
    bounded_context TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) WITHOUT ROWID;
