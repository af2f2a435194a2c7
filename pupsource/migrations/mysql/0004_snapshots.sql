-- Aggregate snapshots: the newest folded state of a stream, written in the transaction of the
-- append that produced it (see pupsource::aggregate). `{snapshots}` is replaced by a validated
-- table name. Idempotent.

CREATE TABLE IF NOT EXISTS `{snapshots}` (
    bounded_context   VARBINARY(255)  NOT NULL,
    aggregate_type    VARBINARY(255)  NOT NULL,
    aggregate_id      VARBINARY(1024) NOT NULL,
    -- The Rust name of the aggregate whose state this is.
    state_type        VARBINARY(255)  NOT NULL,
    -- The stream version the state was folded up to.
    aggregate_version BIGINT          NOT NULL,
    -- The version of the state's schema, declared on the aggregate.
    snapshot_version  INT             NOT NULL,
    -- The state as JSON text.
    state             LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at        DATETIME(6)     NOT NULL,
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id, state_type),
    CONSTRAINT `{snapshots}_version_check` CHECK (aggregate_version >= 1)
) ENGINE = InnoDB;
