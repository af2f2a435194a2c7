//! The SQLite event store, the embedded default.
//!
//! SQLite has one writer at a time. Appends run in transactions opened with
//! `BEGIN IMMEDIATE` (see [`EventStore::begin`]), which take the write lock up front, so the
//! head check, the head update and the insert see no concurrent writer, and position order is
//! commit order: a checkpoint is the position alone (`transaction_id` is always 0).
//!
//! A database file is opened in WAL mode with a busy timeout, so readers never block the
//! writer and a writer waits for the lock instead of failing. `:memory:` databases live as
//! long as their single connection; they are for tests and experiments.

use std::fmt::Write as _;
use std::ops::RangeBounds;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Arguments as _, AssertSqlSafe, Sqlite, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::backend::{Backend, Batch, CheckpointInfo, LogRows, ParkedEvent, log_rows};
use super::row::EventDecoder;
use super::{
    CheckpointRead, EventStore, Scope, Statement, Tables, from_unix_micros, hash_to_stored,
    next_version, partition_sql_args, stored_version, unix_micros,
};
use crate::backoff::Backoff;
use crate::checkpoint::CheckpointRow;
use crate::error::{Error, Result};
use crate::event::{
    AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId, validate_append,
};
use crate::partition::Partition;
use crate::partition::partition_hash;
use crate::projection::{Lease, Transaction};
use crate::store::lease::int8;
use crate::version::ExpectedVersion;

mod leases;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_event_store.sql"),
    include_str!("../../migrations/sqlite/0002_projections.sql"),
    include_str!("../../migrations/sqlite/0003_leases.sql"),
    include_str!("../../migrations/sqlite/0004_snapshots.sql"),
];

/// Columns that migrations add to existing tables, as (table, column, definition): SQLite has
/// no `ADD COLUMN IF NOT EXISTS`, so each is added only where `pragma_table_info` lacks it.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    // Partition leases: who holds the partition, the fencing token of that claim, and until
    // when (microseconds since the Unix epoch, UTC). NULL owner: free.
    ("{checkpoints}", "owner", "TEXT"),
    ("{checkpoints}", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("{checkpoints}", "lease_until", "INTEGER"),
    // Where each worker process runs (see `store/lease.rs`): a restarted process takes over at
    // once the partitions of a process of its own host that is gone.
    ("{workers}", "host", "TEXT"),
    ("{workers}", "pid", "INTEGER"),
];

/// Columns of a [`LogEvent`], read by name (`store/row.rs`). SQLite has no transaction ids
/// (position order is commit order), and all but the position, the id and the payload are
/// read as one column `envelope`, a JSON array (times in microseconds): sqlx copies every
/// column of every row into an allocation of its own, even an integer or a `NULL`, on the
/// connection's thread, and the reader frees them on another, both taking turns at the
/// allocator's lock. Four columns instead of thirteen made the benchmark's catch-up on SQLite
/// about 1.4 times as fast at one partition, 1.6 at eight (alternating runs of
/// `pupsource-bench --no-postgres --no-mysql --only catch-up`).
const EVENT_COLUMNS: &str = "global_position, event_id, payload, \
    json_array(bounded_context, aggregate_type, aggregate_id, aggregate_version, event_type, \
      event_version, metadata, causation_id, correlation_id, trace_id, partition_hash, \
      created_at) AS envelope";

/// The `VALUES` tuple of one inserted event row, in the column order of `insert_events`.
const EVENT_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Bind parameters per inserted event row.
const PARAMS_PER_EVENT: usize = 14;

/// SQLite's limit on bind parameters in one statement (since 3.32).
const MAX_PARAMS: usize = 32_766;

/// How long a writer waits for the write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows a connection's SQLite thread (of a store opened with [`SqliteStore::connect`]) may
/// read ahead of the task that consumes them. A page of the runner's default size (1,000
/// events) fits, so the thread reads it without waiting on its reader: with sqlx's default
/// of 50 the two threads took turns at every row once the buffer filled, two context
/// switches per event. What is read ahead is bounded in bytes by the row limit the runner
/// gives each page: no more rows than its byte budget fits (`runner/reader.rs`, `PageSize`).
const ROW_BUFFER: usize = 1024;

