//! Partition leases on PostgreSQL (the protocol is described in `store/lease.rs`).
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent heartbeats never wait on each other's
//! rows; each batch's `BEGIN` also sets `idle_in_transaction_session_timeout` to the lease
//! duration, so a paused or cut-off worker cannot hold read-model or checkpoint rows past its
//! lease: the server closes its transaction.

use std::time::Duration;

use sqlx::AssertSqlSafe;

use super::PostgresStore;
use crate::error::Result;
use crate::process::Process;
use crate::store::lease::{Beat, Heartbeat, Leases, WorkerStatus, evict_on, int4, int8};
use crate::store::row::{held_partitions, holders};
use crate::store::{Scope, Statement, Tables, partition_sql_args};

/// The lease statements, rendered once with the store's table names.
pub(super) struct LeaseSql {
    register: Statement,
    purge: Statement,
    other_layout: Statement,
    live: Statement,
    renew: Statement,
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
        let render = |sql: &str| Statement::new(tables, sql);
        let key = "projection = $1 AND partition_count = $2";
        LeaseSql {
            register: render(
                "INSERT INTO \"{workers}\" (projection, worker_id, partition_count, expires_at, \
                   host, pid) \
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6) \
                 ON CONFLICT (projection, worker_id) DO UPDATE SET \
                   partition_count = EXCLUDED.partition_count, heartbeat_at = now(), \
                   expires_at = EXCLUDED.expires_at, host = EXCLUDED.host, pid = EXCLUDED.pid",
            ),
            purge: render("DELETE FROM \"{workers}\" WHERE projection = $1 AND expires_at < now()"),
            other_layout: render(
                "SELECT worker_id, partition_count::int8 FROM \"{workers}\" \
                 WHERE projection = $1 AND partition_count <> $2 AND worker_id <> $3 \
                 ORDER BY worker_id LIMIT 1",
            ),
            live: render("SELECT count(*) FROM \"{workers}\" WHERE projection = $1"),
            renew: render(&format!(
                "UPDATE \"{{checkpoints}}\" SET lease_until = now() + make_interval(secs => $4) \
                 WHERE {key} AND owner = $3 \
                   AND (partition, epoch) IN (SELECT * FROM UNNEST($5::int4[], $6::int8[])) \
                 RETURNING partition, epoch"
            )),
            // Rows of this worker id it does not know of (an earlier process with the same
            // id) are claimed again with a new epoch, never silently adopted.
            claim: render(&format!(
                "UPDATE \"{{checkpoints}}\" AS c SET owner = $3, \
                   epoch = nextval('\"{{checkpoints}}_epoch_seq\"'), \
                   lease_until = now() + make_interval(secs => $4) \
                 FROM (SELECT partition FROM \"{{checkpoints}}\" \
                       WHERE {key} AND NOT (partition = ANY($5)) \
                         AND (owner IS NULL OR owner = $3 OR lease_until IS NULL OR lease_until < now()) \
                         AND ($6::int4 IS NULL OR partition = $6) \
                       ORDER BY partition LIMIT $7 FOR UPDATE SKIP LOCKED) AS free \
                 WHERE c.projection = $1 AND c.partition_count = $2 AND c.partition = free.partition \
                 RETURNING c.partition, c.epoch"
            )),
            release: render(&format!(
                "UPDATE \"{{checkpoints}}\" SET owner = NULL, lease_until = NULL \
                 WHERE {key} AND owner = $3 AND partition = ANY($4)"
            )),
            deregister: render(
                "DELETE FROM \"{workers}\" WHERE projection = $1 AND worker_id = $2",
            ),
            pending: render(&format!(
                "SELECT c.partition FROM \"{{checkpoints}}\" AS c \
                 WHERE c.projection = $1 AND c.partition_count = $2 AND NOT (c.partition = ANY($9)) \
                   AND EXISTS (SELECT 1 FROM \"{{events}}\" \
                     WHERE (transaction_id, global_position) > (c.transaction_id::text::xid8, c.global_position) \
                       AND global_position <= $8 \
                       AND ($3::text[] IS NULL OR bounded_context = ANY($3)) \
                       AND ($4::text[] IS NULL OR aggregate_type = ANY($4)) \
                       AND ($5::text[] IS NULL OR event_type = ANY($5)) \
                       AND {} = c.partition) \
                 ORDER BY c.partition",
                crate::store::PARTITION_OF_SQL
            )),
            workers: render(
                "SELECT worker_id, partition_count, started_at, heartbeat_at, expires_at \
                 FROM \"{workers}\" WHERE projection = $1 AND expires_at > now() ORDER BY worker_id",
            ),
            holders: render(
                "SELECT c.owner, c.partition, c.lease_until, w.host, COALESCE(w.pid, 0) AS pid \
                 FROM \"{checkpoints}\" AS c LEFT JOIN \"{workers}\" AS w \
                   ON w.projection = c.projection AND w.worker_id = c.owner \
                 WHERE c.projection = $1 AND c.partition_count = $2 AND c.owner <> $3 \
                   AND c.lease_until >= now() \
                   AND ($4::int4 IS NULL OR c.partition = $4) \
                 ORDER BY c.owner, c.partition",
            ),
            evict_worker: render(
                "DELETE FROM \"{workers}\" \
                 WHERE projection = $1 AND worker_id = $2 AND host = $3 AND pid = $4",
            ),
            evict_leases: render(
                "UPDATE \"{checkpoints}\" SET owner = NULL, lease_until = NULL \
                 WHERE projection = $1 AND owner = $2",
            ),
        }
    }
}

