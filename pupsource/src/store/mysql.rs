//! The MySQL / MariaDB event store.
//!
//! # Gap-free order
//! InnoDB has no snapshot horizon a reader could stop at (PostgreSQL's `pg_snapshot_xmin`),
//! so the order is made at the writer instead: every append takes its log positions from one
//! counter row (`{events}_log`) with an `UPDATE` that locks the row until the append's
//! transaction ends. An append that commits holds the lock until its rows are visible, and
//! the next append can only take positions after that; one that rolls back gives its
//! positions back with the counter. So **position order is commit order**, as on SQLite:
//! once a reader sees position `p`, every position below `p` that will ever exist is visible
//! already, and a checkpoint is the position alone (`transaction_id` is always 0).
//!
//! The cost: appends of all streams queue for that row from their first statement until
//! they commit (`BENCHMARKS.md` shows what this costs against a plain insert). Taking it
//! first, before the stream's head, means appends never wait for each other in two places:
//! they cannot deadlock, even in application transactions that append to several streams
//! (InnoDB's locks on a new head row would otherwise deadlock three appends creating the same
//! stream at once).
//!
//! # Per-aggregate order
//! Under the counter's lock the stream's head is claimed and moved on, so two appends of one
//! stream take their positions in version order.
//!
//! # Paused workers
//! A batch under a lease sets the connection's `wait_timeout` to the lease duration (whole
//! seconds, at least one): the server closes the connection of a worker that stays idle in it
//! longer (paused, cut off), and its transaction rolls back, so it cannot hold checkpoint or
//! read-model rows past its lease. The timeout is set back just before the batch ends.
//!
//! # Servers
//! The SQL is the common subset of MySQL 8.0+ and MariaDB 10.6+ (`FOR UPDATE SKIP LOCKED`,
//! `CHECK` constraints, no `RETURNING`). Names and ids are stored as `VARBINARY` (compared
//! byte for byte), JSON as `LONGTEXT` (as written), event times as microseconds since the
//! Unix epoch, and the other times as `DATETIME(6)` in UTC from the server's clock.

use std::fmt::Write as _;
use std::ops::RangeBounds;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlArguments, MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Arguments as _, AssertSqlSafe, Executor as _, MySql, MySqlPool};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::any::{Server, check_server};
use super::backend::{Backend, Batch, CheckpointInfo, LogRows, ParkedEvent, log_rows};
use super::row::EventDecoder;
use super::{
    CheckpointRead, ConnectOptions, EventStore, Scope, Statement, Tables, hash_to_stored,
    next_version, partition_sql_args, stored_version,
};
use crate::checkpoint::CheckpointRow;
use crate::error::{ConnectFailure, ConstraintKind, Error, Result};
use crate::event::{
    AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId, validate_append,
};
use crate::partition::{Partition, partition_hash};
use crate::projection::{Lease, Transaction};
use crate::store::lease::int8;
use crate::store::unix_micros;
use crate::version::ExpectedVersion;

mod leases;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/mysql/0001_event_store.sql"),
    include_str!("../../migrations/mysql/0002_projections.sql"),
    include_str!("../../migrations/mysql/0003_leases.sql"),
    include_str!("../../migrations/mysql/0004_snapshots.sql"),
];

/// Columns of a [`LogEvent`], read by name (`store/row.rs`); MySQL has no transaction ids:
/// position order is commit order.
const EVENT_COLUMNS: &str = "global_position, \
    bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, \
    event_version, payload, metadata, causation_id, correlation_id, trace_id, partition_hash, \
    created_at";

/// The `VALUES` tuple of one inserted event row, in the column order of `insert_events`.
const EVENT_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Bind parameters per inserted event row.
const PARAMS_PER_EVENT: usize = 15;

/// At most this many rows per `INSERT` (the protocol allows 65,535 parameters).
const MAX_ROWS: usize = 4_000;

/// At most this much JSON text per `INSERT`, well below the servers' default
/// `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL 8).
const MAX_INSERT_BYTES: usize = 4 << 20;

