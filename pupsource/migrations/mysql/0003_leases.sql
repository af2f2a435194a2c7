-- Partition leases: the live workers of each projection, the epoch counter and the
-- projection locks. `{checkpoints}` and `{workers}` are replaced by validated names. Idempotent.

-- One row per live worker process of a projection, renewed by its heartbeat.
CREATE TABLE IF NOT EXISTS `{workers}` (
    projection      VARBINARY(255) NOT NULL,
    worker_id       VARBINARY(255) NOT NULL,
    partition_count INT            NOT NULL,
    started_at      DATETIME(6)    NOT NULL,
    heartbeat_at    DATETIME(6)    NOT NULL,
    expires_at      DATETIME(6)    NOT NULL,
    -- Where the worker runs: a restarted process takes over at once the partitions of a
    -- process of its own host that is gone.
    host            VARBINARY(255),
    pid             BIGINT,
    PRIMARY KEY (projection, worker_id)
) ENGINE = InnoDB;

-- Fencing tokens: every claim takes its epoch from this counter, so an (owner, epoch) pair
-- never repeats, even after checkpoint rows were deleted and created again.
CREATE TABLE IF NOT EXISTS `{checkpoints}_epoch` (
    id    TINYINT NOT NULL,
    value BIGINT  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT `{checkpoints}_epoch_single_row` CHECK (id = 1)
) ENGINE = InnoDB;

INSERT INTO `{checkpoints}_epoch` (id, value) VALUES (1, 0) ON DUPLICATE KEY UPDATE id = id;

-- One row per projection, locked by whatever decides its partitions (heartbeats, creating
-- checkpoint rows), so those never interleave.
CREATE TABLE IF NOT EXISTS `{checkpoints}_lock` (
    projection VARBINARY(255) NOT NULL,
    PRIMARY KEY (projection)
) ENGINE = InnoDB;
