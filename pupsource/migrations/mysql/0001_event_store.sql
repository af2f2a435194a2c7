-- Event store: the log, its position counter and the aggregate heads (MySQL 8 / MariaDB 10.6+).
-- `{events}` and `{aggregate_heads}` are replaced by validated table names.
-- Idempotent: every statement may run again on an existing schema.
--
-- Names and ids are VARBINARY: compared byte for byte (a case-insensitive collation would make
-- `User` and `user` one stream), and short enough in bytes for InnoDB's 3072-byte keys.

CREATE TABLE IF NOT EXISTS `{events}` (
    -- Taken from `{events}_log` under its row lock (see `store/mysql.rs`): position order is
    -- commit order.
    global_position   BIGINT          NOT NULL,
    bounded_context   VARBINARY(255)  NOT NULL,
    aggregate_type    VARBINARY(255)  NOT NULL,
    aggregate_id      VARBINARY(1024) NOT NULL,
    aggregate_version BIGINT          NOT NULL,
    event_id          BINARY(16)      NOT NULL,
    event_type        VARBINARY(255)  NOT NULL,
    event_version     INT             NOT NULL,
    -- JSON text as written (MySQL's JSON type would re-format it).
    payload           LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    metadata          LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    causation_id      VARBINARY(1024),
    correlation_id    VARBINARY(1024),
    trace_id          VARBINARY(1024),
    -- SipHash-1-3 of aggregate_id under the fixed key (pupsource::partition).
    partition_hash    BIGINT          NOT NULL,
    -- Microseconds since the Unix epoch, UTC (DATETIME stops at year 1000).
    created_at        BIGINT          NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE KEY `{events}_event_id_key` (event_id),
    UNIQUE KEY `{events}_version_key` (bounded_context, aggregate_type, aggregate_id, aggregate_version),
    CONSTRAINT `{events}_version_check` CHECK (aggregate_version >= 1)
) ENGINE = InnoDB;

-- The last position handed out. Every append moves it on under its row lock, which it holds
-- until it commits: appends take positions in the order they commit.
CREATE TABLE IF NOT EXISTS `{events}_log` (
    id       TINYINT NOT NULL,
    position BIGINT  NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT `{events}_log_single_row` CHECK (id = 1)
) ENGINE = InnoDB;

INSERT INTO `{events}_log` (id, position)
    SELECT 1, COALESCE(MAX(global_position), 0) FROM `{events}`
    ON DUPLICATE KEY UPDATE id = id;

CREATE TABLE IF NOT EXISTS `{aggregate_heads}` (
    bounded_context VARBINARY(255)  NOT NULL,
    aggregate_type  VARBINARY(255)  NOT NULL,
    aggregate_id    VARBINARY(1024) NOT NULL,
    version         BIGINT          NOT NULL,
    PRIMARY KEY (bounded_context, aggregate_type, aggregate_id)
) ENGINE = InnoDB;