/// How long the transaction that creates a projection's checkpoint rows, under the
/// projection's lock, may stay idle before the server closes its connection.
const SETUP_IDLE_LIMIT: Duration = Duration::from_secs(10);

/// MySQL's error numbers that pupsource tells apart.
pub(crate) mod codes {
    /// `ER_BAD_DB_ERROR`: unknown database.
    pub(crate) const BAD_DB: u16 = 1049;
    /// `ER_ACCESS_DENIED_ERROR`: a wrong user name or password.
    pub(crate) const ACCESS_DENIED: u16 = 1045;
    /// `ER_ACCESS_DENIED_NO_PASSWORD_ERROR`: the same, as the server reports it for some
    /// authentication plugins (MariaDB answers an unknown user with either).
    pub(crate) const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    /// `ER_DATA_OUT_OF_RANGE`: a `BIGINT` would overflow.
    pub(crate) const OUT_OF_RANGE: u16 = 1690;
    /// `ER_LOCK_WAIT_TIMEOUT`.
    pub(crate) const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// `ER_LOCK_DEADLOCK`.
    pub(crate) const DEADLOCK: u16 = 1213;
    /// `ER_SERVER_SHUTDOWN`.
    pub(crate) const SERVER_SHUTDOWN: u16 = 1053;
    /// MariaDB's `ER_CONNECTION_KILLED`.
    pub(crate) const CONNECTION_KILLED: u16 = 1927;
    /// MySQL's `ER_CLIENT_INTERACTION_TIMEOUT`: closed after `wait_timeout`.
    pub(crate) const CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
}

/// The MySQL error number of `err`, if the server sent one.
pub(crate) fn error_number(err: &sqlx::Error) -> Option<u16> {
    let db = err.as_database_error()?;
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|e| e.number())
}

/// Why connecting with `options` failed: MySQL's error numbers first, then what every
/// database reports alike.
fn connect_failure(err: sqlx::Error, options: &MySqlConnectOptions) -> ConnectFailure {
    match error_number(&err) {
        Some(codes::BAD_DB) => {
            ConnectFailure::NoSuchDatabase(options.get_database().unwrap_or_default().to_owned())
        }
        Some(codes::ACCESS_DENIED | codes::ACCESS_DENIED_NO_PASSWORD) => {
            ConnectFailure::PasswordRejected
        }
        _ => ConnectFailure::from(err),
    }
}