/// The store's statements, rendered once with its table names.
pub(super) struct Sql {
    /// The start of a page of the log; the scope's filters and the limit follow.
    read_log: Statement,
    /// The start of a multi-row insert; one `VALUES` tuple per event follows.
    insert_events: Statement,
    /// The start of a look-up of event ids; the `IN` list follows.
    events_exist: Statement,
    head: Statement,
    /// Moves a stream's head on by `?4` events if it is at the expected version `?5` (`NULL`:
    /// any; a stream that does not exist is at 0) and stays in range (at most `?6` before),
    /// and returns the new version; no row when refused. The concurrency check and the head
    /// update of an append in one round trip.
    claim_head: Statement,
    read_stream: Statement,
    delete_checkpoints: Statement,
    delete_parked: Statement,
    fence_layouts: Statement,
    load_checkpoints: Statement,
    create_checkpoint: Statement,
    save_checkpoint: Statement,
    checkpoint_row: Statement,
    retire_layouts: Statement,
    checkpoints: Statement,
    record_error: Statement,
    park: Statement,
    unpark: Statement,
    parked: Statement,
    read_event: Statement,
    head_position: Statement,
    lag_after: Statement,
    pub(super) leases: leases::LeaseSql,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let key = "bounded_context = ?1 AND aggregate_type = ?2 AND aggregate_id = ?3";
        Sql {
            read_log: Statement::new(
                tables,
                &format!("SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE global_position > ?"),
            ),
            insert_events: Statement::new(
                tables,
                "INSERT INTO \"{events}\" (bounded_context, aggregate_type, aggregate_id, \
                 aggregate_version, event_id, event_type, event_version, payload, metadata, \
                 causation_id, correlation_id, trace_id, partition_hash, created_at) VALUES ",
            ),
            events_exist: Statement::new(
                tables,
                "SELECT EXISTS (SELECT 1 FROM \"{events}\" WHERE event_id IN (",
            ),
            head: Statement::new(
                tables,
                &format!("SELECT version FROM \"{{aggregate_heads}}\" WHERE {key}"),
            ),
            claim_head: Statement::new(
                tables,
                &format!(
                    "INSERT INTO \"{{aggregate_heads}}\" \
                     (bounded_context, aggregate_type, aggregate_id, version) \
                     SELECT ?1, ?2, ?3, ?4 WHERE ?5 IS NULL OR ?5 = 0 \
                       OR EXISTS (SELECT 1 FROM \"{{aggregate_heads}}\" WHERE {key}) \
                     ON CONFLICT (bounded_context, aggregate_type, aggregate_id) \
                     DO UPDATE SET version = version + ?4 \
                     WHERE (?5 IS NULL OR version = ?5) AND version <= ?6 \
                     RETURNING version"
                ),
            ),
            read_stream: Statement::new(
                tables,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE {key} \
                     AND aggregate_version BETWEEN ?4 AND ?5 ORDER BY aggregate_version"
                ),
            ),
            delete_checkpoints: Statement::new(
                tables,
                "DELETE FROM \"{checkpoints}\" WHERE projection = ?1",
            ),
            delete_parked: Statement::new(
                tables,
                "DELETE FROM \"{dead_letters}\" WHERE projection = ?1",
            ),
            fence_layouts: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET owner = NULL, lease_until = NULL \
             WHERE projection = ?1 AND partition_count <> ?2 AND owner IS NOT NULL",
            ),
            load_checkpoints: Statement::new(
                tables,
                "SELECT partition_count, partition, transaction_id, global_position \
             FROM \"{checkpoints}\" WHERE projection = ?1",
            ),
            create_checkpoint: Statement::new(
                tables,
                "INSERT INTO \"{checkpoints}\" (projection, partition_count, partition, transaction_id, \
                 global_position, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            ),
            save_checkpoint: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET transaction_id = ?4, global_position = ?5, updated_at = ?6, \
             last_error = NULL, last_error_at = NULL \
             WHERE projection = ?1 AND partition_count = ?2 AND partition = ?3 \
               AND owner = ?7 AND epoch = ?8 AND transaction_id = ?9 AND global_position = ?10",
            ),
            checkpoint_row: Statement::new(
                tables,
                "SELECT owner, epoch, transaction_id, global_position FROM \"{checkpoints}\" \
             WHERE projection = ?1 AND partition_count = ?2 AND partition = ?3",
            ),
            retire_layouts: Statement::new(
                tables,
                "DELETE FROM \"{checkpoints}\" WHERE projection = ?1 AND partition_count <> ?2 \
             AND NOT EXISTS (SELECT 1 FROM \"{checkpoints}\" c WHERE c.projection = ?1 \
               AND c.partition_count = ?2 AND (c.transaction_id, c.global_position) < (?3, ?4))",
            ),
            checkpoints: Statement::new(
                tables,
                "SELECT partition_count, partition, transaction_id, global_position, updated_at, last_error, \
             owner, epoch, lease_until \
             FROM \"{checkpoints}\" WHERE projection = ?1 ORDER BY partition_count, partition",
            ),
            record_error: Statement::new(
                tables,
                "UPDATE \"{checkpoints}\" SET last_error = ?4, last_error_at = ?5 \
             WHERE projection = ?1 AND partition_count = ?2 AND partition = ?3",
            ),
            park: Statement::new(
                tables,
                "INSERT INTO \"{dead_letters}\" (projection, transaction_id, global_position, \
             bounded_context, aggregate_type, aggregate_id, event_type, error, attempts, parked_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
            ),
            unpark: Statement::new(
                tables,
                "DELETE FROM \"{dead_letters}\" WHERE projection = ?1 AND global_position = ?2",
            ),
            parked: Statement::new(
                tables,
                "SELECT transaction_id, global_position, bounded_context, aggregate_type, aggregate_id, \
             event_type, error, attempts, parked_at FROM \"{dead_letters}\" WHERE projection = ?1 \
             ORDER BY transaction_id, global_position",
            ),
            read_event: Statement::new(
                tables,
                &format!("SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE global_position = ?1"),
            ),
            head_position: Statement::new(
                tables,
                "SELECT COALESCE(max(global_position), 0) FROM \"{events}\"",
            ),
            lag_after: Statement::new(
                tables,
                &format!(
                    "SELECT count(*), min(created_at) FROM \"{{events}}\" WHERE global_position > $1 AND $2 = $2 \
             AND ($3 IS NULL OR bounded_context IN (SELECT value FROM json_each($3))) \
             AND ($4 IS NULL OR aggregate_type IN (SELECT value FROM json_each($4))) \
             AND ($5 IS NULL OR event_type IN (SELECT value FROM json_each($5))) \
             AND {} = $8",
                    super::PARTITION_OF_SQL
                ),
            ),
            leases: leases::LeaseSql::new(tables),
        }
    }
}

