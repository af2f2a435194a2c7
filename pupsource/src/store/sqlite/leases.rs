//! Partition leases on SQLite (the protocol is described in `store/lease.rs`).
//!
//! Every heartbeat is one `BEGIN IMMEDIATE` transaction: it holds the database's single
//! write lock, so no claim, registration or checkpoint write of another process interleaves
//! with it. Times are the machine's clock in microseconds: every process sharing a SQLite
//! file runs on the machine that holds it. A process paused inside a batch holds the write
//! lock: nobody can claim its partitions, nor commit anything, until it resumes.

use std::time::Duration;

use sqlx::Sqlite;
use time::OffsetDateTime;

use super::{SqliteStore, json_list, unix_micros};
use crate::error::Result;
use crate::process::Process;
use crate::store::lease::{Beat, Heartbeat, Leases, WorkerStatus, evict_on, int4, int8};
use crate::store::row::{held_partitions, holders};
use crate::store::{PARTITION_OF_SQL, Scope, Statement, Tables, partition_sql_args};

/// `lease` in microseconds after `now`.
fn until(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

/// The lease statements, rendered once with the store's table names.
pub(in crate::store) struct LeaseSql {
    take_epochs: Statement,
    purge_workers: Statement,
    other_layout: Statement,
    register: Statement,
    live: Statement,
    renew: Statement,
    free: Statement,
    claim: Statement,
    release: Statement,
    deregister: Statement,
    pending: Statement,
    workers: Statement,
    holders: Statement,
    evict_worker: Statement,
    evict_leases: Statement,
}

impl LeaseSql {
    pub(super) fn new(tables: &Tables) -> Self {
        LeaseSql {
            take_epochs: Statement::new(
                tables,
                "UPDATE \"{checkpoints}_epoch\" SET value = value + ?1 WHERE id = 1 RETURNING value",
            ),
            purge_workers: Statement::new(
                tables,
                "DELETE FROM \"{workers}\" WHERE projection = ?1 AND expires_at < ?2",
            ),
            other_layout: Statement::new(
                tables,
                "SELECT worker_id, partition_count FROM \"{workers}\" WHERE projection = ?1 \
             AND partition_count <> ?2 AND worker_id <> ?3 ORDER BY worker_id LIMIT 1",
            ),
            register: Statement::new(
                tables,
                "INSERT INTO \"{workers}\" (projection, worker_id, partition_count, started_at, \
               heartbeat_at, expires_at, host, pid) VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7) \
             ON CONFLICT (projection, worker_id) DO UPDATE SET \
               partition_count = excluded.partition_count, heartbeat_at = excluded.heartbeat_at, \
               expires_at = excluded.expires_at, host = excluded.host, pid = excluded.pid",
            ),
            live: Statement::new(
                tables,
                "SELECT count(*) FROM \"{workers}\" WHERE projection = ?1",
            ),
            renew: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET lease_until = ?4 \
             WHERE projection = ?1 AND partition_count = ?2 AND owner = ?3 \
               AND EXISTS (SELECT 1 FROM json_each(?5) AS h \
                 WHERE json_extract(h.value, '$[0]') = partition \
                   AND json_extract(h.value, '$[1]') = epoch) \
             RETURNING partition, epoch",
            ),
            free: Statement::new(
                tables,
                "SELECT partition FROM \"{checkpoints}\" \
                 WHERE projection = ?1 AND partition_count = ?2 \
                   AND partition NOT IN (SELECT value FROM json_each(?3)) \
                   AND (owner IS NULL OR owner = ?4 OR lease_until IS NULL OR lease_until < ?5) \
                   AND (?6 IS NULL OR partition = ?6) \
                 ORDER BY partition LIMIT ?7",
            ),
            claim: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET owner = ?4, epoch = ?5, lease_until = ?6 \
                     WHERE projection = ?1 AND partition_count = ?2 AND partition = ?3",
            ),
            release: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET owner = NULL, lease_until = NULL \
             WHERE projection = ?1 AND partition_count = ?2 AND owner = ?3 \
               AND partition IN (SELECT value FROM json_each(?4))",
            ),
            deregister: Statement::new(
                tables,
                "DELETE FROM \"{workers}\" WHERE projection = ?1 AND worker_id = ?2",
            ),
            pending: Statement::new(
                tables,
                &format!(
                    "SELECT c.partition FROM \"{{checkpoints}}\" AS c \
             WHERE c.projection = $1 AND c.partition_count = $2 \
               AND c.partition NOT IN (SELECT value FROM json_each($9)) \
               AND EXISTS (SELECT 1 FROM \"{{events}}\" \
                 WHERE global_position > c.global_position AND global_position <= $8 \
                   AND ($3 IS NULL OR bounded_context IN (SELECT value FROM json_each($3))) \
                   AND ($4 IS NULL OR aggregate_type IN (SELECT value FROM json_each($4))) \
                   AND ($5 IS NULL OR event_type IN (SELECT value FROM json_each($5))) \
                   AND {PARTITION_OF_SQL} = c.partition) \
             ORDER BY c.partition"
                ),
            ),
            workers: Statement::new(
                tables,
                "SELECT worker_id, partition_count, started_at, heartbeat_at, expires_at \
             FROM \"{workers}\" WHERE projection = ?1 AND expires_at > ?2 ORDER BY worker_id",
            ),
            holders: Statement::new(
                tables,
                "SELECT c.owner, c.partition, c.lease_until, w.host, COALESCE(w.pid, 0) AS pid \
                 FROM \"{checkpoints}\" AS c LEFT JOIN \"{workers}\" AS w \
                   ON w.projection = c.projection AND w.worker_id = c.owner \
                 WHERE c.projection = ?1 AND c.partition_count = ?2 AND c.owner <> ?3 \
                   AND c.lease_until >= ?4 AND (?5 IS NULL OR c.partition = ?5) \
                 ORDER BY c.owner, c.partition",
            ),
            evict_worker: Statement::new(
                tables,
                "DELETE FROM \"{workers}\" \
                 WHERE projection = ?1 AND worker_id = ?2 AND host = ?3 AND pid = ?4",
            ),
            evict_leases: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET owner = NULL, lease_until = NULL \
                 WHERE projection = ?1 AND owner = ?2",
            ),
        }
    }
}