/// The store's statements, rendered once with its table names. `?` placeholders bind in
/// the order they appear.
struct Sql {
    /// The start of a page of the log; the scope's filters and the limit follow.
    read_log: Statement,
    /// The start of a multi-row insert; one `VALUES` tuple per event follows.
    insert_events: Statement,
    /// The start of a look-up of event ids; the `IN` list follows.
    events_exist: Statement,
    head: Statement,
    /// A new stream's head (`NoStream`): a duplicate key means it exists.
    create_head: Statement,
    /// Moves an existing head on by `?` from the expected version (`Exact`).
    move_head: Statement,
    /// Creates or moves a head (`Any`); the new version comes back as the insert id.
    upsert_head: Statement,
    /// Takes `?` positions from the log's counter, locking it until commit; the last one
    /// comes back as the insert id.
    take_positions: Statement,
    read_stream: Statement,
    read_event: Statement,
    head_position: Statement,
    /// The start of a lag count; the scope's filters and the partition test follow.
    lag_after: Statement,
    projection_lock: Statement,
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
    leases: leases::LeaseSql,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        let render = |sql: &str| Statement::new(tables, sql);
        let key = "bounded_context = ? AND aggregate_type = ? AND aggregate_id = ?";
        let cp_key = "projection = ? AND partition_count = ? AND `partition` = ?";
        Sql {
            read_log: render(&format!(
                "SELECT {EVENT_COLUMNS} FROM `{{events}}` FORCE INDEX (PRIMARY) \
                 WHERE global_position > ?"
            )),
            insert_events: render(
                "INSERT INTO `{events}` (global_position, bounded_context, aggregate_type, \
                 aggregate_id, aggregate_version, event_id, event_type, event_version, payload, \
                 metadata, causation_id, correlation_id, trace_id, partition_hash, created_at) \
                 VALUES ",
            ),
            events_exist: render("SELECT EXISTS (SELECT 1 FROM `{events}` WHERE event_id IN ("),
            head: render(&format!("SELECT version FROM `{{aggregate_heads}}` WHERE {key}")),
            create_head: render(
                "INSERT INTO `{aggregate_heads}` \
                 (bounded_context, aggregate_type, aggregate_id, version) VALUES (?, ?, ?, ?)",
            ),
            move_head: render(&format!(
                "UPDATE `{{aggregate_heads}}` SET version = version + ? \
                 WHERE {key} AND version = ?"
            )),
            upsert_head: render(
                "INSERT INTO `{aggregate_heads}` \
                 (bounded_context, aggregate_type, aggregate_id, version) VALUES (?, ?, ?, ?) \
                 ON DUPLICATE KEY UPDATE version = LAST_INSERT_ID(version + ?)",
            ),
            take_positions: render(
                "UPDATE `{events}_log` SET position = LAST_INSERT_ID(position + ?) WHERE id = 1",
            ),
            read_stream: render(&format!(
                "SELECT {EVENT_COLUMNS} FROM `{{events}}` WHERE {key} \
                 AND aggregate_version BETWEEN ? AND ? ORDER BY aggregate_version"
            )),
            read_event: render(&format!(
                "SELECT {EVENT_COLUMNS} FROM `{{events}}` WHERE global_position = ?"
            )),
            head_position: render("SELECT COALESCE(MAX(global_position), 0) FROM `{events}`"),
            lag_after: render(
                "SELECT COUNT(*), MIN(created_at) FROM `{events}` WHERE global_position > ?",
            ),
            projection_lock: render(
                "INSERT INTO `{checkpoints}_lock` (projection) VALUES (?) \
                 ON DUPLICATE KEY UPDATE projection = projection",
            ),
            delete_checkpoints: render("DELETE FROM `{checkpoints}` WHERE projection = ?"),
            delete_parked: render("DELETE FROM `{dead_letters}` WHERE projection = ?"),
            fence_layouts: render(
                "UPDATE `{checkpoints}` SET owner = NULL, lease_until = NULL \
                 WHERE projection = ? AND partition_count <> ? AND owner IS NOT NULL",
            ),
            load_checkpoints: render(
                "SELECT partition_count, `partition`, transaction_id, global_position \
                 FROM `{checkpoints}` WHERE projection = ?",
            ),
            create_checkpoint: render(
                "INSERT INTO `{checkpoints}` (projection, partition_count, `partition`, \
                 transaction_id, global_position, updated_at) \
                 VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) \
                 ON DUPLICATE KEY UPDATE projection = projection",
            ),
            // A compare-and-set on the lease and on the position the batch started from.
            save_checkpoint: render(&format!(
                "UPDATE `{{checkpoints}}` SET transaction_id = ?, global_position = ?, \
                 updated_at = UTC_TIMESTAMP(6), last_error = NULL, last_error_at = NULL \
                 WHERE {cp_key} AND owner = ? AND epoch = ? AND transaction_id = ? \
                   AND global_position = ?"
            )),
            checkpoint_row: render(&format!(
                "SELECT owner, epoch, transaction_id, global_position FROM `{{checkpoints}}` \
                 WHERE {cp_key}"
            )),
            // A derived table: MySQL refuses a subquery on the table a DELETE deletes from.
            retire_layouts: render(
                "DELETE FROM `{checkpoints}` WHERE projection = ? AND partition_count <> ? \
                 AND NOT EXISTS (SELECT 1 FROM (SELECT transaction_id, global_position \
                   FROM `{checkpoints}` WHERE projection = ? AND partition_count = ?) AS c \
                   WHERE (c.transaction_id, c.global_position) < (?, ?))",
            ),
            checkpoints: render(
                "SELECT partition_count, `partition`, transaction_id, global_position, \
                 updated_at, last_error, owner, epoch, lease_until \
                 FROM `{checkpoints}` WHERE projection = ? ORDER BY partition_count, `partition`",
            ),
            record_error: render(&format!(
                "UPDATE `{{checkpoints}}` SET last_error = ?, last_error_at = UTC_TIMESTAMP(6) \
                 WHERE {cp_key}"
            )),
            park: render(
                "INSERT INTO `{dead_letters}` (projection, transaction_id, global_position, \
                 bounded_context, aggregate_type, aggregate_id, event_type, error, attempts, \
                 parked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) \
                 ON DUPLICATE KEY UPDATE projection = projection",
            ),
            unpark: render(
                "DELETE FROM `{dead_letters}` WHERE projection = ? AND global_position = ?",
            ),
            parked: render(
                "SELECT transaction_id, global_position, bounded_context, aggregate_type, \
                 aggregate_id, event_type, error, attempts, parked_at FROM `{dead_letters}` \
                 WHERE projection = ? ORDER BY transaction_id, global_position",
            ),
            leases: leases::LeaseSql::new(tables),
        }
    }
}

