-- Projections: checkpoints per (projection, partition count, partition), with their leases,
-- and parked events. `{checkpoints}` and `{dead_letters}` are replaced by validated names.
-- Times are UTC (`UTC_TIMESTAMP(6)`, the database's clock). Idempotent.

CREATE TABLE IF NOT EXISTS `{checkpoints}` (
    projection      VARBINARY(255) NOT NULL,
    partition_count INT            NOT NULL,
    `partition`     INT            NOT NULL,
    -- The position of the last event handled (or skipped) by this partition; transaction_id
    -- is always 0 (position order is commit order).
    transaction_id  BIGINT         NOT NULL DEFAULT 0,
    global_position BIGINT         NOT NULL DEFAULT 0,
    updated_at      DATETIME(6)    NOT NULL,
    -- The last handler failure since the last successful batch, for `status`.
    last_error      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    last_error_at   DATETIME(6),
    -- The lease: who holds the partition, the fencing token of that claim, and until when.
    owner           VARBINARY(255),
    epoch           BIGINT         NOT NULL DEFAULT 0,
    lease_until     DATETIME(6),
    PRIMARY KEY (projection, partition_count, `partition`),
    CONSTRAINT `{checkpoints}_partition_check`
        CHECK (partition_count >= 1 AND `partition` >= 0 AND `partition` < partition_count)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS `{dead_letters}` (
    projection      VARBINARY(255)  NOT NULL,
    transaction_id  BIGINT          NOT NULL,
    global_position BIGINT          NOT NULL,
    bounded_context VARBINARY(255)  NOT NULL,
    aggregate_type  VARBINARY(255)  NOT NULL,
    aggregate_id    VARBINARY(1024) NOT NULL,
    event_type      VARBINARY(255)  NOT NULL,
    -- NULL when the event was parked only because an earlier event of its aggregate was.
    error           TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
    attempts        INT             NOT NULL,
    parked_at       DATETIME(6)     NOT NULL,
    PRIMARY KEY (projection, global_position),
    KEY `{dead_letters}_aggregate_idx` (projection, bounded_context, aggregate_type, aggregate_id)
) ENGINE = InnoDB;
