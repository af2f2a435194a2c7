//! What the projection runner needs of a database, as one trait implemented once per backend.
//!
//! The runner, status and the CLI are written once against [`Backend`] and [`Batch`]; each
//! database implements them in its own module (`postgres.rs`, `sqlite.rs`) with its own SQL.
//! Adding a database means one module that implements these two traits, and one variant of
//! the public [`Store`](super::Store) enum that hands it out.

use std::collections::HashSet;
use std::fmt;
use std::ops::Bound;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::Leases;
use super::row::{EventDecoder, StoredRow};
use super::{CheckpointRead, EventStore, Scope};
use crate::checkpoint::{CheckpointRow, CheckpointState};
use crate::error::Result;
use crate::event::{AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId};
use crate::partition::Partition;
use crate::projection::{Lease, Transaction};
use crate::version::ExpectedVersion;

/// A database as the runner uses it: the log, checkpoints, parked events, leases, the read
/// fence and wake-ups. See the module docs.
#[async_trait::async_trait]
pub(crate) trait Backend: Appends + Leases + fmt::Debug + Send + Sync + 'static {
    /// Which database this is, for messages.
    fn name(&self) -> &'static str;

    /// A receiver that changes whenever this process appends, or another process hints that
    /// it did (while [`Backend::listen`] runs).
    fn wakeups(&self) -> watch::Receiver<u64>;

    /// Forwards other processes' append hints to [`Backend::wakeups`] until `stop`. Without
    /// cross-process notification (SQLite), readers rely on polling: returns at once.
    async fn listen(&self, stop: CancellationToken) {
        let _ = stop;
    }

    /// Refuses to run on a log whose stored order no longer holds (a PostgreSQL database
    /// restored from another cluster); nothing to check elsewhere.
    async fn check_log_order(&self) -> Result<()> {
        Ok(())
    }

    /// Repairs a database restored from another cluster (PostgreSQL); elsewhere nothing
    /// depends on the cluster, so there is nothing to repair.
    async fn repair_log_order(&self) -> Result<RestoreRepair> {
        Ok(RestoreRepair::default())
    }

    /// The events after `after` in log order that match `scope`, at most `limit` of them: one
    /// query, whose rows are decoded as they are taken and never buffered whole (each event
    /// with roughly what it costs in memory).
    fn read_log<'a>(
        &'a self,
        after: Position,
        limit: usize,
        scope: &'a Scope,
    ) -> Result<LogRows<'a>>;

    /// How many pages of the runner's reader one query on the log may serve: a server sends
    /// the next rows while the reader hands out the last ones, and plans one statement for
    /// all of them.
    fn pages_per_query(&self) -> usize {
        10
    }

    /// Up to `limit` events after `after` in log order that match `scope`, stopping early once
    /// they take `max_bytes` in memory (the unit tests' page; the runner's reader reads pages
    /// with [`Backend::read_log`] and [`Page::take`]).
    #[cfg(all(test, feature = "sqlite"))]
    async fn read_page(
        &self,
        after: Position,
        limit: usize,
        max_bytes: usize,
        scope: &Scope,
    ) -> Result<Page> {
        let mut rows = self.read_log(after, limit, scope)?;
        Page::take(&mut rows, limit, max_bytes).await
    }

    /// The stored event at `global_position`.
    async fn read_event(&self, global_position: i64) -> Result<Option<PersistedEvent>>;

    /// The position of the last committed event (0 for an empty log).
    async fn head(&self) -> Result<i64>;

    /// Whether a committed event in `scope` at or below `head` is still unread after `after`
    /// because an older transaction in flight holds the read fence back. Without a fence
    /// (SQLite: position order is commit order), never.
    async fn held_back(&self, after: Position, head: i64, scope: &Scope) -> Result<bool> {
        let _ = (after, head, scope);
        Ok(false)
    }

    /// The oldest transaction in flight that holds reads back, if the database has a fence.
    async fn fence(&self) -> Result<Option<Fence>> {
        Ok(None)
    }

    /// How many events in `scope` after `after` belong to `partition`, and when the oldest
    /// of them was created.
    async fn lag_after(
        &self,
        after: Position,
        scope: &Scope,
        partition: Partition,
    ) -> Result<(u64, Option<OffsetDateTime>)>;

    /// Opens the transaction in which a projection's partitions are decided (its checkpoint
    /// rows created, other layouts fenced), holding the projection's lock: one process at a
    /// time. A paused process must not hold it forever (PostgreSQL ends the transaction once
    /// idle too long; on SQLite it is the write lock).
    async fn begin_setup(&self, projection: &str) -> Result<Box<dyn Batch>>;

    /// Every stored checkpoint row of `projection`, every layout, for status.
    async fn checkpoints(&self, projection: &str) -> Result<Vec<CheckpointInfo>>;

    /// Records a handler failure for status (outside any batch transaction).
    async fn record_error(
        &self,
        projection: &str,
        partition: Partition,
        message: &str,
    ) -> Result<()>;

    /// The parked events of `projection`, in log order.
    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>>;

    /// Opens the transaction of a batch. Under a lease (`Some(lease)`) the transaction must
    /// not outlive the lease unnoticed: on PostgreSQL the server closes it once idle for
    /// longer; on SQLite it holds the write lock, so nobody can claim meanwhile.
    async fn begin_batch(&self, lease: Option<Duration>) -> Result<Box<dyn Batch>>;
}

