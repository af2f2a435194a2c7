-- Which migrations each set of tables has had, keyed by the set's table names: a process that
-- starts on an up-to-date schema finds so with one read and runs no DDL. Re-running the
-- statements above would take `ShareLock` on `{events}` and `AccessExclusiveLock` on
-- `{checkpoints}` and `{workers}` at every start: waiting for every writer, blocking every
-- append and heartbeat meanwhile, and deadlocking with heartbeats (which lock `{workers}`, then
-- `{checkpoints}`). Idempotent: every statement may run again on an existing schema.

CREATE TABLE IF NOT EXISTS "{events}_schema" (
    tables  TEXT    NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
);