/// The event store on SQLite. Cheap to clone: clones share the pool.
///
/// ```
/// use pupsource::{Event, EventStore, ExpectedVersion, SqliteStore, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pupsource::Result<()> {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// let user = StreamId::new("Identity", "User", "42");
/// let event = Event::new(&user, "UserCreated", serde_json::json!({ "email": "ada@example.com" }));
/// let appended = store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
/// assert_eq!(appended.to_version, 1);
/// assert_eq!(store.read_stream(&user, ..).await?.version(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    tables: Tables,
    sql: Sql,
    /// Bumped on every append of this process; readers wait on it.
    wake: watch::Sender<u64>,
    /// Taken by each batch (and setup) transaction of this process before it asks SQLite for
    /// the write lock: partitions queue here in turn instead of polling the lock in the busy
    /// handler, which sleeps up to 100 ms between tries.
    batch_turn: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// A store on `pool` with the default table names.
    pub fn new(pool: SqlitePool) -> Self {
        Self::with_tables(pool, Tables::default())
    }

    /// A store on `pool` with the given table names.
    pub fn with_tables(pool: SqlitePool, tables: Tables) -> Self {
        let inner = Inner {
            sql: Sql::new(&tables),
            pool,
            tables,
            wake: watch::Sender::new(0),
            batch_turn: Arc::default(),
        };
        SqliteStore { inner: Arc::new(inner) }
    }

    /// Opens the database at `url` (`sqlite://path/to/file.db`, `sqlite:file.db` or
    /// `sqlite::memory:`), creating the file if needed, in WAL mode with a busy timeout.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL; [`Error::Connect`], naming the file, if
    /// it cannot be opened (or stays locked by another process past the busy timeout).
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(Error::Configuration)?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .row_buffer_size(ROW_BUFFER);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // An empty file name makes SQLite give every connection a temporary database of its
        // own: tables created on one would be missing on the others.
        if !in_memory && options.get_filename().as_os_str().is_empty() {
            return Err(crate::InvalidInput::DatabaseUrl {
                url: url.to_owned(),
                problem: "a SQLite URL needs a file name (`sqlite:app.db`) or `sqlite::memory:`",
            }
            .into());
        }
        let (pool, options) = if in_memory {
            // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (pool, options)
        } else {
            (
                SqlitePoolOptions::new().max_connections(16),
                options.journal_mode(SqliteJournalMode::Wal),
            )
        };
        // Switching a new file to WAL takes an exclusive lock, and SQLite answers `SQLITE_BUSY`
        // at once (without waiting out the busy timeout) while another process opens the same
        // file: wait for it like for any other lock, up to the busy timeout.
        let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        loop {
            match pool.clone().connect_with(options.clone()).await.map_err(Error::from) {
                Ok(pool) => return Ok(Self::new(pool)),
                Err(err) if err.is_transient() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(Error::Connection(err) | Error::Database(err)) => {
                    let address = options.get_filename().display().to_string();
                    return Err(Error::Connect { database: "SQLite", address, cause: err.into() });
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`).
    pub(crate) async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.inner.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A batch transaction: this process's turn, then the write lock.
    async fn begin_turn(&self) -> Result<Box<dyn Batch>> {
        let turn = Arc::clone(&self.inner.batch_turn).lock_owned().await;
        let tx = self.begin_immediate().await?;
        Ok(Box::new(SqliteBatch { store: self.clone(), tx, _turn: turn }))
    }

    fn appended(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The query of a page of the log: events after `after` in `scope`, in position order.
    fn log_query<'q>(
        &self,
        after: Position,
        limit: usize,
        scope: &'q Scope,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut sql = self.inner.sql.read_log.text().to_owned();
        let mut binds: Vec<&str> = Vec::new();
        for (column, values) in [
            ("bounded_context", &scope.contexts),
            ("aggregate_type", &scope.aggregate_types),
            ("event_type", &scope.event_types),
        ] {
            if values.is_empty() {
                continue;
            }
            // `+column`: no index on it. Otherwise SQLite may walk the stream index for an IN
            // list and sort every page, instead of walking the log in position order.
            let _ = write!(sql, " AND +{column} IN (");
            for (i, value) in values.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                binds.push(value);
            }
            sql.push(')');
        }
        sql.push_str(" ORDER BY global_position LIMIT ?");
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after.global_position);
        for value in binds {
            query = query.bind(value);
        }
        query.bind(i64::try_from(limit).unwrap_or(i64::MAX))
    }

    /// Inserts one chunk of events in one statement, the first at version `first_version`;
    /// returns the position of each event.
    ///
    /// Placeholders are anonymous `?`: for every bound value SQLite looks a numbered `?NNN` up
    /// in a linear scan of the statement's parameter names, which takes quadratic time in a
    /// statement of hundreds of rows. The text depends only on the chunk's length, so each
    /// connection's statement cache prepares it once per length.
    ///
    /// Positions are not read back: the transaction holds the write lock, and SQLite inserts
    /// the rows of a `VALUES` list in order, each at the next `AUTOINCREMENT` position, so the
    /// chunk's positions are the ones up to the last inserted row id.
    async fn insert_chunk(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        events: &[Event],
        first_version: u64,
        columns: &StreamColumns,
    ) -> Result<std::ops::RangeInclusive<i64>> {
        let text = self.inner.sql.insert_events.text();
        let mut sql = String::with_capacity(text.len() + events.len() * (EVENT_ROW.len() + 2));
        sql.push_str(text);
        for i in 0..events.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(EVENT_ROW);
        }

        // The arguments are reserved in one go rather than grown bind by bind.
        let mut args = SqliteArguments::default();
        args.reserve(events.len() * PARAMS_PER_EVENT, 0);
        macro_rules! bind {
            ($($value:expr),* $(,)?) => { $( args.add($value).map_err(sqlx::Error::Encode)?; )* };
        }
        // One text buffer for every JSON value, and one allocation for a run of equal event
        // types or metadata (the usual case), instead of a growing string per value.
        let mut json = String::with_capacity(256);
        let (mut event_type, mut metadata) = (SharedText::default(), SharedText::default());
        for (offset, event) in (0u64..).zip(events) {
            json.clear();
            let _ = write!(json, "{}", event.payload);
            let payload = Arc::<str>::from(json.as_str());
            json.clear();
            let _ = write!(json, "{}", event.metadata);
            bind!(
                Arc::clone(&columns.context),
                Arc::clone(&columns.aggregate_type),
                Arc::clone(&columns.aggregate_id),
                stored_version(first_version + offset)?,
                event.event_id,
                event_type.of(&event.event_type),
                i64::from(event.event_version),
                payload,
                metadata.of(&json),
                event.causation_id.as_deref(),
                event.correlation_id.as_deref(),
                event.trace_id.as_deref(),
                columns.hash,
                unix_micros(event.created_at),
            );
        }
        let done = sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut **tx).await?;
        let last = done.last_insert_rowid();
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        Ok(last - count + 1..=last)
    }

    /// Why `claim_head` refused an append of `count` events: the stream is not at the
    /// expected version, or its version would leave the stored range.
    async fn refused_claim(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        stream: &StreamId,
        expected: ExpectedVersion,
        count: usize,
    ) -> Error {
        let current: Option<i64> = match sqlx::query_scalar(self.inner.sql.head.sql())
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .fetch_optional(&mut **tx)
            .await
        {
            Ok(current) => current,
            Err(err) => return err.into(),
        };
        let actual = current.map_or(0, i64::unsigned_abs);
        match next_version(actual, count) {
            Err(out_of_range) if expected.exact().is_none_or(|v| v == actual) => out_of_range,
            _ => Error::Concurrency { stream: stream.clone(), expected, actual },
        }
    }

    /// Whether any of these event ids is already stored (in chunks: SQLite limits the bind
    /// parameters of one statement).
    async fn any_event_stored(
        &self,
        tx: &mut sqlx::Transaction<'_, Sqlite>,
        events: &[Event],
    ) -> Result<bool> {
        for chunk in events.chunks(MAX_PARAMS) {
            let mut sql = self.inner.sql.events_exist.text().to_owned();
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
            }
            sql.push_str("))");
            let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
            for event in chunk {
                query = query.bind(event.event_id);
            }
            if query.fetch_one(&mut **tx).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// [`EventStore::read_stream`] through `executor`: the pool, or a transaction (an
    /// aggregate loaded inside the caller's transaction).
    pub(crate) async fn read_stream_on<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = Sqlite>,
        stream: &StreamId,
        versions: impl RangeBounds<u64>,
    ) -> Result<Stream> {
        let versions = (versions.start_bound().cloned(), versions.end_bound().cloned());
        super::read_stream_with(&self.inner.sql.read_stream, executor, stream, versions).await
    }
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    fn name(&self) -> &'static str {
        "SQLite"
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// One: the connection's thread already reads a page ahead of the reader ([`ROW_BUFFER`]),
    /// and a catch-up from queries left open for ten pages was slower (`pupsource-bench`).
    fn pages_per_query(&self) -> usize {
        1
    }

    fn read_log<'a>(
        &'a self,
        after: Position,
        limit: usize,
        scope: &'a Scope,
    ) -> Result<LogRows<'a>> {
        scope.validate()?;
        Ok(log_rows(self.log_query(after, limit, scope).fetch(&self.inner.pool)))
    }

    async fn read_event(&self, global_position: i64) -> Result<Option<PersistedEvent>> {
        super::read_event_with(&self.inner.sql.read_event, &self.inner.pool, global_position).await
    }

    async fn head(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(self.inner.sql.head_position.sql())
            .fetch_one(&self.inner.pool)
            .await?)
    }

    async fn lag_after(
        &self,
        after: Position,
        scope: &Scope,
        partition: Partition,
    ) -> Result<(u64, Option<OffsetDateTime>)> {
        let (count, wrap) = partition_sql_args(partition.count);
        let (n, oldest): (i64, Option<i64>) = sqlx::query_as(self.inner.sql.lag_after.sql())
            .bind(after.global_position)
            .bind(after.transaction_id)
            .bind(json_list(&scope.contexts))
            .bind(json_list(&scope.aggregate_types))
            .bind(json_list(&scope.event_types))
            .bind(count)
            .bind(wrap)
            .bind(i64::from(partition.index))
            .fetch_one(&self.inner.pool)
            .await?;
        Ok((n.unsigned_abs(), oldest.and_then(from_unix_micros)))
    }

    /// `BEGIN IMMEDIATE`: the write lock, so one process at a time decides where new
    /// partitions start, and no batch of another partition count is in flight meanwhile.
    async fn begin_setup(&self, _projection: &str) -> Result<Box<dyn Batch>> {
        self.begin_turn().await
    }

    async fn checkpoints(&self, projection: &str) -> Result<Vec<CheckpointInfo>> {
        let rows =
            super::projection_rows(&self.inner.sql.checkpoints, &self.inner.pool, projection)
                .await?;
        rows.iter().map(CheckpointInfo::read).collect()
    }

    async fn record_error(
        &self,
        projection: &str,
        partition: Partition,
        message: &str,
    ) -> Result<()> {
        sqlx::query(self.inner.sql.record_error.sql())
            .bind(projection)
            .bind(i64::from(partition.count))
            .bind(i64::from(partition.index))
            .bind(message)
            .bind(unix_micros(OffsetDateTime::now_utc()))
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>> {
        let rows =
            super::projection_rows(&self.inner.sql.parked, &self.inner.pool, projection).await?;
        rows.iter().map(ParkedEvent::read).collect()
    }

    /// A batch holds the write lock from its start: nobody can claim its partition meanwhile,
    /// so it needs no other bound on its life.
    async fn begin_batch(&self, _lease: Option<Duration>) -> Result<Box<dyn Batch>> {
        self.begin_turn().await
    }
}

/// The transaction of one batch on SQLite (it holds the write lock, and this process's turn:
/// dropped after the transaction ends).
struct SqliteBatch {
    store: SqliteStore,
    tx: sqlx::Transaction<'static, Sqlite>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait::async_trait]
impl Batch for SqliteBatch {
    fn transaction(&mut self) -> Transaction<'_> {
        Transaction::Sqlite(&mut self.tx)
    }

    async fn move_checkpoint(
        &mut self,
        projection: &str,
        partition: Partition,
        lease: &Lease,
        from: Position,
        to: Position,
    ) -> Result<bool> {
        let done = sqlx::query(self.store.inner.sql.save_checkpoint.sql())
            .bind(projection)
            .bind(i64::from(partition.count))
            .bind(i64::from(partition.index))
            .bind(to.transaction_id)
            .bind(to.global_position)
            .bind(unix_micros(OffsetDateTime::now_utc()))
            .bind(&*lease.owner)
            .bind(int8(lease.epoch))
            .bind(from.transaction_id)
            .bind(from.global_position)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn checkpoint_row(
        &mut self,
        projection: &str,
        partition: Partition,
    ) -> Result<Option<CheckpointRead>> {
        let row = sqlx::query(self.store.inner.sql.checkpoint_row.sql())
            .bind(projection)
            .bind(i64::from(partition.count))
            .bind(i64::from(partition.index))
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(CheckpointRead::read).transpose()
    }

    async fn fence_layouts(&mut self, projection: &str, partition_count: u32) -> Result<()> {
        sqlx::query(self.store.inner.sql.fence_layouts.sql())
            .bind(projection)
            .bind(i64::from(partition_count))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn checkpoint_rows(&mut self, projection: &str) -> Result<Vec<CheckpointRow>> {
        let statement = &self.store.inner.sql.load_checkpoints;
        let rows = super::projection_rows(statement, &mut *self.tx, projection).await?;
        rows.iter().map(CheckpointRow::read).collect()
    }

    async fn create_checkpoints(
        &mut self,
        projection: &str,
        partition_count: u32,
        partitions: &[u32],
        start: Position,
    ) -> Result<()> {
        let now = unix_micros(OffsetDateTime::now_utc());
        for &partition in partitions {
            sqlx::query(self.store.inner.sql.create_checkpoint.sql())
                .bind(projection)
                .bind(i64::from(partition_count))
                .bind(i64::from(partition))
                .bind(start.transaction_id)
                .bind(start.global_position)
                .bind(now)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn retire_layouts(
        &mut self,
        projection: &str,
        partition_count: u32,
        after: Position,
    ) -> Result<bool> {
        let done = sqlx::query(self.store.inner.sql.retire_layouts.sql())
            .bind(projection)
            .bind(i64::from(partition_count))
            .bind(after.transaction_id)
            .bind(after.global_position)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn park(
        &mut self,
        projection: &str,
        event: &LogEvent,
        error: Option<&str>,
        attempts: u32,
    ) -> Result<()> {
        sqlx::query(self.store.inner.sql.park.sql())
            .bind(projection)
            .bind(event.position.transaction_id)
            .bind(event.position.global_position)
            .bind(&event.stream.context)
            .bind(&event.stream.aggregate_type)
            .bind(&event.stream.aggregate_id)
            .bind(&event.event_type)
            .bind(error)
            .bind(i64::from(attempts))
            .bind(unix_micros(OffsetDateTime::now_utc()))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn unpark(&mut self, projection: &str, position: Position) -> Result<()> {
        sqlx::query(self.store.inner.sql.unpark.sql())
            .bind(projection)
            .bind(position.global_position)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn forget_projection(&mut self, projection: &str) -> Result<()> {
        let sql = &self.store.inner.sql;
        for statement in [&sql.delete_checkpoints, &sql.delete_parked] {
            sqlx::query(statement.sql()).bind(projection).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(self.tx.rollback().await?)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("tables", &self.inner.tables).finish_non_exhaustive()
    }
}

impl EventStore for SqliteStore {
    type Database = Sqlite;

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Sqlite>> {
        self.begin_immediate().await
    }

    async fn append<'t>(
        &self,
        tx: &mut sqlx::Transaction<'t, Sqlite>,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let stream = validate_append(events)?;
        let expected_at = match expected.exact() {
            Some(version) => {
                let stored = stored_version(version)?;
                next_version(version, events.len())?;
                Some(stored)
            }
            None => None,
        };
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let claimed: Option<i64> = sqlx::query_scalar(self.inner.sql.claim_head.sql())
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(count)
            .bind(expected_at)
            .bind(i64::MAX - count)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(to_version) = claimed.map(i64::unsigned_abs) else {
            return Err(self.refused_claim(tx, stream, expected, events.len()).await);
        };
        let actual = to_version - count.unsigned_abs();
        let columns = StreamColumns::of(stream);
        let mut positions = Vec::with_capacity(events.len());
        for (chunk_start, chunk) in (0..)
            .step_by(MAX_PARAMS / PARAMS_PER_EVENT)
            .zip(events.chunks(MAX_PARAMS / PARAMS_PER_EVENT))
        {
            let first_version = actual + 1 + chunk_start;
            match self.insert_chunk(tx, chunk, first_version, &columns).await {
                Ok(chunk_positions) => positions.extend(
                    chunk_positions
                        .map(|global_position| Position { transaction_id: 0, global_position }),
                ),
                Err(Error::Constraint { kind: crate::ConstraintKind::Unique, .. })
                    if self.any_event_stored(tx, events).await? =>
                {
                    return Err(Error::DuplicateEvent { stream: stream.clone() });
                }
                Err(err) => return Err(err),
            }
        }
        self.appended();
        Ok(AppendResult { from_version: actual + 1, to_version, positions })
    }

    async fn append_and_commit(
        &self,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let mut tx = self.begin().await?;
        let result = self.append(&mut tx, expected, events).await?;
        tx.commit().await?;
        self.appended();
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        versions: impl RangeBounds<u64> + Send,
    ) -> Result<Stream> {
        self.read_stream_on(&self.inner.pool, stream, versions).await
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>> {
        scope.validate()?;
        let rows = self.log_query(after, limit, scope).fetch_all(&self.inner.pool).await?;
        EventDecoder::read_all(&rows)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_immediate().await?;
        for migration in MIGRATIONS {
            sqlx::raw_sql(AssertSqlSafe(self.inner.tables.render(migration)))
                .execute(&mut *tx)
                .await?;
        }
        for &(table, column, definition) in ADDED_COLUMNS {
            let table = self.inner.tables.render(table);
            let present: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            )
            .bind(&table)
            .bind(column)
            .fetch_one(&mut *tx)
            .await?;
            if !present {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "ALTER TABLE \"{table}\" ADD COLUMN {column} {definition}"
                )))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The columns every event of one append shares, shared by its rows' bind values.
struct StreamColumns {
    context: Arc<str>,
    aggregate_type: Arc<str>,
    aggregate_id: Arc<str>,
    /// The stored partition hash of the aggregate id.
    hash: i64,
}

impl StreamColumns {
    fn of(stream: &StreamId) -> Self {
        StreamColumns {
            context: stream.context.as_str().into(),
            aggregate_type: stream.aggregate_type.as_str().into(),
            aggregate_id: stream.aggregate_id.as_str().into(),
            hash: hash_to_stored(partition_hash(&stream.aggregate_id)),
        }
    }
}

/// A text bound for many rows: equal to the previous one, it shares its allocation.
#[derive(Default)]
struct SharedText(Option<Arc<str>>);

impl SharedText {
    fn of(&mut self, text: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *text => Arc::clone(last),
            _ => Arc::clone(self.0.insert(text.into())),
        }
    }
}

/// Scope lists as JSON arrays, `NULL` for "all".
fn json_list(values: &[String]) -> Option<String> {
    (!values.is_empty()).then(|| serde_json::Value::from(values.to_vec()).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of large payloads stops at its byte budget, not at its event limit.
    #[tokio::test]
    async fn a_page_of_large_payloads_is_bounded_in_bytes() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        EventStore::migrate(&store).await.expect("migrate");
        let stream = StreamId::new("Test", "Thing", "big");
        let payload = serde_json::json!({ "blob": "x".repeat(100_000) });
        let events: Vec<Event> =
            (0..20).map(|_| Event::new(&stream, "Big", payload.clone())).collect();
        EventStore::append_and_commit(&store, ExpectedVersion::NoStream, &events)
            .await
            .expect("append");

        let all = Scope::all();
        let page = store.read_page(Position::START, 1_000, 300_000, &all).await.expect("page");
        let sizes: Vec<usize> = page.events.iter().map(|(_, size)| *size).collect();
        assert_eq!(sizes.len(), 3, "three of 100 kB reach 300 kB: {sizes:?}");
        assert!(sizes.iter().all(|&s| s > 100_000 && s < 101_000), "{sizes:?}");
        assert!(page.full, "it stopped at its budget, not at the end of the log");

        let page = store.read_page(Position::START, 5, usize::MAX, &all).await.expect("page");
        assert_eq!((page.events.len(), page.full), (5, true));
        let after = Position { transaction_id: 0, global_position: 15 };
        let rest = store.read_page(after, 10, usize::MAX, &all).await.expect("page");
        assert_eq!((rest.events.len(), rest.full), (5, false), "the end of the log");
    }
}