/// The event store on MySQL 8 or MariaDB 10.6+. Cheap to clone: clones share the pool.
///
/// ```no_run
/// use pupsource::{Event, EventStore, ExpectedVersion, MySqlStore, StreamId};
///
/// # async fn demo() -> pupsource::Result<()> {
/// let store = MySqlStore::connect("mysql://root@127.0.0.1:3306/app").await?;
/// store.migrate().await?;
/// let user = StreamId::new("Identity", "User", "42");
/// let event = Event::new(&user, "UserCreated", serde_json::json!({ "email": "ada@example.com" }));
/// store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: MySqlPool,
    tables: Tables,
    sql: Sql,
    /// Bumped on every append of this process; readers wait on it.
    wake: watch::Sender<u64>,
}

impl MySqlStore {
    /// A store on `pool` with the default table names.
    ///
    /// [`MySqlStore::connect`] opens its pool's sessions at `READ COMMITTED` (fewer gap
    /// locks, so fewer deadlocks between read-model writes of different partitions); a pool
    /// of your own keeps its isolation level (InnoDB's default is `REPEATABLE READ`). The
    /// store's guarantees hold at either.
    pub fn new(pool: MySqlPool) -> Self {
        Self::with_tables(pool, Tables::default())
    }

    /// A store on `pool` with the given table names.
    pub fn with_tables(pool: MySqlPool, tables: Tables) -> Self {
        let inner = Inner { sql: Sql::new(&tables), pool, tables, wake: watch::Sender::new(0) };
        MySqlStore { inner: Arc::new(inner) }
    }

