//! Partition leases, on every backend: how processes share a projection's partitions.
//!
//! - Each process registers in the workers table with a heartbeat; a registration expires
//!   when it missed two heartbeats, and only unexpired workers count.
//! - A checkpoint row is also a lease: `owner`, `epoch` (the fencing token) and
//!   `lease_until`. Free or expired rows are claimed up to a fair share:
//!   `ceil(partitions / live workers)`. Every claim takes a new epoch from a counter that
//!   never goes back (a sequence on PostgreSQL, a one-row table on SQLite), so an
//!   `(owner, epoch)` pair never repeats, even after the rows were deleted and created again.
//! - Each batch writes its checkpoint only where owner and epoch are still its own and the
//!   checkpoint is still where the batch started (a compare-and-set), as its last statement
//!   before `COMMIT`. The write locks the row (PostgreSQL) or runs under the database's
//!   single write lock (SQLite), so a claim either happened before (the write finds nothing,
//!   the batch rolls back) or waits until after the commit. A worker that lost its lease can
//!   never commit, and a batch whose first commit succeeded unseen can never commit twice.
//! - A process that starts another partition count (a new *layout*) first fences every row
//!   of the other layouts (it clears their owner: a checkpoint write needs its owner on the
//!   row, and a later claim takes a new epoch), waiting for any batch committing on them, and
//!   only then reads their checkpoints: a paused or slow process of the old count can
//!   commit nothing once the new count has started, and the new count never repeats what the
//!   old one committed.
//! - Each registration records the worker's host and process id. A heartbeat that finds
//!   fewer partitions free than its share lists who holds the others ([`Holder`]); a holder
//!   that was a process of this host and is gone (killed, crashed) is *evicted* at once (its
//!   registration removed and its leases freed, in one transaction under the projection's
//!   lock, and only while the registration is still that process's), so a restart after a
//!   crash need not wait for the dead process's leases to expire.
//! - Every heartbeat runs under the projection's lock (an advisory lock on PostgreSQL, the
//!   write lock on SQLite), so registrations, claims and partition-count checks never
//!   interleave; a partition count other than a live worker's is refused.
//!
//! The clock is the database's on PostgreSQL, and the machine's on SQLite (a SQLite file is
//! shared by the processes of one machine only).

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Scope, Statement};
use crate::error::Result;
use crate::process::Process;

/// The lease protocol above, as each backend implements it.
#[async_trait::async_trait]
pub(crate) trait Leases: Send + Sync {
    /// Registers the worker, renews its leases and claims its share.
    async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Beat>;

    /// Gives up `partitions` (if `worker` still holds them).
    async fn release(
        &self,
        projection: &str,
        partition_count: u32,
        worker: &str,
        partitions: &[u32],
    ) -> Result<()>;

    /// Removes the worker's registration.
    async fn deregister(&self, projection: &str, worker: &str) -> Result<()>;

    /// The partitions (other than `except`) still behind an event in `scope` at or below
    /// `head`.
    async fn pending_partitions(
        &self,
        projection: &str,
        partition_count: u32,
        scope: &Scope,
        head: i64,
        except: &[u32],
    ) -> Result<Vec<u32>>;

    /// The live workers of `projection`.
    async fn workers(&self, projection: &str) -> Result<Vec<WorkerStatus>>;

    /// Frees the leases of `worker` and removes its registration, if it is still registered
    /// as `process` (a dead process of this host). Whether it was.
    async fn evict(&self, projection: &str, worker: &str, process: &Process) -> Result<bool>;
}

/// What one worker asks of a heartbeat.
#[derive(Debug)]
pub(crate) struct Heartbeat<'a> {
    pub(crate) projection: &'a str,
    pub(crate) worker: &'a str,
    /// Where the worker runs, recorded with its registration.
    pub(crate) process: &'a Process,
    pub(crate) partition_count: u32,
    /// How long a registration and a lease last without renewal.
    pub(crate) lease: Duration,
    /// The partitions this worker holds, with the epoch of its claim.
    pub(crate) held: &'a BTreeMap<u32, u64>,
    /// `Some(k)`: claim only partition `k` (static assignment); `None`: a fair share.
    pub(crate) only: Option<u32>,
}

impl Heartbeat<'_> {
    /// Refuses to go on while `other`, a live worker, runs the projection with another
    /// partition count (its id and count).
    pub(crate) fn refuse_other_layout(&self, other: Option<(String, i64)>) -> Result<()> {
        match other {
            Some((worker, running)) => Err(crate::Error::LayoutInUse {
                projection: self.projection.to_owned(),
                requested: self.partition_count,
                running: u32::try_from(running).unwrap_or(0),
                worker,
            }),
            None => Ok(()),
        }
    }

    /// How many partitions this worker should hold with `live` workers registered.
    pub(crate) fn share(&self, live: i64) -> usize {
        match self.only {
            Some(_) => 1,
            None => {
                let live = usize::try_from(live.max(1)).unwrap_or(1);
                (self.partition_count as usize).div_ceil(live)
            }
        }
    }
}

/// What a heartbeat found: the partitions this worker now holds, and its fair share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Beat {
    pub(crate) held: BTreeMap<u32, u64>,
    pub(crate) share: usize,
    /// When it holds less than its share: the other workers holding unexpired leases on the
    /// partitions it could run.
    pub(crate) holders: Vec<Holder>,
}

/// Another worker holding unexpired leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Its id.
    pub(crate) worker: String,
    /// Where it runs; `None` if its registration is gone or did not record it.
    pub(crate) process: Option<Process>,
    /// When the last of its leases expires unless renewed.
    pub(crate) until: OffsetDateTime,
    /// The partitions it holds.
    pub(crate) partitions: Vec<u32>,
}

/// A live worker, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// Its id.
    pub id: String,
    /// The partition count it runs the projection with.
    pub partition_count: u32,
    /// When it registered.
    pub started_at: OffsetDateTime,
    /// Its last heartbeat.
    pub heartbeat_at: OffsetDateTime,
    /// When it counts as dead unless it beats again.
    pub expires_at: OffsetDateTime,
}

/// A count or index as the `INTEGER` columns store it.
pub(crate) fn int4(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// An epoch as the `BIGINT` columns store it.
pub(crate) fn int8(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Evicts `worker` on `conn`, in the caller's transaction (under whatever lock its backend's
/// heartbeats take): removes its registration if it is still `process`'s (`deregister`: `$1`
/// projection, `$2` worker, `$3` host, `$4` pid) and then frees its leases (`free`: `$1`
/// projection, `$2` worker). Returns whether it did.
pub(crate) async fn evict_on<DB>(
    conn: &mut DB::Connection,
    (deregister, free): (&Statement, &Statement),
    projection: &str,
    worker: &str,
    process: &Process,
) -> Result<bool>
where
    DB: sqlx::Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let removed = sqlx::query(deregister.sql())
        .bind(projection)
        .bind(worker)
        .bind(process.host.as_str())
        .bind(i64::from(process.pid))
        .execute(&mut *conn)
        .await?
        .rows();
    if removed == 1 {
        sqlx::query(free.sql()).bind(projection).bind(worker).execute(&mut *conn).await?;
    }
    Ok(removed == 1)
}

/// How many rows a statement changed, on every backend.
pub(crate) trait RowsAffected {
    fn rows(&self) -> u64;
}

#[cfg(feature = "postgres")]
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}