/// [`EventStore`]'s calls, callable on a `dyn Backend`: written once for every store.
#[async_trait::async_trait]
pub(crate) trait Appends: Send + Sync {
    /// [`EventStore::migrate`](EventStore::migrate).
    async fn migrate(&self) -> Result<()>;

    /// [`EventStore::append_and_commit`](EventStore::append_and_commit).
    async fn append_and_commit(
        &self,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult>;

    /// [`EventStore::read_stream`](EventStore::read_stream).
    async fn read_stream(
        &self,
        stream: &StreamId,
        versions: (Bound<u64>, Bound<u64>),
    ) -> Result<Stream>;

    /// [`EventStore::read_all`](EventStore::read_all).
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>>;
}

#[async_trait::async_trait]
impl<S: EventStore> Appends for S {
    async fn migrate(&self) -> Result<()> {
        EventStore::migrate(self).await
    }

    async fn append_and_commit(
        &self,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        EventStore::append_and_commit(self, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        versions: (Bound<u64>, Bound<u64>),
    ) -> Result<Stream> {
        EventStore::read_stream(self, stream, versions).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>> {
        EventStore::read_all(self, after, limit, scope).await
    }
}

/// The transaction of one batch: handlers write through it, and it ends with the checkpoint
/// write.
#[async_trait::async_trait]
pub(crate) trait Batch: Send {
    /// The transaction, as handlers see it.
    fn transaction(&mut self) -> Transaction<'_>;

    /// Moves the partition's checkpoint from `from` to `to`, only while `lease` is still
    /// this worker's and the checkpoint is still at `from` (a compare-and-set that locks the
    /// row, or runs under SQLite's write lock, until the commit). Returns whether it moved.
    async fn move_checkpoint(
        &mut self,
        projection: &str,
        partition: Partition,
        lease: &Lease,
        from: Position,
        to: Position,
    ) -> Result<bool>;

    /// The owner, epoch and position of one checkpoint row (`None`: no such row).
    async fn checkpoint_row(
        &mut self,
        projection: &str,
        partition: Partition,
    ) -> Result<Option<CheckpointRead>>;

    /// Clears the owner of every checkpoint row of `projection` under another partition
    /// count, waiting for any batch committing on them: none of them can commit after.
    async fn fence_layouts(&mut self, projection: &str, partition_count: u32) -> Result<()>;

    /// Every stored checkpoint row of `projection`.
    async fn checkpoint_rows(&mut self, projection: &str) -> Result<Vec<CheckpointRow>>;

    /// Creates the checkpoint rows of `partitions` (of `partition_count`) at `start`, where
    /// missing.
    async fn create_checkpoints(
        &mut self,
        projection: &str,
        partition_count: u32,
        partitions: &[u32],
        start: Position,
    ) -> Result<()>;

    /// Deletes the checkpoints of other layouts of `projection` if no partition of this one
    /// is behind `after`. Returns whether any was deleted.
    async fn retire_layouts(
        &mut self,
        projection: &str,
        partition_count: u32,
        after: Position,
    ) -> Result<bool>;

    /// Parks `event` (with the handler's error, or `None` when an earlier event of its stream
    /// is parked).
    async fn park(
        &mut self,
        projection: &str,
        event: &LogEvent,
        error: Option<&str>,
        attempts: u32,
    ) -> Result<()>;

    /// Removes a parked event after it was replayed.
    async fn unpark(&mut self, projection: &str, position: Position) -> Result<()>;

    /// Deletes every checkpoint and parked event of `projection`.
    async fn forget_projection(&mut self, projection: &str) -> Result<()>;

    /// Commits the batch.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Rolls the batch back.
    async fn rollback(self: Box<Self>) -> Result<()>;
}

/// What is written once for every backend, on top of [`Backend`].
impl dyn Backend {
    /// Loads the checkpoints of `projection` under `partition_count` (see the `checkpoint`
    /// module and `store/lease.rs`): fences every other layout first, so none of its
    /// processes can commit after its checkpoints were read; creates the missing rows where
    /// every earlier layout is known to have handled everything before; retires the earlier
    /// layouts at once if every partition is past them.
    pub(crate) async fn load_checkpoints(
        &self,
        projection: &str,
        partition_count: u32,
    ) -> Result<CheckpointState> {
        let mut tx = self.begin_setup(projection).await?;
        tx.fence_layouts(projection, partition_count).await?;
        let rows = tx.checkpoint_rows(projection).await?;
        let mut state = CheckpointState::from_rows(partition_count, &rows);
        if let Some(&first) = state.created.first() {
            let start = state.current.checkpoints[first as usize];
            tx.create_checkpoints(projection, partition_count, &state.created, start).await?;
        }
        if let Some(after) = state.retire_after().filter(|_| state.old_layouts_passed()) {
            tx.retire_layouts(projection, partition_count, after).await?;
            state.old.clear();
        }
        tx.commit().await?;
        Ok(state)
    }

    /// The streams with parked events in `projection`.
    pub(crate) async fn parked_streams(&self, projection: &str) -> Result<HashSet<StreamId>> {
        Ok(self.parked(projection).await?.into_iter().map(|p| p.stream).collect())
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
}

impl dyn Batch {
    /// Moves the partition's checkpoint from `from` to `to` ([`Batch::move_checkpoint`]);
    /// and retires older layouts when every partition of this one is past `retire_after`.
    /// Returns whether older layouts were retired.
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
        if !self.move_checkpoint(projection, partition, lease, from, to).await? {
            let stored = self.checkpoint_row(projection, partition).await?;
            return Err(CheckpointRead::refusal(stored, projection, partition, lease, from));
        }
        match retire_after {
            Some(after) if to >= after => {
                self.retire_layouts(projection, partition.count, after).await
            }
            _ => Ok(false),
        }
    }
}

/// A page of the log as the runner reads it: its events with their approximate size in
/// memory, and whether it stopped at its limit (in events or bytes) rather than at the end of
/// what is readable.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) events: Vec<(LogEvent, usize)>,
    /// What the events weigh in memory, in all.
    pub(crate) bytes: usize,
    /// What the heaviest of them weighs; 0 for an empty page.
    pub(crate) largest: usize,
    pub(crate) full: bool,
}

/// The events of one query on the log, decoded as they are taken ([`Backend::read_log`]).
pub(crate) type LogRows<'a> = BoxStream<'a, Result<(LogEvent, usize)>>;

/// Decodes the event rows of one query on the log as they are taken.
pub(crate) fn log_rows<'a, R: StoredRow + Send + 'a>(
    rows: BoxStream<'a, std::result::Result<R, sqlx::Error>>,
) -> LogRows<'a> {
    let mut decoder = EventDecoder::default();
    rows.map(move |row| decoder.read(&row?)).boxed()
}

impl Page {
    /// Takes events from `rows` until `limit` were taken or they take `max_bytes`, or the
    /// query ends; the rest of the query is left in `rows`, never buffered. `full` if it
    /// stopped at `limit` or `max_bytes`.
    pub(crate) async fn take(
        rows: &mut LogRows<'_>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page> {
        let mut page = Page::default();
        while page.events.len() < limit && page.bytes < max_bytes {
            let Some((event, size)) = rows.try_next().await? else {
                return Ok(page);
            };
            page.events.push((event, size));
            page.bytes = page.bytes.saturating_add(size);
            page.largest = page.largest.max(size);
        }
        page.full = true;
        Ok(page)
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

/// The oldest transaction in flight in the store's PostgreSQL database, prepared (two-phase)
/// transactions included: readers never go past it. Transactions of other databases of the
/// server do not count.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The backend process running it (`pg_stat_activity.pid`); `None` for a prepared
    /// transaction.
    pub blocking_pid: Option<i32>,
    /// The global id (`gid`) of a prepared transaction: it holds the fence until `COMMIT
    /// PREPARED` or `ROLLBACK PREPARED`.
    pub prepared: Option<String>,
    /// How long it has been open (a prepared transaction: since it was prepared); `None` when
    /// the server does not say (another role's session, to a role without
    /// `pg_read_all_stats`).
    pub age: Option<Duration>,
}

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// Its position in the log.
    pub position: Position,
    /// Its stream.
    pub stream: StreamId,
    /// Its type.
    pub event_type: String,
    /// The handler's last error; `None` when it was parked because an earlier event of its
    /// stream was.
    pub error: Option<String>,
    /// How many times the handler was tried.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
}

/// What a repair of a restored database did
/// ([`PostgresStore::repair_restore`](crate::PostgresStore::repair_restore)). Its `Display` is the one-line summary the CLI's
/// `repair-restore` command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RestoreRepair {
    /// Whether stored ids were ahead of the cluster. `false`: nothing was changed.
    pub repaired: bool,
    /// Events whose transaction id was rewritten.
    pub events: u64,
    /// The distinct transaction ids of the repaired log: one per maximal run of increasing
    /// positions in log order.
    pub transaction_ids: u64,
    /// Aggregate heads rewritten.
    pub heads: u64,
    /// Checkpoint rows rewritten.
    pub checkpoints: u64,
    /// Parked events rewritten.
    pub parked: u64,
    /// Transactions committed first to advance the cluster's counter past the new ids.
    pub counter_advanced_by: u64,
}

impl fmt::Display for RestoreRepair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.repaired {
            return f.write_str(
                "nothing to repair: no stored transaction id is ahead of this database",
            );
        }
        let n =
            |count: u64, noun: &str| format!("{count} {noun}{}", if count == 1 { "" } else { "s" });
        write!(
            f,
            "repaired the stored transaction ids, keeping the log order: {} (now {}), {}, {}, {}",
            n(self.events, "event"),
            n(self.transaction_ids, "transaction id"),
            n(self.heads, "aggregate head"),
            n(self.checkpoints, "checkpoint"),
            n(self.parked, "parked event"),
        )?;
        if self.counter_advanced_by > 0 {
            write!(f, "; advanced the transaction counter by {} first", self.counter_advanced_by)?;
        }
        Ok(())
    }
}
