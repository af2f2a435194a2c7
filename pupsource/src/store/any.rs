//! [`Store`]: either backend, chosen at run time; and the runner's view of both.
//!
//! The projection runner is written once against [`Store`] and [`BatchTx`]; each call is
//! dispatched to the backend's own SQL in `postgres.rs` or `sqlite.rs`.

use std::collections::HashSet;
use std::str::FromStr as _;

use time::OffsetDateTime;
use tokio::sync::watch;

use super::lease::{Beat, Heartbeat, WorkerStatus};
use super::{EventStore, Page, PostgresStore, Scope, SqliteStore};
use crate::checkpoint::CheckpointState;
use crate::error::{InvalidInput, Result};
use crate::event::{PersistedEvent, Position, StreamId};
use crate::partition::Partition;
use crate::projection::{Lease, Transaction};
use crate::runner::{Fence, ParkedEvent};

/// An event store on either database, e.g. chosen from a URL at run time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pupsource::Result<()> {
/// let store = pupsource::Store::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// assert!(matches!(store, pupsource::Store::Sqlite(_)));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PostgresStore),
    /// SQLite.
    Sqlite(SqliteStore),
}

impl From<PostgresStore> for Store {
    fn from(store: PostgresStore) -> Self {
        Store::Postgres(store)
    }
}

impl From<SqliteStore> for Store {
    fn from(store: SqliteStore) -> Self {
        Store::Sqlite(store)
    }
}