    /// Connects to `url` (`mysql://user:password@host:3306/database`; `mariadb://` is
    /// accepted too) with the default [`ConnectOptions`].
    ///
    /// # Errors
    /// As [`MySqlStore::connect_with`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects to `url` with `options`: checks that the server answers within
    /// [`ConnectOptions::timeout`] first, then opens a pool.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL; [`Error::Connect`] if the server cannot
    /// be reached or refuses the connection, naming the server and the cause.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let url = url
            .strip_prefix("mariadb:")
            .map_or_else(|| url.to_owned(), |rest| format!("mysql:{rest}"));
        let connect = MySqlConnectOptions::from_str(&url).map_err(Error::Configuration)?;
        let server = Server {
            database: "MySQL",
            host: connect.get_host(),
            port: connect.get_port(),
            socket: connect.get_socket().map(std::path::PathBuf::as_path),
        };
        check_server(&connect, server, options.timeout, |err| connect_failure(err, &connect))
            .await?;
        let pool = MySqlPoolOptions::new()
            .max_connections(10)
            // Fewer gap locks, so fewer deadlocks between partitions' read-model writes.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect);
        Ok(Self::new(pool))
    }

    /// The connection pool.
    pub fn pool(&self) -> &MySqlPool {
        &self.inner.pool
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    fn appended(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Begins a transaction whose connection the server closes once it stays idle longer
    /// than `idle_limit` (module docs, "Paused workers"). The setting travels with the
    /// `BEGIN`: no extra round trip.
    async fn begin_bounded(
        &self,
        idle_limit: Duration,
    ) -> Result<sqlx::Transaction<'static, MySql>> {
        let seconds = idle_limit.as_secs().clamp(1, 31_536_000);
        let begin = format!("SET SESSION wait_timeout = {seconds}; BEGIN");
        Ok(self.inner.pool.begin_with(AssertSqlSafe(begin)).await?)
    }

    /// The query of a page of the log: events after `after` in `scope`, in position order.
    fn log_query<'q>(
        &self,
        after: Position,
        limit: usize,
        scope: &'q Scope,
    ) -> sqlx::query::Query<'q, MySql, MySqlArguments> {
        let mut sql = self.inner.sql.read_log.text().to_owned();
        let binds = push_scope(&mut sql, scope);
        sql.push_str(" ORDER BY global_position LIMIT ?");
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(after.global_position);
        for value in binds {
            query = query.bind(value);
        }
        query.bind(i64::try_from(limit).unwrap_or(i64::MAX))
    }

    /// Claims the stream's head for `count` more events at `expected`; returns the version
    /// before the append, or `None` when the stream is not at `expected`.
    async fn claim_head(
        &self,
        tx: &mut sqlx::Transaction<'_, MySql>,
        stream: &StreamId,
        expected: ExpectedVersion,
        count: i64,
    ) -> Result<Option<u64>> {
        let sql = &self.inner.sql;
        let bind_key = |statement: &Statement| {
            sqlx::query(statement.sql())
                .bind(stream.context.as_str())
                .bind(stream.aggregate_type.as_str())
                .bind(stream.aggregate_id.as_str())
        };
        match expected.exact() {
            Some(0) => match bind_key(&sql.create_head).bind(count).execute(&mut **tx).await {
                Ok(_) => Ok(Some(0)),
                Err(err)
                    if err
                        .as_database_error()
                        .is_some_and(|db| db.kind() == sqlx::error::ErrorKind::UniqueViolation) =>
                {
                    Ok(None)
                }
                Err(err) => Err(err.into()),
            },
            Some(version) => {
                let done = sqlx::query(sql.move_head.sql())
                    .bind(count)
                    .bind(stream.context.as_str())
                    .bind(stream.aggregate_type.as_str())
                    .bind(stream.aggregate_id.as_str())
                    .bind(stored_version(version)?)
                    .execute(&mut **tx)
                    .await?;
                Ok((done.rows_affected() == 1).then_some(version))
            }
            None => {
                let done =
                    bind_key(&sql.upsert_head).bind(count).bind(count).execute(&mut **tx).await;
                match done {
                    // 1: inserted; 2: an existing head moved on (its new version is the id).
                    Ok(done) if done.rows_affected() == 1 => Ok(Some(0)),
                    Ok(done) => Ok(Some(done.last_insert_id() - count.unsigned_abs())),
                    Err(err) if error_number(&err) == Some(codes::OUT_OF_RANGE) => Ok(None),
                    Err(err) => Err(err.into()),
                }
            }
        }
    }

    /// Why the head claim refused an append of `count` events: the stream is not at the
    /// expected version, or its version would leave the stored range.
    async fn refused_claim(
        &self,
        tx: &mut sqlx::Transaction<'_, MySql>,
        stream: &StreamId,
        expected: ExpectedVersion,
        count: usize,
    ) -> Error {
        let current: Option<i64> = match sqlx::query_scalar(self.inner.sql.head.sql())
            .bind(stream.context.as_str())
            .bind(stream.aggregate_type.as_str())
            .bind(stream.aggregate_id.as_str())
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

    /// Inserts one chunk of events in one statement, the first at version `first_version`
    /// and position `first_position`; `json` holds each event's payload and metadata text.
    async fn insert_chunk(
        &self,
        tx: &mut sqlx::Transaction<'_, MySql>,
        (events, json): (&[Event], &[(String, String)]),
        (first_version, first_position): (u64, i64),
        columns: &StreamColumns<'_>,
    ) -> Result<()> {
        let text = self.inner.sql.insert_events.text();
        let mut sql = String::with_capacity(text.len() + events.len() * (EVENT_ROW.len() + 2));
        sql.push_str(text);
        for i in 0..events.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(EVENT_ROW);
        }
        let mut args = MySqlArguments::default();
        args.reserve(events.len() * PARAMS_PER_EVENT, 0);
        macro_rules! bind {
            ($($value:expr),* $(,)?) => { $( args.add($value).map_err(sqlx::Error::Encode)?; )* };
        }
        let rows = (0u64..).zip(first_position..).zip(events.iter().zip(json));
        for ((offset, position), (event, (payload, metadata))) in rows {
            bind!(
                position,
                columns.context,
                columns.aggregate_type,
                columns.aggregate_id,
                stored_version(first_version + offset)?,
                event.event_id,
                event.event_type.as_str(),
                i64::from(event.event_version),
                payload.as_str(),
                metadata.as_str(),
                event.causation_id.as_deref(),
                event.correlation_id.as_deref(),
                event.trace_id.as_deref(),
                columns.hash,
                unix_micros(event.created_at),
            );
        }
        sqlx::query_with(AssertSqlSafe(sql), args).execute(&mut **tx).await?;
        Ok(())
    }

    /// Whether any of these event ids is already stored.
    async fn any_event_stored(
        &self,
        tx: &mut sqlx::Transaction<'_, MySql>,
        events: &[Event],
    ) -> Result<bool> {
        for chunk in events.chunks(MAX_ROWS) {
            let mut sql = self.inner.sql.events_exist.text().to_owned();
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
            }
            sql.push_str("))");
            let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql));
            for event in chunk {
                query = query.bind(event.event_id);
            }
            if query.fetch_one(&mut **tx).await? != 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// [`EventStore::read_stream`] through `executor`: the pool, or a transaction (an
    /// aggregate loaded inside the caller's transaction).
    pub(crate) async fn read_stream_on<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = MySql>,
        stream: &StreamId,
        versions: impl RangeBounds<u64>,
    ) -> Result<Stream> {
        let versions = (versions.start_bound().cloned(), versions.end_bound().cloned());
        super::read_stream_with(&self.inner.sql.read_stream, executor, stream, versions).await
    }
}

