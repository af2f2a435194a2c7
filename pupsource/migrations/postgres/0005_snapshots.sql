-- Aggregate snapshots: the newest folded state of a stream, written in the transaction of the
-- append that produced it (see pupsource::aggregate). One row per stream and aggregate type (two
-- aggregates folding one stream keep their own): a snapshot of another `snapshot_version`, or
-- one that no longer decodes, is ignored on load and replaced on the next write. `{snapshots}` is replaced by a validated table name.
-- Idempotent: every statement may run again on an existing schema.

CREATE TABLE IF NOT EXISTS "{snapshots}" (
    bounded_context   TEXT        NOT NULL,
    aggregate_type    TEXT        NOT NULL,
    aggregate_id      TEXT        NOT NULL,
    -- The Rust name of the aggregate whose state this is.
    state_type        TEXT        NOT NULL,
    -- The stream version the state was folded up to.
    aggregate_version BIGINT      NOT NULL CHECK (aggregate_version >= 1),
    -- The version of the state's schema, declared on the aggregate.
    snapshot_version  INTEGER     NOT NULL,
    -- `json`, not `jsonb`: the state is stored and returned as written.
    state             JSON        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, state_type)
);
