//! The event store: one [`EventStore`] trait, one implementation per database.
//!
//! - [`PostgresStore`]: production, many processes and machines. Appends are one statement
//!   (`UNNEST` of the batch plus the aggregate-head update in a CTE); reads are fenced at the
//!   oldest transaction still in flight, so an event committed after a later one is never
//!   skipped (see [`Position`]).
//! - [`SqliteStore`]: the embedded default. Writers are serialized by `BEGIN IMMEDIATE`, so
//!   position order is commit order.
//! - `MySqlStore` (feature `mysql`): MySQL 8 and MariaDB 10.6+, many processes and machines.
//!   Each append takes its positions under one row lock held until it commits, so position
//!   order is commit order there too.
//!
//! Table names are configurable through [`Tables`]; every name is validated as a plain SQL
//! identifier and quoted, and every value is a bind parameter, so nothing a caller passes is
//! ever spliced into SQL.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::ops::{Bound, RangeBounds};

use crate::error::{InvalidInput, Result};
use crate::event::{AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId};
use crate::partition::Partition;
use crate::projection::Lease;
use crate::version::ExpectedVersion;

mod any;
pub(crate) mod backend;
pub(crate) mod lease;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
pub(crate) mod row;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use any::{ConnectOptions, Store};
pub(crate) use backend::Backend;
pub use backend::{Fence, LeaseInfo, ParkedEvent, RestoreRepair};
pub use lease::WorkerStatus;
#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
#[cfg(feature = "mysql")]
pub(crate) use mysql::codes as mysql_codes;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

/// An append-only log of events with per-aggregate streams.
///
/// The caller owns the transaction of an append, so the events can commit together with other
/// writes (e.g. a command's outbox). [`EventStore::append_and_commit`] is the shortcut when
/// there is nothing else to write.
pub trait EventStore: Clone + Send + Sync + 'static {
    /// The sqlx database of this backend.
    type Database: sqlx::Database;

    /// Starts a transaction suitable for appends (`BEGIN IMMEDIATE` on SQLite).
    fn begin(
        &self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'static, Self::Database>>> + Send;

    /// Appends `events`, all of one stream, in the caller's transaction.
    ///
    /// # Errors
    /// - [`Error::Concurrency`](crate::Error::Concurrency) if the stream is not at `expected`,
    ///   or (PostgreSQL) if a younger transaction appended to it first; nothing was written.
    /// - [`Error::DuplicateEvent`](crate::Error::DuplicateEvent) if an event id is stored already.
    /// - [`Error::InvalidInput`](crate::Error::InvalidInput) for an empty list, mixed streams,
    ///   empty or oversized names, or NUL characters; nothing was sent to the database.
    ///
    /// After an error the transaction should be rolled back.
    fn append<'t>(
        &self,
        tx: &mut sqlx::Transaction<'t, Self::Database>,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Appends `events` in a transaction of its own and commits it.
    fn append_and_commit(
        &self,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> impl Future<Output = Result<AppendResult>> + Send {
        async move {
            let mut tx = self.begin().await?;
            let result = self.append(&mut tx, expected, events).await?;
            tx.commit().await?;
            Ok(result)
        }
    }

    /// Reads the events of one stream whose versions fall in `versions` (e.g. `..`, `3..=5`).
    fn read_stream(
        &self,
        stream: &StreamId,
        versions: impl RangeBounds<u64> + Send,
    ) -> impl Future<Output = Result<Stream>> + Send;

    /// Reads up to `limit` events after `after`, in log order, that match `scope`.
    ///
    /// The returned positions are strictly increasing; passing the last one as `after` reads
    /// on. On PostgreSQL only events of transactions older than every transaction still in
    /// flight are returned, so a reader never skips an event that commits late.
    fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> impl Future<Output = Result<Vec<PersistedEvent>>> + Send;

    /// Creates the store's tables if they do not exist. Idempotent and safe to run from many
    /// processes at once.
    fn migrate(&self) -> impl Future<Output = Result<()>> + Send;
}

/// Which events a reader wants. Empty lists mean "all"; the lists combine with AND.
///
/// ```
/// use pupsource::Scope;
///
/// let scope = Scope::all().contexts(["Identity"]).event_types(["UserCreated", "UserDeleted"]);
/// assert!(!scope.is_all());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Bounded contexts to include.
    pub contexts: Vec<String>,
    /// Aggregate types to include.
    pub aggregate_types: Vec<String>,
    /// Event types to include.
    pub event_types: Vec<String>,
}