/// Appends ` AND column IN (?, …)` for each list of `scope` that is not empty; returns the
/// values to bind, in order.
fn push_scope<'q>(sql: &mut String, scope: &'q Scope) -> Vec<&'q str> {
    let mut binds = Vec::new();
    for (column, values) in [
        ("bounded_context", &scope.contexts),
        ("aggregate_type", &scope.aggregate_types),
        ("event_type", &scope.event_types),
    ] {
        if values.is_empty() {
            continue;
        }
        let _ = write!(sql, " AND {column} IN (");
        for (i, value) in values.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            binds.push(value.as_str());
        }
        sql.push(')');
    }
    binds
}

/// `partition_of(partition_hash)` for `count` partitions: [`PARTITION_OF_SQL`] with its
/// modulus and wrap as literals (integers computed here, never input), since `?` placeholders
/// cannot be repeated.
///
/// [`PARTITION_OF_SQL`]: super::PARTITION_OF_SQL
fn partition_of_sql(count: u32) -> String {
    let (n, wrap) = partition_sql_args(count);
    super::PARTITION_OF_SQL.replace("$6", &n.to_string()).replace("$7", &wrap.to_string())
}

#[async_trait::async_trait]
impl Backend for MySqlStore {
    fn name(&self) -> &'static str {
        "MySQL"
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
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
        let mut sql = self.inner.sql.lag_after.text().to_owned();
        let binds = push_scope(&mut sql, scope);
        let _ = write!(sql, " AND {} = ?", partition_of_sql(partition.count));
        let mut query = sqlx::query_as(AssertSqlSafe(sql)).bind(after.global_position);
        for value in binds {
            query = query.bind(value);
        }
        let (n, oldest): (i64, Option<i64>) =
            query.bind(i64::from(partition.index)).fetch_one(&self.inner.pool).await?;
        Ok((n.unsigned_abs(), oldest.and_then(super::from_unix_micros)))
    }

    async fn begin_setup(&self, projection: &str) -> Result<Box<dyn Batch>> {
        let mut tx = self.begin_bounded(SETUP_IDLE_LIMIT).await?;
        sqlx::query(self.inner.sql.projection_lock.sql())
            .bind(projection)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(MySqlBatch { store: self.clone(), tx, bounded: true }))
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
            .bind(message)
            .bind(projection)
            .bind(i64::from(partition.count))
            .bind(i64::from(partition.index))
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    async fn parked(&self, projection: &str) -> Result<Vec<ParkedEvent>> {
        let rows =
            super::projection_rows(&self.inner.sql.parked, &self.inner.pool, projection).await?;
        rows.iter().map(ParkedEvent::read).collect()
    }

    async fn begin_batch(&self, lease: Option<Duration>) -> Result<Box<dyn Batch>> {
        let tx = match lease {
            Some(lease) => self.begin_bounded(lease).await?,
            None => self.inner.pool.begin().await?,
        };
        Ok(Box::new(MySqlBatch { store: self.clone(), tx, bounded: lease.is_some() }))
    }
}

