//! Databases restored from another PostgreSQL cluster: detection and an order-preserving repair.
//!
//! The log order is `(transaction_id, global_position)`, and transaction ids count per
//! physical cluster. A dump restored into a cluster whose counter is lower (or a move by
//! logical replication) keeps ids that cluster has not reached yet: reads, fenced below the
//! oldest transaction in flight, return nothing past them, and the per-aggregate guard refuses
//! every append to an existing stream (the appender's id is lower than the head's).
//!
//! # Detection
//! A statement sees another transaction's rows only if that transaction finished before the
//! statement's snapshot, and every finished transaction's id is below the snapshot's
//! `pg_snapshot_xmax` (the next id to be given out). So, read by a transaction that has written
//! nothing, a stored id at or above xmax was given out by another cluster. `migrate` (after
//! its own commit), the runner and the repair (before it writes) compare, in one statement,
//! xmax with the largest
//! id of the log (one step down the log-order index), of the checkpoints and of the parked
//! events. Aggregate heads are not read: each holds the id of the append that wrote its
//! stream's last event, so the log's largest id bounds them, and reading them would cost a
//! scan of one row per stream at every start. Reading xmax takes no transaction id, unlike
//! `pg_current_xact_id()`.
//!
//! # Repair
//! In one transaction, under the migration lock, with the store's four tables locked against
//! writers (`EXCLUSIVE`: reads go on):
//!
//! 1. Sort the log by its stored `(transaction_id, global_position)` and cut it into maximal
//!    runs in which `global_position` increases. Run `i` (from 0) gets the new id
//!    `FIRST_ID + i`. One pass of window functions writes the mapping into a temporary table.
//! 2. Rewrite each event's id; each checkpoint and parked event becomes the new pair of the
//!    last event at or before it in the old order (none: `(0, 0)`, the start); each aggregate
//!    head gets the largest new id of its stream's events.
//!
//! **The order is kept exactly.** Take events `a` before `b` in the old order. Run indexes never
//! decrease along the old order, so `run(a) <= run(b)`. If `run(a) < run(b)`, `a`'s new id is
//! smaller. If they share a run, their new ids are equal and, positions increasing inside a
//! run, `a`'s position is smaller. Either way `a` is before `b` in the new order, and since the
//! map is one-to-one on events (positions are unique) the new order is the old one. A
//! checkpoint covers, in both orders, exactly the events up to the one it was mapped to, so no
//! projection skips or repeats an event; parked events are events, so they map to themselves.
//! Per-aggregate order follows from the global one, and each head is again the id of its
//! stream's last append.
//!
//! **New appends sort after the repaired log.** Every new id is below the oldest transaction in
//! flight (`pg_snapshot_xmin`, measured after the table locks were granted): every transaction
//! that may still append has, or will get, a larger id; readers see the repaired log at once;
//! the guard lets new transactions append to every stream. Runs, not distinct stored ids, get
//! new ids, so the log needs as few ids as its order allows: one when positions never went
//! backwards. If the cluster has not given out that many ids yet, short transactions that only
//! take an id advance its counter first (asynchronous commits: the repair's own commit, later
//! in the write-ahead log, makes them durable); if an open transaction holds the horizon back,
//! the repair waits for it, naming it in a warning.
//!
//! A store that is not ahead of the cluster is left untouched, so the repair is idempotent.
//!
//! # Events appended between the restore and the repair
//! Such events carry ids of the new cluster, and nothing tells them apart from the restored
//! ones that happen to have low ids: the repair keeps their place in the stored order, which
//! can be before events projections had already handled, so projections would skip them. The
//! repair must therefore run before the application appends again: every process that starts
//! through `migrate` is refused until then.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgConnection, Postgres};

use super::PostgresStore;
use crate::error::{Error, Result};
use crate::store::Backend as _;
use crate::store::RestoreRepair;

/// The first rewritten id: the lowest id PostgreSQL gives a transaction
/// (`FirstNormalTransactionId`), above the start position's 0.
const FIRST_ID: i64 = 3;

