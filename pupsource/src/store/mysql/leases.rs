//! Partition leases on MySQL (the protocol is described in `store/lease.rs`).
//!
//! Every heartbeat runs under the projection's lock (its row in `{checkpoints}_lock`, locked
//! until commit) in a transaction whose connection the server closes once idle longer than
//! the lease. Claims read free rows with `FOR UPDATE SKIP LOCKED`, so a heartbeat never waits
//! for a batch that is committing on another partition. Times are the server's clock, in UTC.

use std::fmt::Write as _;

use sqlx::mysql::MySqlArguments;
use sqlx::{AssertSqlSafe, MySql};

use super::{MySqlStore, partition_of_sql, push_scope};
use crate::error::Result;
use crate::process::Process;
use crate::store::lease::{Beat, Heartbeat, Leases, WorkerStatus, evict_on, int4, int8};
use crate::store::row::{held_partitions, holders};
use crate::store::{Scope, Statement, Tables};

/// `UTC_TIMESTAMP(6)` plus a bound number of microseconds.
const LATER: &str = "UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND";

/// The lease statements, rendered once with the store's table names. Those that end in an
/// `IN` list are completed per call ([`in_list`]).
pub(super) struct LeaseSql {
    take_epochs: Statement,
    purge: Statement,
    other_layout: Statement,
    register: Statement,
    live: Statement,
    /// The held rows still this worker's; `AND (partition, epoch) IN (…) FOR UPDATE` follows.
    held: Statement,
    /// Renews the held rows; `AND (partition, epoch) IN (…)` follows.
    renew: Statement,
    /// Free or expired rows; the kept partitions and `ORDER BY … FOR UPDATE SKIP LOCKED`
    /// follow.
    free: Statement,
    claim: Statement,
    /// `AND partition IN (…)` follows.
    release: Statement,
    deregister: Statement,
    /// The checkpoints of a layout; the kept partitions and the `EXISTS` follow.
    pending: Statement,
    workers: Statement,
    holders: Statement,
    evict_worker: Statement,
    evict_leases: Statement,
}

impl LeaseSql {
    pub(super) fn new(tables: &Tables) -> Self {
        let render = |sql: &str| Statement::new(tables, sql);
        let key = "projection = ? AND partition_count = ?";
        LeaseSql {
            take_epochs: render(
                "UPDATE `{checkpoints}_epoch` SET value = LAST_INSERT_ID(value + ?) WHERE id = 1",
            ),
            purge: render(
                "DELETE FROM `{workers}` WHERE projection = ? AND expires_at < UTC_TIMESTAMP(6)",
            ),
            other_layout: render(
                "SELECT CONVERT(worker_id USING utf8mb4), CAST(partition_count AS SIGNED) FROM `{workers}` \
                 WHERE projection = ? AND partition_count <> ? AND worker_id <> ? \
                 ORDER BY worker_id LIMIT 1",
            ),
            register: render(&format!(
                "INSERT INTO `{{workers}}` (projection, worker_id, partition_count, started_at, \
                   heartbeat_at, expires_at, host, pid) \
                 VALUES (?, ?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), {LATER}, ?, ?) \
                 ON DUPLICATE KEY UPDATE partition_count = ?, heartbeat_at = UTC_TIMESTAMP(6), \
                   expires_at = {LATER}, host = ?, pid = ?"
            )),
            live: render("SELECT COUNT(*) FROM `{workers}` WHERE projection = ?"),
            held: render(&format!(
                "SELECT `partition`, epoch FROM `{{checkpoints}}` WHERE {key} AND owner = ?"
            )),
            renew: render(&format!(
                "UPDATE `{{checkpoints}}` SET lease_until = {LATER} WHERE {key} AND owner = ?"
            )),
            free: render(&format!(
                "SELECT `partition` FROM `{{checkpoints}}` WHERE {key} \
                 AND (owner IS NULL OR owner = ? OR lease_until IS NULL \
                   OR lease_until < UTC_TIMESTAMP(6)) \
                 AND (? IS NULL OR `partition` = ?)"
            )),
            claim: render(&format!(
                "UPDATE `{{checkpoints}}` SET owner = ?, epoch = ?, lease_until = {LATER} \
                 WHERE {key} AND `partition` = ?"
            )),
            release: render(&format!(
                "UPDATE `{{checkpoints}}` SET owner = NULL, lease_until = NULL \
                 WHERE {key} AND owner = ?"
            )),
            deregister: render("DELETE FROM `{workers}` WHERE projection = ? AND worker_id = ?"),
            pending: render(
                "SELECT c.`partition` FROM `{checkpoints}` AS c \
                 WHERE c.projection = ? AND c.partition_count = ?",
            ),
            workers: render(
                "SELECT worker_id, partition_count, started_at, heartbeat_at, expires_at \
                 FROM `{workers}` WHERE projection = ? AND expires_at > UTC_TIMESTAMP(6) \
                 ORDER BY worker_id",
            ),
            holders: render(
                "SELECT c.owner, c.`partition`, c.lease_until, w.host, COALESCE(w.pid, 0) AS pid \
                 FROM `{checkpoints}` AS c LEFT JOIN `{workers}` AS w \
                   ON w.projection = c.projection AND w.worker_id = c.owner \
                 WHERE c.projection = ? AND c.partition_count = ? AND c.owner <> ? \
                   AND c.lease_until >= UTC_TIMESTAMP(6) AND (? IS NULL OR c.`partition` = ?) \
                 ORDER BY c.owner, c.`partition`",
            ),
            evict_worker: render(
                "DELETE FROM `{workers}` \
                 WHERE projection = ? AND worker_id = ? AND host = ? AND pid = ?",
            ),
            evict_leases: render(
                "UPDATE `{checkpoints}` SET owner = NULL, lease_until = NULL \
                 WHERE projection = ? AND owner = ?",
            ),
        }
    }
}