/// The transaction of one batch on MySQL.
struct MySqlBatch {
    store: MySqlStore,
    tx: sqlx::Transaction<'static, MySql>,
    /// Whether `wait_timeout` was lowered for it ([`MySqlStore::begin_bounded`]): set back
    /// before the commit, so the connection does not go back to the pool with it.
    bounded: bool,
}

#[async_trait::async_trait]
impl Batch for MySqlBatch {
    fn transaction(&mut self) -> Transaction<'_> {
        Transaction::MySql(&mut self.tx)
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
            .bind(to.transaction_id)
            .bind(to.global_position)
            .bind(projection)
            .bind(i64::from(partition.count))
            .bind(i64::from(partition.index))
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
        for &partition in partitions {
            sqlx::query(self.store.inner.sql.create_checkpoint.sql())
                .bind(projection)
                .bind(i64::from(partition_count))
                .bind(i64::from(partition))
                .bind(start.transaction_id)
                .bind(start.global_position)
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
            .bind(event.stream.context.as_str())
            .bind(event.stream.aggregate_type.as_str())
            .bind(event.stream.aggregate_id.as_str())
            .bind(event.event_type.as_str())
            .bind(error)
            .bind(i64::from(attempts))
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

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.bounded {
            sqlx::query(RESET_WAIT_TIMEOUT).execute(&mut *self.tx).await?;
        }
        Ok(self.tx.commit().await?)
    }

    async fn rollback(mut self: Box<Self>) -> Result<()> {
        if self.bounded {
            sqlx::query(RESET_WAIT_TIMEOUT).execute(&mut *self.tx).await?;
        }
        Ok(self.tx.rollback().await?)
    }
}

/// Sets a session's `wait_timeout` back to the server's default.
const RESET_WAIT_TIMEOUT: &str = "SET SESSION wait_timeout = @@GLOBAL.wait_timeout";

impl std::fmt::Debug for MySqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlStore").field("tables", &self.inner.tables).finish_non_exhaustive()
    }
}

impl EventStore for MySqlStore {
    type Database = MySql;