/// Calls the same method on whichever backend `$store` is.
macro_rules! dispatch {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

impl Store {
    /// Connects to `url`: `postgres://…` / `postgresql://…` for PostgreSQL, `sqlite:…` for
    /// SQLite (a file, created if missing, or `sqlite::memory:`).
    ///
    /// # Errors
    /// [`InvalidInput::DatabaseUrl`] for any other scheme; the backend's errors otherwise.
    pub async fn connect(url: &str) -> Result<Self> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "postgres" | "postgresql" => Ok(Store::Postgres(PostgresStore::connect(url).await?)),
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url).await?)),
            _ => Err(InvalidInput::DatabaseUrl {
                url: redact(url),
                problem: "expected a `postgres://`, `postgresql://` or `sqlite:` URL",
            }
            .into()),
        }
    }

    /// Creates the tables if they do not exist. Idempotent.
    pub async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Refuses a PostgreSQL database restored from another cluster
    /// ([`Error::RestoredDatabase`](crate::Error::RestoredDatabase)); SQLite stores no
    /// transaction id.
    pub(crate) async fn check_transaction_ids(&self) -> Result<()> {
        match self {
            Store::Postgres(s) => s.check_transaction_ids().await,
            Store::Sqlite(_) => Ok(()),
        }
    }

    /// [`PostgresStore::repair_restore`]; SQLite stores no transaction id, so there is nothing
    /// to repair.
    pub(crate) async fn repair_restore(&self) -> Result<super::RestoreRepair> {
        match self {
            Store::Postgres(s) => s.repair_restore().await,
            Store::Sqlite(_) => Ok(super::RestoreRepair::default()),
        }
    }

    /// Appends `events` in a transaction of its own; see [`EventStore::append_and_commit`].
    ///
    /// # Errors
    /// As [`EventStore::append`].
    pub async fn append_and_commit(
        &self,
        expected: crate::ExpectedVersion,
        events: &[crate::Event],
    ) -> Result<crate::AppendResult> {
        dispatch!(self, s => s.append_and_commit(expected, events).await)
    }

    /// Reads one stream; see [`EventStore::read_stream`].
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        versions: impl std::ops::RangeBounds<u64> + Send,
    ) -> Result<crate::Stream> {
        dispatch!(self, s => s.read_stream(stream, versions).await)
    }

    /// Reads up to `limit` events after `after` in log order; see [`EventStore::read_all`].
    pub async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>> {
        dispatch!(self, s => s.read_all(after, limit, scope).await)
    }

    /// Which database this is, for messages.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "PostgreSQL",
            Store::Sqlite(_) => "SQLite",
        }
    }

    pub(crate) async fn begin_batch(&self) -> Result<BatchTx> {
        Ok(match self {
            Store::Postgres(s) => BatchTx::Postgres(s.clone(), s.begin().await?),
            Store::Sqlite(s) => BatchTx::Sqlite(s.clone(), s.begin().await?),
        })
    }

    /// A batch of a leased partition: on PostgreSQL the server closes the transaction once it
    /// has stayed idle longer than `idle_limit` (a paused worker cannot hold its rows past its
    /// lease); on SQLite the batch holds the write lock, so nobody can claim meanwhile.
    pub(crate) async fn begin_leased_batch(
        &self,
        idle_limit: std::time::Duration,
    ) -> Result<BatchTx> {
        Ok(match self {
            Store::Postgres(s) => BatchTx::Postgres(s.clone(), s.begin_fenced(idle_limit).await?),
            Store::Sqlite(s) => BatchTx::Sqlite(s.clone(), s.begin().await?),
        })
    }

    /// A page of the log for the runner, bounded in events and in bytes.
    pub(crate) async fn read_page(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
        scope: &Scope,
    ) -> Result<Page> {
        dispatch!(self, s => s.read_page(after, limit, max_bytes, scope).await)
    }

    /// Registers the worker, renews its leases and claims its share; see `store/lease.rs`.
    pub(crate) async fn heartbeat(&self, beat: &Heartbeat<'_>) -> Result<Beat> {
        dispatch!(self, s => s.heartbeat(beat).await)
    }

    /// Gives up `partitions` (if `worker` still holds them).
    pub(crate) async fn release(
        &self,
        projection: &str,
        partition_count: u32,
        worker: &str,
        partitions: &[u32],
    ) -> Result<()> {
        dispatch!(self, s => s.release(projection, partition_count, worker, partitions).await)
    }

    /// Removes the worker's registration.
    pub(crate) async fn deregister(&self, projection: &str, worker: &str) -> Result<()> {
        dispatch!(self, s => s.deregister(projection, worker).await)
    }

    /// The partitions (other than `except`) still behind an event in `scope` at or below
    /// `head`.
    pub(crate) async fn pending_partitions(
        &self,
        projection: &str,
        partition_count: u32,
        scope: &Scope,
        head: i64,
        except: &[u32],
    ) -> Result<Vec<u32>> {
        dispatch!(self, s => s.pending_partitions(projection, partition_count, scope, head, except).await)
    }

    /// A receiver that changes whenever this process appends, or (PostgreSQL, while
    /// [`Store::listen`] runs) another process hints that it did.
    pub(crate) fn wakeups(&self) -> watch::Receiver<u64> {
        dispatch!(self, s => s.wakeups())
    }

    /// Forwards other processes' append hints to [`Store::wakeups`] until `stop` (PostgreSQL;
    /// SQLite has no cross-process notification and relies on polling).
    pub(crate) async fn listen(&self, stop: tokio_util::sync::CancellationToken) {
        if let Store::Postgres(s) = self {
            s.listen(stop).await;
        }
    }

    /// Loads (creating missing rows of) the checkpoints of `projection` under `partition_count`.
    pub(crate) async fn load_checkpoints(
        &self,
        projection: &str,
        partition_count: u32,
    ) -> Result<CheckpointState> {
        dispatch!(self, s => s.load_checkpoints(projection, partition_count).await)
    }

    /// The stored checkpoint of one partition (`None`: no such row).
    pub(crate) async fn checkpoint(
        &self,
        projection: &str,
        partition: Partition,
    ) -> Result<Option<Position>> {
        let rows = self.checkpoints(projection).await?;
        Ok(rows.into_iter().find(|row| row.partition == partition).map(|row| row.position))
    }

    /// Every stored checkpoint row of `projection`, every layout, for status.
    pub(crate) async fn checkpoints(&self, projection: &str) -> Result<Vec<CheckpointInfo>> {
        dispatch!(self, s => s.checkpoints(projection).await)
    }

    /// The live workers of `projection`.
    pub(crate) async fn workers(&self, projection: &str) -> Result<Vec<WorkerStatus>> {
        dispatch!(self, s => s.workers(projection).await)
    }

    /// Records a handler failure for status (outside any batch transaction).
    pub(crate) async fn record_error(
        &self,
        projection: &str,
        partition: Partition,
        message: &str,
    ) -> Result<()> {
        dispatch!(self, s => s.record_error(projection, partition, message).await)
    }

    /// The streams with parked events in `projection`.
    pub(crate) async fn parked_streams(&self, projection: &str) -> Result<HashSet<StreamId>> {
        Ok(self.parked(projection).await?.into_iter().map(|p| p.stream).collect())
    }

    /// The parked events of `projection`, in log order.
    pub(crate) async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>> {
        dispatch!(self, s => s.parked(projection).await)
    }

    /// The stored event at `global_position`.
    pub(crate) async fn read_event(&self, global_position: i64) -> Result<Option<PersistedEvent>> {
        dispatch!(self, s => s.read_event(global_position).await)
    }

    /// How many events in `scope` after `after` belong to `partition`.
    pub(crate) async fn count_after(
        &self,
        after: Position,
        scope: &Scope,
        partition: Partition,
    ) -> Result<u64> {
        dispatch!(self, s => s.count_after(after, scope, partition).await)
    }

    /// The position of the last committed event (0 for an empty log).
    pub(crate) async fn head(&self) -> Result<i64> {
        dispatch!(self, s => s.head().await)
    }

    /// PostgreSQL: whether a committed event in `scope` at or below `head` is still unread
    /// after `after` because an older transaction in flight holds the read fence back.
    /// SQLite has no fence: always `false`.
    pub(crate) async fn held_back(
        &self,
        after: Position,
        head: i64,
        scope: &Scope,
    ) -> Result<bool> {
        match self {
            Store::Postgres(s) => s.held_back(after, head, scope).await,
            Store::Sqlite(_) => Ok(false),
        }
    }

    /// The oldest transaction in flight in the database, which holds back every reader
    /// (PostgreSQL).
    pub(crate) async fn fence(&self) -> Result<Option<Fence>> {
        match self {
            Store::Postgres(s) => s.fence().await,
            Store::Sqlite(_) => Ok(None),
        }
    }
}