impl PostgresStore {
    /// Begins a batch transaction that the server closes once it has stayed idle longer than
    /// `idle_limit` (a paused or cut-off worker cannot hold its rows past its lease). The
    /// setting travels with `BEGIN`: no extra round trip.
    pub(crate) async fn begin_fenced(
        &self,
        idle_limit: Duration,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let millis = idle_limit.as_millis().clamp(1, i32::MAX as u128);
        let begin = format!("BEGIN; SET LOCAL idle_in_transaction_session_timeout = {millis}");
        Ok(self.inner.pool.begin_with(AssertSqlSafe(begin)).await?)
    }
}

#[async_trait::async_trait]
impl Leases for PostgresStore {
    /// Registers (or renews) the worker, renews the leases it holds and claims free or
    /// expired partitions up to its share. Refuses a partition count other than that of a
    /// live worker of the projection.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Beat> {
        let sql = &self.inner.sql.leases;
        let count = int4(beat.partition_count);
        let seconds = beat.lease.as_secs_f64();
        // Under the projection's lock: a paused process must not hold it past its lease.
        let mut tx = self.begin_fenced(beat.lease).await?;
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
            .bind(seconds)
            .bind(&beat.process.host)
            .bind(i64::from(beat.process.pid))
            .execute(&mut *tx)
            .await?;
        let live: i64 =
            sqlx::query_scalar(sql.live.sql()).bind(beat.projection).fetch_one(&mut *tx).await?;
        let (partitions, epochs): (Vec<i32>, Vec<i64>) =
            beat.held.iter().map(|(&p, &e)| (int4(p), int8(e))).unzip();
        let mut held = held_partitions(
            &sqlx::query(sql.renew.sql())
                .bind(beat.projection)
                .bind(count)
                .bind(beat.worker)
                .bind(seconds)
                .bind(&partitions)
                .bind(&epochs)
                .fetch_all(&mut *tx)
                .await?,
        )?;
        let share = beat.share(live);
        if held.len() < share {
            let kept: Vec<i32> = held.keys().map(|&p| int4(p)).collect();
            let claimed = held_partitions(
                &sqlx::query(sql.claim.sql())
                    .bind(beat.projection)
                    .bind(count)
                    .bind(beat.worker)
                    .bind(seconds)
                    .bind(&kept)
                    .bind(beat.only.map(int4))
                    .bind(int8((share - held.len()) as u64))
                    .fetch_all(&mut *tx)
                    .await?,
            )?;
            held.extend(claimed);
        }
        let holders = if held.len() < share {
            holders(
                &sqlx::query(sql.holders.sql())
                    .bind(beat.projection)
                    .bind(count)
                    .bind(beat.worker)
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
        let partitions: Vec<i32> = partitions.iter().map(|&p| int4(p)).collect();
        sqlx::query(self.inner.sql.leases.release.sql())
            .bind(projection)
            .bind(int4(partition_count))
            .bind(worker)
            .bind(partitions)
            .execute(&self.inner.pool)
            .await?;
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
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let (modulus, wrap) = partition_sql_args(partition_count);
        let except: Vec<i32> = except.iter().map(|&p| int4(p)).collect();
        let rows: Vec<i32> = sqlx::query_scalar(self.inner.sql.leases.pending.sql())
            .bind(projection)
            .bind(int4(partition_count))
            .bind(list(&scope.contexts))
            .bind(list(&scope.aggregate_types))
            .bind(list(&scope.event_types))
            .bind(modulus)
            .bind(wrap)
            .bind(head)
            .bind(except)
            .fetch_all(&self.inner.pool)
            .await?;
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
        let evicted =
            evict_on::<sqlx::Postgres>(&mut tx, statements, projection, worker, process).await?;
        tx.commit().await?;
        Ok(evicted)
    }
}