    async fn begin(&self) -> Result<sqlx::Transaction<'static, MySql>> {
        Ok(self.inner.pool.begin().await?)
    }

    /// Takes the positions (locking the log's counter until the transaction ends: module
    /// docs), then claims the stream's head, then inserts the rows.
    async fn append<'t>(
        &self,
        tx: &mut sqlx::Transaction<'t, MySql>,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let stream = validate_append(events)?;
        if let Some(version) = expected.exact() {
            stored_version(version)?;
            next_version(version, events.len())?;
        }
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        // Everything that needs no lock comes before the log's lock is taken.
        let columns = StreamColumns::of(stream);
        let json: Vec<(String, String)> =
            events.iter().map(|e| (e.payload.to_string(), e.metadata.to_string())).collect();
        let chunks = chunk_lengths(&json);
        let taken =
            sqlx::query(self.inner.sql.take_positions.sql()).bind(count).execute(&mut **tx).await?;
        if taken.rows_affected() != 1 {
            return Err(schema_error("the log's position counter row is missing: run `migrate`"));
        }
        let last = i64::try_from(taken.last_insert_id()).unwrap_or(i64::MAX);
        let first_position = last - count + 1;
        let Some(actual) = self.claim_head(tx, stream, expected, count).await? else {
            return Err(self.refused_claim(tx, stream, expected, events.len()).await);
        };
        let to_version = next_version(actual, events.len())?;
        let mut start = 0;
        for len in chunks {
            let rows = (&events[start..start + len], &json[start..start + len]);
            let offset = u64::try_from(start).unwrap_or(u64::MAX);
            let first = (actual + 1 + offset, first_position + i64::try_from(start).unwrap_or(0));
            match self.insert_chunk(tx, rows, first, &columns).await {
                Ok(()) => {}
                Err(Error::Constraint { kind: ConstraintKind::Unique, .. })
                    if self.any_event_stored(tx, events).await? =>
                {
                    return Err(Error::DuplicateEvent { stream: stream.clone() });
                }
                Err(err) => return Err(err),
            }
            start += len;
        }
        let positions = (first_position..=last)
            .map(|global_position| Position { transaction_id: 0, global_position })
            .collect();
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

    /// Creates the tables, one process at a time (a named server lock: DDL commits at once,
    /// so a transaction cannot serialize it).
    async fn migrate(&self) -> Result<()> {
        let mut conn = self.inner.pool.acquire().await?;
        let lock = format!("pupsource_migrate.{}", self.inner.tables.events());
        let locked: Option<i64> =
            sqlx::query_scalar("SELECT GET_LOCK(?, 60)").bind(&lock).fetch_one(&mut *conn).await?;
        if locked != Some(1) {
            return Err(schema_error("another process held the migration lock for 60 s"));
        }
        let mut result = Ok(());
        for migration in MIGRATIONS {
            let sql = self.inner.tables.render(migration);
            if let Err(err) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *conn).await {
                result = Err(err.into());
                break;
            }
        }
        sqlx::query("SELECT RELEASE_LOCK(?)").bind(&lock).execute(&mut *conn).await?;
        result
    }
}

/// An error of the store's own schema, as the database reports its own.
fn schema_error(problem: &'static str) -> Error {
    Error::Database(sqlx::Error::Protocol(problem.into()))
}

/// How many rows each `INSERT` of an append takes: bounded in rows and in JSON bytes (at
/// least one row each).
fn chunk_lengths(json: &[(String, String)]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let (mut len, mut bytes) = (0, 0);
    for (payload, metadata) in json {
        let size = payload.len() + metadata.len();
        if len == MAX_ROWS || (len > 0 && bytes + size > MAX_INSERT_BYTES) {
            lengths.push(len);
            (len, bytes) = (0, 0);
        }
        len += 1;
        bytes += size;
    }
    if len > 0 {
        lengths.push(len);
    }
    lengths
}

/// The columns every event of one append shares.
struct StreamColumns<'a> {
    context: &'a str,
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    /// The stored partition hash of the aggregate id.
    hash: i64,
}

impl<'a> StreamColumns<'a> {
    fn of(stream: &'a StreamId) -> Self {
        StreamColumns {
            context: &stream.context,
            aggregate_type: &stream.aggregate_type,
            aggregate_id: &stream.aggregate_id,
            hash: hash_to_stored(partition_hash(&stream.aggregate_id)),
        }
    }
}