impl SqliteStore {
    /// `n` new epochs, never handed out before (in `tx`, which holds the write lock).
    async fn take_epochs(
        &self,
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        n: usize,
    ) -> Result<Vec<i64>> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        if n == 0 {
            return Ok(Vec::new());
        }
        let last: i64 = sqlx::query_scalar(self.inner.sql.leases.take_epochs.sql())
            .bind(n)
            .fetch_one(&mut **tx)
            .await?;
        Ok((last - n + 1..=last).collect())
    }
}

#[async_trait::async_trait]
impl Leases for SqliteStore {
    /// Registers (or renews) the worker, renews the leases it holds and claims free or
    /// expired partitions up to its share. Refuses a partition count other than that of a
    /// live worker of the projection.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Beat> {
        let now = unix_micros(OffsetDateTime::now_utc());
        let lease_until = until(now, beat.lease);
        let count = int4(beat.partition_count);
        let mut tx = self.begin_immediate().await?;
        sqlx::query(self.inner.sql.leases.purge_workers.sql())
            .bind(beat.projection)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let other: Option<(String, i64)> = sqlx::query_as(self.inner.sql.leases.other_layout.sql())
            .bind(beat.projection)
            .bind(count)
            .bind(beat.worker)
            .fetch_optional(&mut *tx)
            .await?;
        beat.refuse_other_layout(other)?;
        sqlx::query(self.inner.sql.leases.register.sql())
            .bind(beat.projection)
            .bind(beat.worker)
            .bind(count)
            .bind(now)
            .bind(lease_until)
            .bind(&beat.process.host)
            .bind(i64::from(beat.process.pid))
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query_scalar(self.inner.sql.leases.live.sql())
            .bind(beat.projection)
            .fetch_one(&mut *tx)
            .await?;
        let held_json = serde_json::Value::from(
            beat.held.iter().map(|(&p, &e)| vec![i64::from(p), int8(e)]).collect::<Vec<_>>(),
        )
        .to_string();
        let renewed = sqlx::query(self.inner.sql.leases.renew.sql())
            .bind(beat.projection)
            .bind(count)
            .bind(beat.worker)
            .bind(lease_until)
            .bind(held_json)
            .fetch_all(&mut *tx)
            .await?;
        let mut held = held_partitions(&renewed)?;
        let share = beat.share(live);
        if held.len() < share {
            let kept =
                serde_json::Value::from(held.keys().copied().collect::<Vec<_>>()).to_string();
            let free: Vec<i64> = sqlx::query_scalar(self.inner.sql.leases.free.sql())
                .bind(beat.projection)
                .bind(count)
                .bind(kept)
                .bind(beat.worker)
                .bind(now)
                .bind(beat.only.map(int4))
                .bind(i64::try_from(share - held.len()).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
            let epochs = self.take_epochs(&mut tx, free.len()).await?;
            for (partition, epoch) in free.into_iter().zip(epochs) {
                sqlx::query(self.inner.sql.leases.claim.sql())
                    .bind(beat.projection)
                    .bind(count)
                    .bind(partition)
                    .bind(beat.worker)
                    .bind(epoch)
                    .bind(lease_until)
                    .execute(&mut *tx)
                    .await?;
                held.insert(u32::try_from(partition).unwrap_or(0), epoch.unsigned_abs());
            }
        }
        let holders = if held.len() < share {
            holders(
                &sqlx::query(self.inner.sql.leases.holders.sql())
                    .bind(beat.projection)
                    .bind(count)
                    .bind(beat.worker)
                    .bind(now)
                    .bind(beat.only.map(int4))
                    .fetch_all(&mut *tx)
                    .await?,
            )?
        } else {
            Vec::new()
        };
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
        let partitions = serde_json::Value::from(partitions.to_vec()).to_string();
        let mut tx = self.begin_immediate().await?;
        sqlx::query(self.inner.sql.leases.release.sql())
            .bind(projection)
            .bind(int4(partition_count))
            .bind(worker)
            .bind(partitions)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the worker's registration (it stopped).
    async fn deregister(&self, projection: &str, worker: &str) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        sqlx::query(self.inner.sql.leases.deregister.sql())
            .bind(projection)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
        let (modulus, wrap) = partition_sql_args(partition_count);
        let rows: Vec<i64> = sqlx::query_scalar(self.inner.sql.leases.pending.sql())
            .bind(projection)
            .bind(int4(partition_count))
            .bind(json_list(&scope.contexts))
            .bind(json_list(&scope.aggregate_types))
            .bind(json_list(&scope.event_types))
            .bind(modulus)
            .bind(wrap)
            .bind(head)
            .bind(serde_json::Value::from(except.to_vec()).to_string())
            .fetch_all(&self.inner.pool)
            .await?;
        Ok(rows.into_iter().filter_map(|p| u32::try_from(p).ok()).collect())
    }

    /// The live workers of `projection`.
    async fn workers(&self, projection: &str) -> Result<Vec<WorkerStatus>> {
        let now = unix_micros(OffsetDateTime::now_utc());
        let rows = sqlx::query(self.inner.sql.leases.workers.sql())
            .bind(projection)
            .bind(now)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(WorkerStatus::read).collect()
    }

    /// Frees the leases of `worker` and deregisters it, if it is still registered as
    /// `process`, under the write lock.
    async fn evict(&self, projection: &str, worker: &str, process: &Process) -> Result<bool> {
        let sql = &self.inner.sql.leases;
        let mut tx = self.begin_immediate().await?;
        let statements = (&sql.evict_worker, &sql.evict_leases);
        let evicted = evict_on::<Sqlite>(&mut tx, statements, projection, worker, process).await?;
        tx.commit().await?;
        Ok(evicted)
    }
}