/// How often the repair looks again at a transaction that holds the horizon back.
const HORIZON_POLL: Duration = Duration::from_millis(100);

/// How often the repair repeats its warning about such a transaction.
const HORIZON_WARN_EVERY: Duration = Duration::from_secs(10);

/// At most this many transactions per statement when advancing the counter (a PL/pgSQL loop
/// counts in 32-bit integers).
const ADVANCE_CHUNK: i64 = 1_000_000;

/// One try at the repair.
enum Attempt {
    Done(RestoreRepair),
    /// The new ids need the horizon (the oldest transaction in flight) to reach `needed`;
    /// `next` is the next id the cluster gives out.
    NoRoom {
        needed: i64,
        next: i64,
    },
}

impl PostgresStore {
    /// Repairs a database restored (`pg_dump` / `pg_restore`) or moved (logical replication)
    /// from another PostgreSQL cluster, which `migrate` and the runner refuse with
    /// [`Error::RestoredDatabase`]: rewrites the transaction ids stored in the log, the
    /// aggregate heads, the checkpoints and the parked events so that they are below this
    /// cluster's, keeping the log order exactly. Projections then resume where they stopped,
    /// with nothing skipped or repeated, and appends to existing streams succeed again.
    ///
    /// Run it once after the restore, before the application appends again (events appended
    /// in between could be placed before what projections had already handled). It creates
    /// the tables if they are missing, like `migrate`, and runs in one transaction that keeps
    /// writers out; it rewrites every event row, so plan for a table rewrite on a large log.
    /// On a database that needs no repair it changes nothing, so running it twice is safe.
    /// It may wait for a transaction that is still open from before it started (a warning
    /// names it).
    ///
    /// ```no_run
    /// use pupsource::{EventStore, PostgresStore};
    ///
    /// # async fn demo() -> pupsource::Result<()> {
    /// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
    /// if let Err(pupsource::Error::RestoredDatabase { .. }) = store.migrate().await {
    ///     let repair = store.repair_restore().await?;
    ///     println!("{repair}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The database's errors; the store's tables are then as they were.
    pub async fn repair_restore(&self) -> Result<RestoreRepair> {
        let mut advanced = 0;
        loop {
            match self.try_repair().await? {
                Attempt::Done(summary) => {
                    return Ok(RestoreRepair { counter_advanced_by: advanced, ..summary });
                }
                Attempt::NoRoom { needed, next } => {
                    if next < needed {
                        self.advance_counter(needed - next).await?;
                        advanced += (needed - next).unsigned_abs();
                    }
                    self.wait_for_horizon(needed).await?;
                }
            }
        }
    }

    /// Refuses a database whose stored transaction ids are ahead of this cluster.
    ///
    /// # Errors
    /// [`Error::RestoredDatabase`]; the database's errors.
    pub(crate) async fn check_transaction_ids(&self) -> Result<()> {
        let mut conn = self.inner.pool.acquire().await?;
        match self.ahead(&mut conn).await? {
            Some((stored, current)) => Err(Error::RestoredDatabase {
                stored: stored.unsigned_abs(),
                current: current.unsigned_abs(),
            }),
            None => Ok(()),
        }
    }