/// `statement` followed by ` AND {expression} IN (…)` with one tuple of `width` placeholders
/// per item, and `rest`.
fn in_list(
    statement: &Statement,
    expression: &str,
    items: usize,
    width: usize,
    rest: &str,
) -> AssertSqlSafe<String> {
    let mut sql = statement.text().to_owned();
    let tuple =
        if width == 1 { "?".to_owned() } else { format!("({})", vec!["?"; width].join(", ")) };
    let _ = write!(sql, " AND {expression} IN (");
    for i in 0..items {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&tuple);
    }
    sql.push(')');
    sql.push_str(rest);
    AssertSqlSafe(sql)
}

/// Microseconds of `lease`, as `INTERVAL … MICROSECOND` takes them.
fn micros(lease: std::time::Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl Leases for MySqlStore {
    /// Registers (or renews) the worker, renews the leases it holds and claims free or
    /// expired partitions up to its share. Refuses a partition count other than that of a
    /// live worker of the projection.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Beat> {
        let sql = &self.inner.sql.leases;
        let count = int4(beat.partition_count);
        let lease = micros(beat.lease);
        let mut tx = self.begin_bounded(beat.lease).await?;
        sqlx::query(self.inner.sql.projection_lock.sql())
            .bind(beat.projection)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql.purge.sql()).bind(beat.projection).execute(&mut *tx).await?;
        let other: Option<(String, i64)> = sqlx::query_as(sql.other_layout.sql())
            .bind(beat.projection)
            .bind(count)
            .bind(beat.worker)
            .fetch_optional(&mut *tx)
            .await?;
        beat.refuse_other_layout(other)?;
        sqlx::query(sql.register.sql())
            .bind(beat.projection)
            .bind(beat.worker)
            .bind(count)
            .bind(lease)
            .bind(&beat.process.host)
            .bind(i64::from(beat.process.pid))
            .bind(count)
            .bind(lease)
            .bind(&beat.process.host)
            .bind(i64::from(beat.process.pid))
            .execute(&mut *tx)
            .await?;
        let live: i64 =
            sqlx::query_scalar(sql.live.sql()).bind(beat.projection).fetch_one(&mut *tx).await?;
        let mut held = if beat.held.is_empty() {
            Default::default()
        } else {
            let n = beat.held.len();
            let mut query =
                sqlx::query(in_list(&sql.held, "(`partition`, epoch)", n, 2, " FOR UPDATE"))
                    .bind(beat.projection)
                    .bind(count)
                    .bind(beat.worker);
            let mut renew = sqlx::query(in_list(&sql.renew, "(`partition`, epoch)", n, 2, ""))
                .bind(lease)
                .bind(beat.projection)
                .bind(count)
                .bind(beat.worker);
            for (&partition, &epoch) in beat.held {
                query = query.bind(int4(partition)).bind(int8(epoch));
                renew = renew.bind(int4(partition)).bind(int8(epoch));
            }
            let rows = query.fetch_all(&mut *tx).await?;
            renew.execute(&mut *tx).await?;
            held_partitions(&rows)?
        };
        let share = beat.share(live);
        if held.len() < share {
            let kept: Vec<i32> = held.keys().map(|&p| int4(p)).collect();
            let rest = " ORDER BY `partition` LIMIT ? FOR UPDATE SKIP LOCKED";
            let text = if kept.is_empty() {
                AssertSqlSafe(format!("{}{rest}", sql.free.text()))
            } else {
                in_list(&sql.free, "`partition` NOT", kept.len(), 1, rest)
            };
            let mut query = sqlx::query_scalar::<_, i32>(text)
                .bind(beat.projection)
                .bind(count)
                .bind(beat.worker)
                .bind(beat.only.map(int4))
                .bind(beat.only.map(int4));
            for partition in kept {
                query = query.bind(partition);
            }
            let wanted = i64::try_from(share - held.len()).unwrap_or(i64::MAX);
            let free = query.bind(wanted).fetch_all(&mut *tx).await?;
            if !free.is_empty() {
                let n = i64::try_from(free.len()).unwrap_or(i64::MAX);
                let taken = sqlx::query(sql.take_epochs.sql()).bind(n).execute(&mut *tx).await?;
                let last = i64::try_from(taken.last_insert_id()).unwrap_or(i64::MAX);
                for (partition, epoch) in free.into_iter().zip(last - n + 1..) {
                    sqlx::query(sql.claim.sql())
                        .bind(beat.worker)
                        .bind(epoch)
                        .bind(lease)
                        .bind(beat.projection)
                        .bind(count)
                        .bind(partition)
                        .execute(&mut *tx)
                        .await?;
                    held.insert(partition.unsigned_abs(), epoch.unsigned_abs());
                }
            }
        }
        let holders = if held.len() < share {
            holders(
                &sqlx::query(sql.holders.sql())
                    .bind(beat.projection)
                    .bind(count)
                    .bind(beat.worker)
                    .bind(beat.only.map(int4))
                    .bind(beat.only.map(int4))
                    .fetch_all(&mut *tx)
                    .await?,
            )?
        } else {
            Vec::new()
        };
        sqlx::query(super::RESET_WAIT_TIMEOUT).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Beat { held, share, holders })
    }

    /// Gives up `partitions` (if this worker still holds them), so others can claim them.
    async fn release(
        &self,
        projection: &str,
        partition_count: u32,
        worker: &str,
        partitions: &[u32],
    ) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let sql = in_list(&self.inner.sql.leases.release, "`partition`", partitions.len(), 1, "");
        let mut query = sqlx::query(sql).bind(projection).bind(int4(partition_count)).bind(worker);
        for &partition in partitions {
            query = query.bind(int4(partition));
        }
        query.execute(&self.inner.pool).await?;
        Ok(())
    }

    /// Removes the worker's registration (it stopped).
    async fn deregister(&self, projection: &str, worker: &str) -> Result<()> {
        sqlx::query(self.inner.sql.leases.deregister.sql())
            .bind(projection)
            .bind(worker)
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// The partitions (other than `except`) whose checkpoint is behind an event in `scope` at
    /// or below `head`.
    async fn pending_partitions(
        &self,
        projection: &str,
        partition_count: u32,
        scope: &Scope,
        head: i64,
        except: &[u32],
    ) -> Result<Vec<u32>> {
        let mut sql = self.inner.sql.leases.pending.text().to_owned();
        if !except.is_empty() {
            sql.push_str(" AND c.`partition` NOT IN (");
            sql.push_str(&vec!["?"; except.len()].join(", "));
            sql.push(')');
        }
        sql.push_str(&self.inner.tables.render(
            " AND EXISTS (SELECT 1 FROM `{events}` \
               WHERE global_position > c.global_position AND global_position <= ?",
        ));
        let binds = push_scope(&mut sql, scope);
        let _ = write!(
            sql,
            " AND {} = c.`partition`) ORDER BY c.`partition`",
            partition_of_sql(partition_count)
        );
        let mut query: sqlx::query::QueryScalar<'_, MySql, i32, MySqlArguments> =
            sqlx::query_scalar(AssertSqlSafe(sql)).bind(projection).bind(int4(partition_count));
        for &partition in except {
            query = query.bind(int4(partition));
        }
        query = query.bind(head);
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.inner.pool).await?;
        Ok(rows.into_iter().map(i32::unsigned_abs).collect())
    }

    /// The live workers of `projection`.
    async fn workers(&self, projection: &str) -> Result<Vec<WorkerStatus>> {
        let rows = sqlx::query(self.inner.sql.leases.workers.sql())
            .bind(projection)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(WorkerStatus::read).collect()
    }

    /// Frees the leases of `worker` and deregisters it, if it is still registered as
    /// `process`, under the projection's lock.
    async fn evict(&self, projection: &str, worker: &str, process: &Process) -> Result<bool> {
        let sql = &self.inner.sql;
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query(sql.projection_lock.sql()).bind(projection).execute(&mut *tx).await?;
        let statements = (&sql.leases.evict_worker, &sql.leases.evict_leases);
        let evicted = evict_on::<MySql>(&mut tx, statements, projection, worker, process).await?;
        tx.commit().await?;
        Ok(evicted)
    }
}