impl Scope {
    /// Every event.
    pub fn all() -> Self {
        Scope::default()
    }

    /// Restricts to these bounded contexts.
    pub fn contexts<S: Into<String>>(mut self, contexts: impl IntoIterator<Item = S>) -> Self {
        self.contexts = contexts.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to these aggregate types.
    pub fn aggregate_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.aggregate_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts to these event types.
    pub fn event_types<S: Into<String>>(mut self, types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Refuses names no event can have (a NUL character).
    pub(crate) fn validate(&self) -> Result<()> {
        let names = self.contexts.iter().chain(&self.aggregate_types).chain(&self.event_types);
        match names.into_iter().find(|name| name.contains('\0')) {
            Some(name) => Err(InvalidInput::ScopeName {
                name: name.clone(),
                problem: crate::FieldProblem::NulCharacter,
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Whether the scope lets every event through.
    pub fn is_all(&self) -> bool {
        self.contexts.is_empty() && self.aggregate_types.is_empty() && self.event_types.is_empty()
    }
}

/// A validated SQL table name: ASCII letters, digits and `_`, not starting with a digit, at most
/// [`Identifier::MAX_LEN`] bytes (so that names derived from it fit PostgreSQL's 63).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier(Cow<'static, str>);

impl Identifier {
    /// The longest accepted name.
    pub const MAX_LEN: usize = crate::limits::MAX_TABLE_NAME_LEN;

    /// Validates `name`.
    ///
    /// ```
    /// use pupsource::store::Identifier;
    ///
    /// assert!(Identifier::new("billing_events").is_ok());
    /// assert!(Identifier::new("events; DROP TABLE x").is_err());
    /// ```
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] saying what is wrong.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Result<Self> {
        let name = name.into();
        let problem: Option<Cow<'static, str>> = if name.is_empty() {
            Some("it is empty".into())
        } else if name.len() > Self::MAX_LEN {
            Some(format!("it is longer than {} bytes", Self::MAX_LEN).into())
        } else if name.starts_with(|c: char| c.is_ascii_digit()) {
            Some("it starts with a digit".into())
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                .map(|c| format!("{c:?} is not allowed; use ASCII letters, digits and `_`").into())
        };
        match problem {
            Some(problem) => {
                Err(InvalidInput::TableName { name: name.into_owned(), problem }.into())
            }
            None => Ok(Identifier(name)),
        }
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of the tables a store uses.
///
/// ```
/// use pupsource::store::Tables;
///
/// let tables = Tables::default().with_events("billing_events")?;
/// assert_eq!(tables.events().as_str(), "billing_events");
/// assert!(Tables::default().with_events("events; DROP TABLE x").is_err());
/// # Ok::<(), pupsource::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    events: Identifier,
    aggregate_heads: Identifier,
    checkpoints: Identifier,
    dead_letters: Identifier,
    workers: Identifier,
    snapshots: Identifier,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            events: Identifier(Cow::Borrowed("events")),
            aggregate_heads: Identifier(Cow::Borrowed("aggregate_heads")),
            checkpoints: Identifier(Cow::Borrowed("checkpoints")),
            dead_letters: Identifier(Cow::Borrowed("dead_letters")),
            workers: Identifier(Cow::Borrowed("projection_workers")),
            snapshots: Identifier(Cow::Borrowed("snapshots")),
        }
    }
}

impl Tables {
    /// Sets the events table's name (default `events`).
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_events(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.events = Identifier::new(name)?;
        Ok(self)
    }

    /// Sets the aggregate heads table's name (default `aggregate_heads`).
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_aggregate_heads(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.aggregate_heads = Identifier::new(name)?;
        Ok(self)
    }

    /// Sets the projection checkpoints table's name (default `checkpoints`).
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_checkpoints(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.checkpoints = Identifier::new(name)?;
        Ok(self)
    }

    /// Sets the parked events table's name (default `dead_letters`).
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_dead_letters(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.dead_letters = Identifier::new(name)?;
        Ok(self)
    }

    /// Sets the table of live projection workers' name (default `projection_workers`), through
    /// which processes share partitions.
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_workers(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.workers = Identifier::new(name)?;
        Ok(self)
    }

    /// Sets the aggregate snapshots table's name (default `snapshots`).
    ///
    /// # Errors
    /// [`InvalidInput::TableName`] if it is not a plain identifier.
    pub fn with_snapshots(mut self, name: impl Into<Cow<'static, str>>) -> Result<Self> {
        self.snapshots = Identifier::new(name)?;
        Ok(self)
    }

    /// The events table.
    pub fn events(&self) -> &Identifier {
        &self.events
    }

    /// The aggregate heads table (one row per stream with its version).
    pub fn aggregate_heads(&self) -> &Identifier {
        &self.aggregate_heads
    }

    /// The projection checkpoints table.
    pub fn checkpoints(&self) -> &Identifier {
        &self.checkpoints
    }

    /// The parked events table.
    pub fn dead_letters(&self) -> &Identifier {
        &self.dead_letters
    }

    /// The live projection workers table.
    pub fn workers(&self) -> &Identifier {
        &self.workers
    }

    /// The aggregate snapshots table (see [`mod@crate::aggregate`]).
    pub fn snapshots(&self) -> &Identifier {
        &self.snapshots
    }

    /// The names of every table, as one key (identifiers hold no spaces).
    #[cfg(feature = "postgres")]
    pub(crate) fn key(&self) -> String {
        self.render("{events} {aggregate_heads} {checkpoints} {dead_letters} {workers} {snapshots}")
    }

    /// Replaces `{events}`, `{aggregate_heads}`, `{checkpoints}`, `{dead_letters}`,
    /// `{workers}` and `{snapshots}` in a SQL template by the validated names.
    pub(crate) fn render(&self, template: &str) -> String {
        template
            .replace("{events}", self.events.as_str())
            .replace("{aggregate_heads}", self.aggregate_heads.as_str())
            .replace("{checkpoints}", self.checkpoints.as_str())
            .replace("{dead_letters}", self.dead_letters.as_str())
            .replace("{workers}", self.workers.as_str())
            .replace("{snapshots}", self.snapshots.as_str())
    }
}

/// A statement rendered once with a store's table names.
#[derive(Debug, Clone)]
pub(crate) struct Statement(std::sync::Arc<str>);

impl Statement {
    /// Renders `template` ([`Tables::render`]).
    pub(crate) fn new(tables: &Tables, template: &str) -> Self {
        Statement(tables.render(template).into())
    }

    /// The statement's text, e.g. to append to.
    pub(crate) fn text(&self) -> &str {
        &self.0
    }

    /// The statement, to run with `sqlx::query*`.
    pub(crate) fn sql(&self) -> sqlx::AssertSqlSafe<std::sync::Arc<str>> {
        sqlx::AssertSqlSafe(std::sync::Arc::clone(&self.0))
    }
}

/// The rows `statement` returns for one projection (its only parameter), through `executor`:
/// the pool, or a transaction. The same on every backend.
pub(crate) async fn projection_rows<'c, DB>(
    statement: &Statement,
    executor: impl sqlx::Executor<'c, Database = DB>,
    projection: &str,
) -> Result<Vec<DB::Row>>
where
    DB: sqlx::Database,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB>,
{
    Ok(sqlx::query(statement.sql()).bind(projection).fetch_all(executor).await?)
}

/// The event at `global_position`, read with a backend's `read_event` statement.
pub(crate) async fn read_event_with<'c, DB>(
    statement: &Statement,
    executor: impl sqlx::Executor<'c, Database = DB>,
    global_position: i64,
) -> Result<Option<PersistedEvent>>
where
    DB: sqlx::Database,
    DB::Row: row::StoredRow,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB>,
{
    let row = sqlx::query(statement.sql()).bind(global_position).fetch_optional(executor).await?;
    row.as_ref().map(row::EventDecoder::read_one).transpose()
}

/// The events of `stream` whose versions fall in `versions`, read with a backend's
/// `read_stream` statement (`$1`..`$3` the stream, `$4` and `$5` the inclusive version bounds)
/// through `executor`: the pool, or a transaction.
pub(crate) async fn read_stream_with<'c, DB>(
    statement: &Statement,
    executor: impl sqlx::Executor<'c, Database = DB>,
    stream: &StreamId,
    versions: (Bound<u64>, Bound<u64>),
) -> Result<Stream>
where
    DB: sqlx::Database,
    DB::Row: row::StoredRow,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let Some((from, to)) = version_bounds(&versions).filter(|_| crate::event::storable(stream))
    else {
        return Ok(Stream { id: stream.clone(), events: Vec::new() });
    };
    let rows = sqlx::query(statement.sql())
        .bind(stream.context.as_str())
        .bind(stream.aggregate_type.as_str())
        .bind(stream.aggregate_id.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(executor)
        .await?;
    Ok(Stream { id: stream.clone(), events: row::EventDecoder::read_all(&rows)? })
}