    /// The largest stored id and the next id of the cluster, if the former is not below the
    /// latter. One statement, so both come from one snapshot.
    async fn ahead(&self, conn: &mut PgConnection) -> Result<Option<(i64, i64)>> {
        // `e.transaction_id`, qualified: unqualified, ORDER BY would name the output column.
        let sql = self.inner.tables.render(
            "SELECT GREATEST( \
               (SELECT e.transaction_id::text::bigint FROM \"{events}\" AS e \
                ORDER BY e.transaction_id DESC LIMIT 1), \
               (SELECT max(transaction_id) FROM \"{checkpoints}\"), \
               (SELECT max(transaction_id) FROM \"{dead_letters}\")), \
             pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        );
        let (stored, current): (Option<i64>, i64) =
            sqlx::query_as(AssertSqlSafe(sql)).fetch_one(conn).await?;
        Ok(stored.filter(|stored| *stored >= current).map(|stored| (stored, current)))
    }

    /// The repair in one transaction, or why it cannot be done yet.
    async fn try_repair(&self) -> Result<Attempt> {
        let tables = &self.inner.tables;
        let mut tx = self.inner.pool.begin().await?;
        self.apply_migrations(&mut tx).await?;
        sqlx::raw_sql(AssertSqlSafe(tables.render(
            "LOCK TABLE \"{events}\", \"{aggregate_heads}\", \"{checkpoints}\", \"{dead_letters}\" \
             IN EXCLUSIVE MODE",
        )))
        .execute(&mut *tx)
        .await?;
        if self.ahead(&mut tx).await?.is_none() {
            // Keeps what the migrations created.
            tx.commit().await?;
            return Ok(Attempt::Done(RestoreRepair::default()));
        }
        // Measured with the locks held: every transaction that can still append is at or
        // above it.
        let (oldest, next): (i64, i64) = sqlx::query_as(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint \
             FROM pg_current_snapshot() AS s",
        )
        .fetch_one(&mut *tx)
        .await?;

        sqlx::raw_sql(AssertSqlSafe(tables.render(&format!(
            "CREATE TEMPORARY TABLE pupsource_restore_map ON COMMIT DROP AS \
             SELECT global_position, old_id, {FIRST_ID} + count(*) FILTER (WHERE descends) \
               OVER (ORDER BY old_id, global_position ROWS UNBOUNDED PRECEDING) AS new_id \
             FROM (SELECT global_position, transaction_id::text::bigint AS old_id, \
                     global_position < lag(global_position) \
                       OVER (ORDER BY transaction_id, global_position) AS descends \
                   FROM \"{{events}}\") AS log; \
             CREATE INDEX ON pg_temp.pupsource_restore_map (old_id, global_position); \
             ANALYZE pg_temp.pupsource_restore_map"
        ))))
        .execute(&mut *tx)
        .await?;
        let last_id: Option<i64> =
            sqlx::query_scalar("SELECT max(new_id) FROM pg_temp.pupsource_restore_map")
                .fetch_one(&mut *tx)
                .await?;
        if let Some(last_id) = last_id.filter(|id| *id >= oldest) {
            tx.rollback().await?;
            return Ok(Attempt::NoRoom { needed: last_id + 1, next });
        }

        let events = execute(
            &mut tx,
            tables.render(
                "UPDATE \"{events}\" AS e SET transaction_id = m.new_id::text::xid8 \
                 FROM pg_temp.pupsource_restore_map AS m \
                 WHERE e.global_position = m.global_position \
                   AND e.transaction_id <> m.new_id::text::xid8",
            ),
        )
        .await?;
        // The largest id of each stream is that of its last append (the guard keeps ids in
        // version order), read back from the rewritten log.
        let heads = execute(
            &mut tx,
            tables.render(
                "UPDATE \"{aggregate_heads}\" AS h SET transaction_id = last.id::text::xid8 \
                 FROM (SELECT bounded_context, aggregate_type, aggregate_id, \
                         max(transaction_id::text::bigint) AS id \
                       FROM \"{events}\" GROUP BY bounded_context, aggregate_type, aggregate_id) AS last \
                 WHERE (h.bounded_context, h.aggregate_type, h.aggregate_id) \
                     = (last.bounded_context, last.aggregate_type, last.aggregate_id) \
                   AND h.transaction_id <> last.id::text::xid8",
            ),
        )
        .await?;
        let checkpoints = execute(
            &mut tx,
            tables.render(&format!(
                "WITH mapped AS (SELECT k.projection, k.partition_count, k.partition, \
                   COALESCE(m.new_id, 0) AS transaction_id, \
                   COALESCE(m.global_position, 0) AS global_position \
                   FROM \"{{checkpoints}}\" AS k {LAST_EVENT_AT_OR_BEFORE_K}) \
                 UPDATE \"{{checkpoints}}\" AS c SET transaction_id = mapped.transaction_id, \
                   global_position = mapped.global_position FROM mapped \
                 WHERE (c.projection, c.partition_count, c.partition) \
                     = (mapped.projection, mapped.partition_count, mapped.partition) \
                   AND (c.transaction_id, c.global_position) \
                     IS DISTINCT FROM (mapped.transaction_id, mapped.global_position)"
            )),
        )
        .await?;
        // A parked event is an event: it maps to itself, and its position (its key) stays.
        let parked = execute(
            &mut tx,
            tables.render(&format!(
                "WITH mapped AS (SELECT k.projection, k.global_position, \
                   COALESCE(m.new_id, 0) AS transaction_id \
                   FROM \"{{dead_letters}}\" AS k {LAST_EVENT_AT_OR_BEFORE_K}) \
                 UPDATE \"{{dead_letters}}\" AS d SET transaction_id = mapped.transaction_id \
                 FROM mapped \
                 WHERE (d.projection, d.global_position) = (mapped.projection, mapped.global_position) \
                   AND d.transaction_id <> mapped.transaction_id"
            )),
        )
        .await?;
        tx.commit().await?;
        Ok(Attempt::Done(RestoreRepair {
            repaired: true,
            events,
            transaction_ids: last_id.map_or(0, |id| (id - FIRST_ID + 1).unsigned_abs()),
            heads,
            checkpoints,
            parked,
            counter_advanced_by: 0,
        }))
    }

    /// Commits `count` transactions that only take an id, so that the cluster's counter
    /// passes the new ids. Their commits are asynchronous: they wrote nothing, and the
    /// repair's commit, later in the write-ahead log, flushes them.
    async fn advance_counter(&self, count: i64) -> Result<()> {
        tracing::info!(target: "pupsource::store", count, "advancing the transaction counter");
        let mut left = count;
        while left > 0 {
            let chunk = left.min(ADVANCE_CHUNK);
            // A `DO` block may commit only as a statement of its own (simple protocol).
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DO $$ BEGIN FOR i IN 1..{chunk} LOOP \
                   PERFORM set_config('synchronous_commit', 'off', true), pg_current_xact_id(); \
                   COMMIT; \
                 END LOOP; END $$"
            )))
            .execute(&self.inner.pool)
            .await?;
            left -= chunk;
        }
        Ok(())
    }

    /// Waits until every transaction below `needed` has finished.
    async fn wait_for_horizon(&self, needed: i64) -> Result<()> {
        let mut warned: Option<Instant> = None;
        loop {
            let oldest: i64 =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                    .fetch_one(&self.inner.pool)
                    .await?;
            if oldest >= needed {
                return Ok(());
            }
            if warned.is_none_or(|at| at.elapsed() >= HORIZON_WARN_EVERY) {
                let blocking = self.fence().await?.map(|fence| fence.blocking_pid);
                tracing::warn!(
                    target: "pupsource::store",
                    oldest,
                    needed,
                    blocking_pid = ?blocking,
                    "the repair waits for an open transaction to finish"
                );
                warned = Some(Instant::now());
            }
            tokio::time::sleep(HORIZON_POLL).await;
        }
    }
}

/// Joins `k` (a checkpoint or parked row) with `m`, the new pair of the last event at or
/// before `k`'s stored pair in the old order (none: NULLs).
const LAST_EVENT_AT_OR_BEFORE_K: &str = "LEFT JOIN LATERAL (SELECT r.new_id, r.global_position \
    FROM pg_temp.pupsource_restore_map AS r \
    WHERE (r.old_id, r.global_position) <= (k.transaction_id, k.global_position) \
    ORDER BY r.old_id DESC, r.global_position DESC LIMIT 1) AS m ON true";

/// Runs one statement in `tx`; returns the rows it changed.
async fn execute(tx: &mut sqlx::Transaction<'static, Postgres>, sql: String) -> Result<u64> {
    Ok(sqlx::query(AssertSqlSafe(sql)).execute(&mut **tx).await?.rows_affected())
}