/// A stored checkpoint row with what status shows of it.
#[derive(Debug, Clone)]
pub(crate) struct CheckpointInfo {
    pub(crate) partition: Partition,
    pub(crate) position: Position,
    pub(crate) updated_at: OffsetDateTime,
    pub(crate) last_error: Option<String>,
    /// Who holds the partition, if anyone.
    pub(crate) lease: Option<LeaseInfo>,
}

/// Who holds a partition's lease, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The worker holding it.
    pub owner: String,
    /// The epoch of its claim.
    pub epoch: u64,
    /// When it expires unless renewed (database clock); `None` if never set.
    pub until: Option<OffsetDateTime>,
}

/// The transaction of one batch, with the store that opened it.
pub(crate) enum BatchTx {
    Postgres(PostgresStore, sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(SqliteStore, sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Calls the same method on whichever backend opened the batch.
macro_rules! dispatch_tx {
    ($tx:expr, $s:ident, $t:ident => $call:expr) => {
        match $tx {
            BatchTx::Postgres($s, $t) => $call,
            BatchTx::Sqlite($s, $t) => $call,
        }
    };
}

impl BatchTx {
    /// The transaction, as handlers see it.
    pub(crate) fn transaction(&mut self) -> Transaction<'_> {
        match self {
            BatchTx::Postgres(_, tx) => Transaction::Postgres(tx),
            BatchTx::Sqlite(_, tx) => Transaction::Sqlite(tx),
        }
    }

    /// Moves the partition's checkpoint from `from` to `to`, only while `lease` is still
    /// this worker's and the checkpoint still at `from`; and retires older layouts when every
    /// partition of this one is past `retire_after`. Returns whether older layouts were
    /// retired.
    ///
    /// # Errors
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if another worker claimed the partition,
    /// [`Error::CheckpointMoved`](crate::Error::CheckpointMoved) if the checkpoint is no longer
    /// at `from`, [`Error::CheckpointLost`](crate::Error::CheckpointLost) if the row is gone.
    pub(crate) async fn save_checkpoint(
        &mut self,
        projection: &str,
        partition: Partition,
        lease: &Lease,
        (from, to): (Position, Position),
        retire_after: Option<Position>,
    ) -> Result<bool> {
        dispatch_tx!(self, s, tx => s.save_checkpoint(tx, projection, partition, lease, from, to).await)?;
        match retire_after {
            Some(after) if to >= after => {
                dispatch_tx!(self, s, tx => s.retire_layouts(tx, projection, partition.count, after).await)
            }
            _ => Ok(false),
        }
    }

    /// Parks `event` (with the handler's error, or `None` when an earlier event of its stream
    /// is parked).
    pub(crate) async fn park(
        &mut self,
        projection: &str,
        event: &PersistedEvent,
        error: Option<&str>,
        attempts: u32,
    ) -> Result<()> {
        dispatch_tx!(self, s, tx => s.park(tx, projection, event, error, attempts).await)
    }

    /// Deletes every checkpoint and parked event of `projection`.
    pub(crate) async fn forget_projection(&mut self, projection: &str) -> Result<()> {
        dispatch_tx!(self, s, tx => s.forget_projection(tx, projection).await)
    }

    /// Removes a parked event after it was replayed.
    pub(crate) async fn unpark(&mut self, projection: &str, position: Position) -> Result<()> {
        dispatch_tx!(self, s, tx => s.unpark(tx, projection, position).await)
    }

    pub(crate) async fn commit(self) -> Result<()> {
        dispatch_tx!(self, _s, tx => tx.commit().await)?;
        Ok(())
    }

    pub(crate) async fn rollback(self) -> Result<()> {
        dispatch_tx!(self, _s, tx => tx.rollback().await)?;
        Ok(())
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::from_str(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