/// A time as SQLite and MySQL store event times: microseconds since the Unix epoch, UTC.
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn unix_micros(at: time::OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The time of microseconds since the Unix epoch, UTC, as SQLite and MySQL store event times;
/// `None` out of `time`'s range.
pub(crate) fn from_unix_micros(micros: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()
}

/// Roughly what an event read from the log costs in memory: its JSON texts and names, and a
/// fixed part for the rest.
pub(crate) fn approximate_size(event: &LogEvent) -> usize {
    const FIXED: usize = 256;
    FIXED
        + event.payload_json().len()
        + event.metadata_json().len()
        + event.stream.context.len()
        + event.stream.aggregate_type.len()
        + event.stream.aggregate_id.len()
        + event.event_type.len()
}

/// A checkpoint row as read back after a refused checkpoint write.
#[derive(Debug)]
pub(crate) struct CheckpointRead {
    pub(crate) owner: Option<String>,
    pub(crate) epoch: u64,
    pub(crate) position: Position,
}

impl CheckpointRead {
    /// Why a checkpoint write from `from` under `lease` changed no row, given the row as it is
    /// now (`None`: deleted).
    pub(crate) fn refusal(
        stored: Option<Self>,
        projection: &str,
        partition: Partition,
        lease: &Lease,
        from: Position,
    ) -> crate::Error {
        let projection = projection.to_owned();
        match stored {
            None => crate::Error::CheckpointLost { projection, partition },
            Some(row)
                if row.owner.as_deref() != Some(&*lease.owner) || row.epoch != lease.epoch =>
            {
                crate::Error::LeaseLost {
                    projection,
                    partition,
                    worker: lease.owner.to_string(),
                    epoch: lease.epoch,
                }
            }
            Some(row) => crate::Error::CheckpointMoved {
                projection,
                partition,
                expected: from,
                stored: row.position,
            },
        }
    }
}

/// The inclusive bounds of a version range, `None` when it is empty.
pub(crate) fn version_bounds(range: &impl RangeBounds<u64>) -> Option<(i64, i64)> {
    let from = match range.start_bound() {
        Bound::Included(&v) => v,
        Bound::Excluded(&v) => v.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&v) => v,
        Bound::Excluded(&v) => v.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    (from <= to).then(|| (clamp(from), clamp(to)))
}

/// `partition_of(partition_hash, $6)` in SQL, with `$7 = 2^64 mod $6`: the stored hash is the
/// unsigned SipHash reinterpreted as signed, so negative values are shifted by 2^64.
/// The arguments come from [`partition_sql_args`].
pub(crate) const PARTITION_OF_SQL: &str = "(((partition_hash % $6) + $6) % $6 \
    + CASE WHEN partition_hash < 0 THEN $7 ELSE 0 END) % $6";

/// The bind values `($6, $7)` of [`PARTITION_OF_SQL`] for `count` partitions.
pub(crate) fn partition_sql_args(count: u32) -> (i64, i64) {
    let n = u64::from(count.max(1));
    // 2^64 mod n, computed without overflow as (2^64 - n) mod n.
    let wrap = (u64::MAX - n + 1) % n;
    (i64::from(count.max(1)), i64::try_from(wrap).unwrap_or(0))
}

/// Converts a version to the stored integer.
pub(crate) fn stored_version(version: u64) -> Result<i64> {
    i64::try_from(version).map_err(|_| InvalidInput::VersionOutOfRange { version }.into())
}

/// The stream's version after appending `count` events to version `current`.
pub(crate) fn next_version(current: u64, count: usize) -> Result<u64> {
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    match current.checked_add(count) {
        Some(v) if i64::try_from(v).is_ok() => Ok(v),
        _ => Err(InvalidInput::VersionOutOfRange { version: current.saturating_add(count) }.into()),
    }
}

/// Reinterprets the stored signed hash as the unsigned SipHash value and back.
pub(crate) fn hash_to_stored(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// See [`hash_to_stored`].
pub(crate) fn hash_from_stored(hash: i64) -> u64 {
    u64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_reject_everything_but_plain_names() {
        for bad in ["", "events; DROP TABLE x", "1events", "ev\"ents", "a.b", "é", &"x".repeat(41)]
        {
            assert!(
                matches!(
                    Identifier::new(bad.to_owned()),
                    Err(crate::Error::InvalidInput(InvalidInput::TableName { .. }))
                ),
                "{bad:?} was accepted"
            );
        }
        for good in ["events", "_x", "Billing_Events_2", &"x".repeat(40)] {
            assert_eq!(Identifier::new(good.to_owned()).expect(good).as_str(), good);
        }
    }

    #[test]
    fn version_bounds_cover_every_range_form() {
        assert_eq!(version_bounds(&(..)), Some((0, i64::MAX)));
        assert_eq!(version_bounds(&(2..5)), Some((2, 4)));
        assert_eq!(version_bounds(&(2..=5)), Some((2, 5)));
        assert_eq!(version_bounds(&(3..)), Some((3, i64::MAX)));
        assert_eq!(version_bounds(&(5..5)), None);
        assert_eq!(version_bounds(&(..0)), None);
    }

    #[test]
    fn next_version_refuses_overflow() {
        assert_eq!(next_version(3, 2).ok(), Some(5));
        assert!(next_version(i64::MAX as u64, 1).is_err());
        assert!(next_version(u64::MAX, 1).is_err());
    }

    /// `PARTITION_OF_SQL` evaluated with the same truncating `%` that SQL uses.
    #[test]
    fn partition_of_sql_matches_partition_of() {
        for hash in [0, 1, 7, u64::MAX, 1 << 63, (1 << 63) - 1, 0xdead_beef_cafe_f00d] {
            for count in 1..=17 {
                let (n, wrap) = partition_sql_args(count);
                let h = hash_to_stored(hash);
                let sql = (((h % n) + n) % n + if h < 0 { wrap } else { 0 }) % n;
                assert_eq!(
                    sql,
                    i64::from(crate::partition::partition_of(hash, count)),
                    "{hash} {count}"
                );
            }
        }
    }

    #[test]
    fn stored_hash_round_trips() {
        for h in [0, 1, u64::MAX, 1 << 63] {
            assert_eq!(hash_from_stored(hash_to_stored(h)), h);
        }
    }
}
