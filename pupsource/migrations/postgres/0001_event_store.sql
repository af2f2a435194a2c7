-- Event store: the log and the aggregate heads.
-- `{events}` and `{aggregate_heads}` are replaced by validated table names.
-- Idempotent: every statement may run again on an existing schema.

CREATE TABLE IF NOT EXISTS "{events}" (
    global_position   BIGINT GENERATED ALWAYS AS IDENTITY,
    -- The appending transaction; reads are ordered by (transaction_id, global_position) and
    -- fenced below the oldest transaction still in flight.
    transaction_id    XID8        NOT NULL DEFAULT pg_current_xact_id(),
    bounded_context   TEXT        NOT NULL,
    aggregate_type    TEXT        NOT NULL,
    aggregate_id      TEXT        NOT NULL,
    aggregate_version BIGINT      NOT NULL,
    event_id          UUID        NOT NULL,
    event_type        TEXT        NOT NULL,
    event_version     INTEGER     NOT NULL,
    -- `json`, not `jsonb`: the payload is stored and returned as written.
    payload           JSON        NOT NULL,
    metadata          JSON        NOT NULL,
    causation_id      TEXT,
    correlation_id    TEXT,
    trace_id          TEXT,
    -- SipHash-1-3 of aggregate_id under the fixed key (pupsource::partition).
    partition_hash    BIGINT      NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    CONSTRAINT "{events}_pkey" PRIMARY KEY (global_position),
    CONSTRAINT "{events}_event_id_key" UNIQUE (event_id),
    CONSTRAINT "{events}_version_key"
        UNIQUE (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    CONSTRAINT "{events}_version_check" CHECK (aggregate_version >= 1)
);

CREATE INDEX IF NOT EXISTS "{events}_log_order_idx"
    ON "{events}" (transaction_id, global_position);

CREATE TABLE IF NOT EXISTS "{aggregate_heads}" (
    bounded_context TEXT   NOT NULL,
    aggregate_type  TEXT   NOT NULL,
    aggregate_id    TEXT   NOT NULL,
    version         BIGINT NOT NULL,
    -- Transaction of the last append: an older transaction may not append after it.
    transaction_id  XID8   NOT NULL,
    CONSTRAINT "{aggregate_heads}_pkey" PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
);
