//! The PostgreSQL event store.
//!
//! # Gap-free order
//! A sequence value is taken at insert time but becomes visible at commit, so paging on
//! `global_position > checkpoint` loses events whose transaction commits after a later one.
//! Every row therefore stores its transaction id (`xid8`), reads are ordered by
//! `(transaction_id, global_position)`, and a read returns only rows of transactions below the
//! *fence*: the oldest transaction still in flight that may write to this database. A long
//! transaction of this database delays readers; it never makes them skip. A transaction of
//! another database of the same server does not hold them back.
//!
//! # The fence
//! The statement takes one snapshot `s = pg_current_snapshot()`, the snapshot its rows are
//! read through. The fence is the smallest id of `pg_snapshot_xip(s)` (the transactions in
//! flight) that is not known to belong to another database, or `pg_snapshot_xmax(s)` if there
//! is none (`FENCE`). An id is known to belong to another database when a row of
//! `pg_stat_get_activity(NULL)` has it as `backend_xid` with another `datid`, or a row of
//! `pg_prepared_xact()` has it with another `dbid` (the functions behind the
//! `pg_stat_activity` and `pg_prepared_xacts` views: the views' joins cost more to plan than
//! the whole read, and each read is planned anew).
//!
//! Why no event is skipped: a read returns the rows it sees below the fence, in order, so it
//! is enough that every row a later read can newly see has an id at or above this fence. An
//! id below the fence is either
//! - below `xmax` and not in `xip`: its transaction had ended when `s` was taken, so its rows
//!   are visible now (committed) or never (rolled back), to this read as to every later one;
//!   the reader's own session holds no id (it reads outside any transaction of its own); or
//! - in `xip` and known to belong to another database: a backend serves one database for its
//!   whole life and cannot write another's tables, and a prepared transaction can only commit
//!   or roll back what it wrote in its own database. It has no row in this table, now or later.
//!
//! Anything not identified counts as this database's: an id with no row (its backend ended
//! between the snapshot and the look-up), a `NULL`, a process without a database. That only
//! holds the fence lower, which delays and never skips. The look-up cannot mistake a
//! transaction of this database for another's: `backend_xid` is read from a process slot
//! just after the slot's status row; an id of `xip` was taken before the statement began, by a
//! process whose status row (with its database) was written when it connected, before it
//! took the id. So if the slot still shows the id, the status row beside it is that process's;
//! if the process ended, no slot shows the id. A prepared transaction's id and database are one
//! entry, read under a lock. Ids are compared as `xid`, their low 32 bits (`backend_xid` and
//! `pg_prepared_xact().transaction` are `xid`s): the server never has 2^31 ids in use, so two
//! ids in use during one statement with equal low bits are the same id. Prepared
//! transactions of this database hold the fence like any other of its transactions.
//!
//! A run until caught up stops once no committed event is left unread (`held_back`), so it
//! waits for exactly what this fence holds back. Status shows the oldest transaction with an
//! id of a backend not known to be in another database, or prepared in this one: the one
//! holding the fence, or that will once any later transaction ends (an id at or above `xmax`
//! is in no snapshot yet, and nothing committed is behind it).
//!
//! # Per-aggregate order
//! The aggregate head stores the id of the transaction of the stream's last append. An append
//! from an older transaction (one that started writing before, but appends after) is refused
//! with [`Error::Concurrency`], so events of one stream are in version order in the log.
//!
//! # One statement per append
//! The head update and the insert of every event are one statement: one event's columns bound
//! as scalars, a batch's as arrays (`UNNEST`), each shape one prepared statement.

use std::ops::RangeBounds;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgConnectOptions, PgListener, PgPoolOptions, PgTypeInfo};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::ConnectOptions;
use super::any::{Server, check_server};
use super::backend::{
    Backend, Batch, CheckpointInfo, Fence, LogRows, ParkedEvent, RestoreRepair, log_rows,
};
use super::row::EventDecoder;
use super::{
    CheckpointRead, EventStore, Scope, Statement, Tables, hash_to_stored, next_version,
    partition_sql_args, stored_version,
};
use crate::backoff::{Backoff, Outage, sleep_or_cancel};
use crate::checkpoint::CheckpointRow;
use crate::error::{ConnectFailure, ConstraintKind, Error, Result};
use crate::event::{
    AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId, validate_append,
};
use crate::partition::Partition;
use crate::partition::partition_hash;
use crate::projection::{Lease, Transaction};
use crate::store::lease::{int4, int8};
use crate::version::ExpectedVersion;

mod leases;
mod restore;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_event_store.sql"),
    include_str!("../../migrations/postgres/0002_projections.sql"),
    include_str!("../../migrations/postgres/0003_leases.sql"),
    include_str!("../../migrations/postgres/0004_fencing.sql"),
    include_str!("../../migrations/postgres/0005_snapshots.sql"),
    include_str!("../../migrations/postgres/0006_worker_process.sql"),
    include_str!("../../migrations/postgres/0007_schema_version.sql"),
];

/// The schema version [`MIGRATIONS`] bring a set of tables to, recorded in `{events}_schema`.
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// How often an upgrade of the schema is tried when it deadlocks with running processes
/// (their heartbeats and batches lock the tables it alters, in another order).
const UPGRADE_ATTEMPTS: u32 = 5;

/// How long the transaction that creates a projection's checkpoint rows, under the
/// projection's lock, may stay idle before the server ends it (a paused process must not hold
/// the lock).
const SETUP_IDLE_LIMIT: Duration = Duration::from_secs(10);

/// At most one cross-process `NOTIFY` hint per this interval per process.
const HINT_INTERVAL: Duration = Duration::from_millis(20);

/// Columns of a [`LogEvent`], read by name (`store/row.rs`). The transaction id is read as
/// it is stored (`xid8`), whose binary form is an `int8`'s: no cast to text and back per row.
const EVENT_COLUMNS: &str = "global_position, transaction_id, \
    bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, \
    event_version, payload, metadata, causation_id, correlation_id, trace_id, partition_hash, \
    created_at";

/// Why connecting with `options` failed: PostgreSQL's SQLSTATEs first, then what every
/// database reports alike.
fn connect_failure(err: sqlx::Error, options: &PgConnectOptions) -> ConnectFailure {
    let code = err.as_database_error().and_then(|db| db.code());
    match code.as_deref() {
        // invalid_catalog_name; the database defaults to the user's name.
        Some("3D000") => ConnectFailure::NoSuchDatabase(
            options.get_database().unwrap_or(options.get_username()).to_owned(),
        ),
        // invalid_password
        Some("28P01") => ConnectFailure::PasswordRejected,
        _ => ConnectFailure::from(err),
    }
}

/// The fence of reads (module docs, "The fence"): an `xid8` from one snapshot.
const FENCE: &str = "(SELECT COALESCE((SELECT min(x) FROM pg_snapshot_xip(snap) AS x \
      WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(NULL) AS a \
                        WHERE a.backend_xid = x::xid AND a.datid <> db.oid) \
        AND NOT EXISTS (SELECT FROM pg_prepared_xact() AS p \
                        WHERE p.transaction = x::xid AND p.dbid <> db.oid)), \
    pg_snapshot_xmax(snap)) \
  FROM pg_current_snapshot() AS snap, pg_database AS db WHERE db.datname = current_database())";

/// A `json` parameter, sent as its text in the binary format: written straight into the
/// statement's buffer, no string of its own, and no cast on the server.
struct Json<'a>(&'a serde_json::Value);

/// The `payload` or the `metadata` of every event of a batch as one `json[]` parameter, in
/// the binary array format, each value as in [`Json`].
struct JsonColumn<'a> {
    events: &'a [Event],
    field: fn(&Event) -> &serde_json::Value,
}

/// `json`'s and `json[]`'s type ids, fixed in PostgreSQL's catalog.
const JSON_OID: u32 = 114;
const JSON_ARRAY_OID: u32 = 199;

impl sqlx::Type<Postgres> for Json<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(JSON_OID))
    }
}

impl sqlx::Encode<'_, Postgres> for Json<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        serde_json::to_writer(&mut **buf, self.0)?;
        Ok(IsNull::No)
    }
}

impl sqlx::Type<Postgres> for JsonColumn<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(JSON_ARRAY_OID))
    }
}

impl sqlx::Encode<'_, Postgres> for JsonColumn<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        // One dimension, no NULL, the element type, the length, the lower bound 1.
        for word in [1, 0, JSON_OID, u32::try_from(self.events.len())?, 1] {
            buf.extend_from_slice(&word.to_be_bytes());
        }
        for event in self.events {
            let start = buf.len();
            buf.extend_from_slice(&[0; 4]);
            serde_json::to_writer(&mut **buf, (self.field)(event))?;
            let len = i32::try_from(buf.len() - start - 4)?;
            buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(IsNull::No)
    }
}

/// `events`, or only the first of them when `field` is the same for every one: a batch's
/// column of one value stands for every event (the batch statement reads it so).
fn shared<'a, T: PartialEq>(events: &'a [Event], field: impl Fn(&'a Event) -> T) -> &'a [Event] {
    match events.split_first() {
        Some((first, rest)) if rest.iter().all(|event| field(event) == field(first)) => {
            std::slice::from_ref(first)
        }
        _ => events,
    }
}

/// A batch's column: `field` of every event, or its one value when every event has the same
/// ([`shared`]).
fn column<'a, T: PartialEq>(events: &'a [Event], field: impl Fn(&'a Event) -> T) -> Vec<T> {
    shared(events, &field).iter().map(field).collect()
}

/// The event store on PostgreSQL. Cheap to clone: clones share the pool.
///
/// ```no_run
/// use pupsource::{EventStore, PostgresStore};
///
/// # async fn demo() -> pupsource::Result<()> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1/app").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    tables: Tables,
    sql: Sql,
    /// Bumped on every append of this process; readers wait on it.
    wake: watch::Sender<u64>,
    /// Whether a `NOTIFY` hint is scheduled already (coalescing).
    hint_pending: AtomicBool,
    /// The `LISTEN`/`NOTIFY` channel, named after the schema and the events table so that
    /// stores in other schemas of the database do not wake each other.
    channel: tokio::sync::OnceCell<String>,
}

/// The store's statements, rendered once with its table names.
struct Sql {
    /// An append by expected version (any, no stream, exact): one event, and a batch.
    append_any: [Statement; 2],
    append_new: [Statement; 2],
    append_exact: [Statement; 2],
    head: Statement,
    read_all: Statement,
    read_stream: Statement,
    read_event: Statement,
    lag_after: Statement,
    head_position: Statement,
    held_back: Statement,
    load_checkpoints: Statement,
    create_checkpoints: Statement,
    save_checkpoint: Statement,
    checkpoint_row: Statement,
    fence_layouts: Statement,
    retire_layouts: Statement,
    checkpoints: Statement,
    delete_checkpoints: Statement,
    record_error: Statement,
    park: Statement,
    unpark: Statement,
    parked: Statement,
    delete_parked: Statement,
    leases: leases::LeaseSql,
    /// Serializes whatever decides a projection's partitions (creating checkpoint rows,
    /// heartbeats): per schema, table and projection, so unrelated stores never wait.
    projection_lock: Statement,
}

impl Sql {
    fn new(tables: &Tables) -> Self {
        // $1 context, $2 type, $3 id, $4 partition hash, $5 count, $6.. arrays, $15 expected.
        let key = "bounded_context = $1 AND aggregate_type = $2 AND aggregate_id = $3";
        let insert_head = "INSERT INTO \"{aggregate_heads}\" AS h \
            (bounded_context, aggregate_type, aggregate_id, version, transaction_id) \
            VALUES ($1, $2, $3, $5, pg_current_xact_id())";
        let any = format!(
            "{insert_head} ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE \
             SET version = h.version + $5, transaction_id = EXCLUDED.transaction_id \
             WHERE h.transaction_id <= EXCLUDED.transaction_id RETURNING version"
        );
        let new = format!("{insert_head} ON CONFLICT DO NOTHING RETURNING version");
        let exact = format!(
            "UPDATE \"{{aggregate_heads}}\" AS h SET version = h.version + $5, \
             transaction_id = pg_current_xact_id() \
             WHERE {key} AND h.version = $15 AND h.transaction_id <= pg_current_xact_id() \
             RETURNING version"
        );
        // One row back, whatever the count: the stream's new version (`NULL`: the head refused
        // the append, and no event was inserted), the transaction id, and the positions in
        // insert order. A batch's rows are inserted in event order (`ORDER BY u.ord`), and a
        // statement takes its identity values in the order it inserts, so the positions
        // ascend with the versions. One event is bound as scalars: no arrays to unnest.
        let one = "SELECT $1, $2, $3, head.version, $6::uuid, $7::text, $8::int4, $9::json, \
            $10::json, $11::text, $12::text, $13::text, $4, $14::timestamptz FROM head";
        // A batch's columns other than the id and the payload are usually the same for every
        // event (one command's type, metadata and ids): such a column is bound as an array of
        // one value (`shared`), which stands for every event, and is not unnested per event.
        let one_or_each = |n: u8, column: &str, array: &str| {
            format!(
                "CASE WHEN cardinality(${n}::{array}) = 1 THEN (${n}::{array})[1] \
                 ELSE u.{column} END"
            )
        };
        let batch = format!(
            "SELECT $1, $2, $3, head.version - $5 + u.ord, u.event_id, {}, {}, u.payload, {}, \
               {}, {}, {}, $4, {} \
             FROM head, UNNEST($6::uuid[], $7::text[], $8::int4[], $9::json[], $10::json[], \
               $11::text[], $12::text[], $13::text[], $14::timestamptz[]) \
               WITH ORDINALITY AS u(event_id, event_type, event_version, payload, metadata, \
               causation_id, correlation_id, trace_id, created_at, ord) \
             ORDER BY u.ord",
            one_or_each(7, "event_type", "text[]"),
            one_or_each(8, "event_version", "int4[]"),
            one_or_each(10, "metadata", "json[]"),
            one_or_each(11, "causation_id", "text[]"),
            one_or_each(12, "correlation_id", "text[]"),
            one_or_each(13, "trace_id", "text[]"),
            one_or_each(14, "created_at", "timestamptz[]"),
        );
        let append = |head: &str| {
            [one, batch.as_str()].map(|rows| {
                Statement::new(
                    tables,
                    &format!(
                        "WITH head AS ({head}), inserted AS ( \
                           INSERT INTO \"{{events}}\" (bounded_context, aggregate_type, \
                             aggregate_id, aggregate_version, event_id, event_type, event_version, \
                             payload, metadata, causation_id, correlation_id, trace_id, \
                             partition_hash, created_at) \
                           {rows} RETURNING global_position) \
                         SELECT (SELECT version FROM head), pg_current_xact_id()::text::bigint, \
                           (SELECT array_agg(global_position) FROM inserted)"
                    ),
                )
            })
        };
        let render = |sql: &str| Statement::new(tables, sql);
        let cp_key = "projection = $1 AND partition_count = $2 AND partition = $3";
        let scope_filter = "($3::text[] IS NULL OR bounded_context = ANY($3)) \
            AND ($4::text[] IS NULL OR aggregate_type = ANY($4)) \
            AND ($5::text[] IS NULL OR event_type = ANY($5))";
        Sql {
            read_event: render(&format!(
                "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE global_position = $1"
            )),
            lag_after: render(&format!(
                "SELECT count(*), min(created_at) FROM \"{{events}}\" \
                 WHERE (transaction_id, global_position) > ($1::text::xid8, $2) AND {scope_filter} \
                 AND {} = $8",
                super::PARTITION_OF_SQL
            )),
            head_position: render("SELECT COALESCE(max(global_position), 0) FROM \"{events}\""),
            held_back: render(&format!(
                "SELECT EXISTS (SELECT 1 FROM \"{{events}}\" \
                 WHERE (transaction_id, global_position) > ($1::text::xid8, $2) AND {scope_filter} \
                 AND global_position <= $6)"
            )),
            load_checkpoints: render(
                "SELECT partition_count, partition, transaction_id, global_position \
                 FROM \"{checkpoints}\" WHERE projection = $1",
            ),
            create_checkpoints: render(
                "INSERT INTO \"{checkpoints}\" (projection, partition_count, partition, transaction_id, global_position) \
                 SELECT $1, $2, p, $3, $4 FROM UNNEST($5::int4[]) AS p ON CONFLICT DO NOTHING",
            ),
            // A compare-and-set on the lease and on the position the batch started from.
            save_checkpoint: render(&format!(
                "UPDATE \"{{checkpoints}}\" SET transaction_id = $4, global_position = $5, \
                 updated_at = now(), last_error = NULL, last_error_at = NULL WHERE {cp_key} \
                 AND owner = $6 AND epoch = $7 AND transaction_id = $8 AND global_position = $9"
            )),
            checkpoint_row: render(&format!(
                "SELECT owner, epoch, transaction_id, global_position FROM \"{{checkpoints}}\" \
                 WHERE {cp_key}"
            )),
            // Waits for any batch committing on these rows (it holds their locks), then fences
            // every later write of theirs out: a checkpoint write needs its owner on the row,
            // and a new claim takes a new epoch.
            fence_layouts: render(
                "UPDATE \"{checkpoints}\" SET owner = NULL, lease_until = NULL \
                 WHERE projection = $1 AND partition_count <> $2 AND owner IS NOT NULL",
            ),
            retire_layouts: render(
                "DELETE FROM \"{checkpoints}\" WHERE projection = $1 AND partition_count <> $2 \
                 AND NOT EXISTS (SELECT 1 FROM \"{checkpoints}\" c WHERE c.projection = $1 \
                   AND c.partition_count = $2 AND (c.transaction_id, c.global_position) < ($3, $4))",
            ),
            checkpoints: render(
                "SELECT partition_count, partition, transaction_id, global_position, updated_at, last_error, \
                 owner, epoch, lease_until \
                 FROM \"{checkpoints}\" WHERE projection = $1 ORDER BY partition_count, partition",
            ),
            delete_checkpoints: render("DELETE FROM \"{checkpoints}\" WHERE projection = $1"),
            record_error: render(&format!(
                "UPDATE \"{{checkpoints}}\" SET last_error = $4, last_error_at = now() WHERE {cp_key}"
            )),
            park: render(
                "INSERT INTO \"{dead_letters}\" (projection, transaction_id, global_position, \
                 bounded_context, aggregate_type, aggregate_id, event_type, error, attempts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
            ),
            unpark: render(
                "DELETE FROM \"{dead_letters}\" WHERE projection = $1 AND global_position = $2",
            ),
            parked: render(
                "SELECT transaction_id, global_position, bounded_context, aggregate_type, aggregate_id, \
                 event_type, error, attempts, parked_at FROM \"{dead_letters}\" WHERE projection = $1 \
                 ORDER BY transaction_id, global_position",
            ),
            delete_parked: render("DELETE FROM \"{dead_letters}\" WHERE projection = $1"),
            leases: leases::LeaseSql::new(tables),
            projection_lock: render(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.{checkpoints}.' || $1))",
            ),
            append_any: append(&any),
            append_new: append(&new),
            append_exact: append(&exact),
            head: render(&format!("SELECT version FROM \"{{aggregate_heads}}\" WHERE {key}")),
            // The page's `LIMIT` is appended, a literal (`Self::log_query`).
            read_all: render(&format!(
                // `e.transaction_id`, qualified: the table's column (the index's order),
                // whatever the output columns are.
                "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" AS e \
                     WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                       AND transaction_id < {FENCE} \
                       AND ($3::text[] IS NULL OR bounded_context = ANY($3)) \
                       AND ($4::text[] IS NULL OR aggregate_type = ANY($4)) \
                       AND ($5::text[] IS NULL OR event_type = ANY($5)) \
                     ORDER BY e.transaction_id, e.global_position LIMIT "
            )),
            read_stream: render(&format!(
                "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE {key} \
                     AND aggregate_version BETWEEN $4 AND $5 ORDER BY aggregate_version"
            )),
        }
    }
}

impl PostgresStore {
    /// A store on `pool` with the default table names.
    pub fn new(pool: PgPool) -> Self {
        Self::with_tables(pool, Tables::default())
    }

    /// A store on `pool` with the given table names.
    pub fn with_tables(pool: PgPool, tables: Tables) -> Self {
        let sql = Sql::new(&tables);
        let inner = Inner {
            pool,
            tables,
            sql,
            wake: watch::Sender::new(0),
            hint_pending: AtomicBool::new(false),
            channel: tokio::sync::OnceCell::new(),
        };
        PostgresStore { inner: Arc::new(inner) }
    }

    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of 10 connections and
    /// the default [`ConnectOptions`].
    ///
    /// # Errors
    /// As [`PostgresStore::connect_with`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of 10 connections,
    /// waiting at most [`ConnectOptions::timeout`] for the server to answer.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL; [`Error::Connect`] if the server cannot
    /// be reached or refuses the connection, naming the server and the cause
    /// ([`ConnectFailure`]).
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(url).map_err(Error::Configuration)?;
        let server = Server {
            database: "PostgreSQL",
            host: connect.get_host(),
            port: connect.get_port(),
            socket: connect.get_socket().map(std::path::PathBuf::as_path),
        };
        check_server(&connect, server, options.timeout, |err| connect_failure(err, &connect))
            .await?;
        Ok(Self::new(PgPoolOptions::new().max_connections(10).connect_lazy_with(connect)))
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Wakes this process's readers, and schedules one coalesced `NOTIFY` for other processes:
    /// never per row, never inside the append's transaction, never on its critical path.
    fn appended(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
        if self.inner.hint_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.hint_pending.store(false, Ordering::Release);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(HINT_INTERVAL).await;
            store.inner.hint_pending.store(false, Ordering::Release);
            let sent = match store.channel().await {
                // A `NOTIFY` takes a transaction id, so its commit waits for a WAL flush of its
                // own unless committed asynchronously: a hint lost in a server crash costs
                // nothing (listeners lose their connection, and poll), a flush per hint
                // competes with the appends' flushes.
                Ok(channel) => sqlx::query(
                    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')",
                )
                .bind(channel)
                .execute(&store.inner.pool)
                .await
                .map(drop),
                Err(err) => Err(err),
            };
            if let Err(err) = sent {
                tracing::debug!(target: "pupsource::store", error = %err, "append hint not sent");
            }
        });
    }

    /// The notification channel: `pupsource.<schema>.<events table>`, or a hash of it when
    /// that is longer than PostgreSQL's 63-byte limit.
    async fn channel(&self) -> std::result::Result<&str, sqlx::Error> {
        let channel = self
            .inner
            .channel
            .get_or_try_init(|| async {
                let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                    .fetch_one(&self.inner.pool)
                    .await?;
                let name = format!("pupsource.{schema}.{}", self.inner.tables.events());
                Ok::<_, sqlx::Error>(if name.len() <= 63 {
                    name
                } else {
                    format!("pupsource.{:016x}", crate::partition::partition_hash(&name))
                })
            })
            .await?;
        Ok(channel)
    }

    /// The query of a page of the log: events after `after` in `scope`, in log order, below
    /// the fence, with its `LIMIT` as a literal: a prepared statement per query size (sqlx's
    /// statement cache keeps the most recent) whose plans know the limit and keep to the
    /// index. The statement is parsed once, but PostgreSQL still plans each execution for
    /// its parameters (its plan cache keeps choosing custom plans); what the literal avoids
    /// is a generic plan with the limit as a parameter, which cannot see it, assumes a tenth
    /// of the table and, on a large log, prefers a parallel scan and sort to the index.
    /// Named, as every statement that reads the `xid8` transaction id must be: sqlx looks up
    /// a type it does not know with a query of its own, which would replace an unnamed
    /// statement.
    fn log_query(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let sql = self.inner.sql.read_all.text();
        sqlx::query(AssertSqlSafe(format!("{sql}{limit}")))
            .bind(after.transaction_id)
            .bind(after.global_position)
            .bind(list(&scope.contexts))
            .bind(list(&scope.aggregate_types))
            .bind(list(&scope.event_types))
    }

    /// Appends `events` with one statement on `conn`: in the caller's transaction, or in a
    /// transaction of its own (autocommit). The head update and every insert are one
    /// statement, so either all of it is written or nothing.
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let stream = validate_append(events)?;
        let expected_version = expected.exact().map(stored_version).transpose()?;
        next_version(expected.exact().unwrap_or(0), events.len())?;
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);

        let statements = match expected_version {
            None => &self.inner.sql.append_any,
            Some(0) => &self.inner.sql.append_new,
            Some(_) => &self.inner.sql.append_exact,
        };
        let query = |sql: &Statement| {
            sqlx::query(sql.sql())
                .bind(&stream.context)
                .bind(&stream.aggregate_type)
                .bind(&stream.aggregate_id)
                .bind(hash_to_stored(partition_hash(&stream.aggregate_id)))
                .bind(count)
        };
        let schema_version = |event: &Event| i32::try_from(event.event_version).unwrap_or(i32::MAX);
        let mut query = match events {
            [event] => query(&statements[0])
                .bind(event.event_id)
                .bind(event.event_type.as_str())
                .bind(schema_version(event))
                .bind(Json(&event.payload))
                .bind(Json(&event.metadata))
                .bind(event.causation_id.as_deref())
                .bind(event.correlation_id.as_deref())
                .bind(event.trace_id.as_deref())
                .bind(event.created_at),
            _ => query(&statements[1])
                .bind(events.iter().map(|event| event.event_id).collect::<Vec<_>>())
                .bind(column(events, |event| event.event_type.as_str()))
                .bind(column(events, schema_version))
                .bind(JsonColumn { events, field: |event| &event.payload })
                .bind(JsonColumn {
                    events: shared(events, |event| &event.metadata),
                    field: |event| &event.metadata,
                })
                .bind(column(events, |event| event.causation_id.as_deref()))
                .bind(column(events, |event| event.correlation_id.as_deref()))
                .bind(column(events, |event| event.trace_id.as_deref()))
                .bind(column(events, |event| event.created_at)),
        };
        if let Some(version) = expected_version.filter(|v| *v > 0) {
            query = query.bind(version);
        }
        let row = query.fetch_one(&mut *conn).await.map_err(|e| self.append_error(e, stream))?;
        let (to_version, transaction_id, positions): (Option<i64>, i64, Option<Vec<i64>>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let (Some(to_version), Some(mut positions)) = (to_version, positions) else {
            // The head refused the append: wrong version, or a younger transaction appended.
            let actual: Option<i64> = sqlx::query_scalar(self.inner.sql.head.sql())
                .bind(&stream.context)
                .bind(&stream.aggregate_type)
                .bind(&stream.aggregate_id)
                .fetch_optional(&mut *conn)
                .await?;
            let actual = actual.map_or(0, |v| v.unsigned_abs());
            return Err(Error::Concurrency { stream: stream.clone(), expected, actual });
        };
        self.appended();
        positions.sort_unstable();
        let to_version = to_version.unsigned_abs();
        Ok(AppendResult {
            from_version: to_version + 1 - count.unsigned_abs(),
            to_version,
            positions: positions
                .into_iter()
                .map(|global_position| Position { global_position, transaction_id })
                .collect(),
        })
    }

    /// Creates or upgrades the tables in `tx`, under the lock that serializes migrations.
    async fn apply_migrations(&self, tx: &mut sqlx::Transaction<'static, Postgres>) -> Result<()> {
        // Serializes concurrent migrations: `CREATE TABLE IF NOT EXISTS` races otherwise.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pupsource.migrate'))")
            .execute(&mut **tx)
            .await?;
        for migration in MIGRATIONS {
            sqlx::raw_sql(AssertSqlSafe(self.inner.tables.render(migration)))
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query(AssertSqlSafe(self.inner.tables.render(
            "INSERT INTO \"{events}_schema\" (tables, version) VALUES ($1, $2) \
             ON CONFLICT (tables) DO UPDATE \
               SET version = GREATEST(\"{events}_schema\".version, EXCLUDED.version)",
        )))
        .bind(self.inner.tables.key())
        .bind(SCHEMA_VERSION)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Whether the tables have had every migration of this version (or a later one's): one
    /// read, no lock.
    async fn schema_is_current(&self) -> Result<bool> {
        let sql =
            self.inner.tables.render("SELECT version FROM \"{events}_schema\" WHERE tables = $1");
        let version = sqlx::query_scalar::<_, i32>(AssertSqlSafe(sql))
            .bind(self.inner.tables.key())
            .fetch_optional(&self.inner.pool)
            .await;
        match version {
            Ok(version) => Ok(version >= Some(SCHEMA_VERSION)),
            // 42P01 undefined_table: a new database, or one migrated before versions were
            // recorded.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Applies the migrations in one transaction, tried again if it deadlocks with the
    /// processes running on the schema it upgrades.
    async fn upgrade_schema(&self) -> Result<()> {
        let mut attempt = 1;
        loop {
            let mut tx = self.inner.pool.begin().await?;
            let applied = match self.apply_migrations(&mut tx).await {
                Ok(()) => tx.commit().await.map_err(Error::from),
                Err(err) => Err(err),
            };
            match applied {
                Err(err) if err.is_transient() && attempt < UPGRADE_ATTEMPTS => {
                    tracing::debug!(target: "pupsource::store", error = %err, attempt, "schema upgrade failed; trying again");
                    attempt += 1;
                }
                applied => return applied,
            }
        }
    }

    /// Maps an append's database error: the event-id constraint is a duplicate event.
    fn append_error(&self, err: sqlx::Error, stream: &StreamId) -> Error {
        match Error::from_sqlx(err) {
            Error::Constraint { kind: ConstraintKind::Unique, constraint: Some(c), .. }
                if c == format!("{}_event_id_key", self.inner.tables.events()) =>
            {
                Error::DuplicateEvent { stream: stream.clone() }
            }
            other => other,
        }
    }

    /// [`EventStore::read_stream`] through `executor`: the pool, or a transaction (an
    /// aggregate loaded inside the caller's transaction).
    pub(crate) async fn read_stream_on<'c>(
        &self,
        executor: impl sqlx::Executor<'c, Database = Postgres>,
        stream: &StreamId,
        versions: impl RangeBounds<u64>,
    ) -> Result<Stream> {
        let versions = (versions.start_bound().cloned(), versions.end_bound().cloned());
        super::read_stream_with(&self.inner.sql.read_stream, executor, stream, versions).await
    }
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    fn name(&self) -> &'static str {
        "PostgreSQL"
    }

    fn wakeups(&self) -> watch::Receiver<u64> {
        self.inner.wake.subscribe()
    }

    /// Forwards other processes' `NOTIFY` hints to [`Self::wakeups`] until `stop`.
    async fn listen(&self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut outage = Outage::default();
        while !stop.is_cancelled() {
            let listener = async {
                let channel = self.channel().await?;
                let mut listener = PgListener::connect_with(&self.inner.pool).await?;
                listener.listen(channel).await?;
                if let Some((down_for, failures)) = outage.ended() {
                    tracing::warn!(target: "pupsource::store", failures, ?down_for, "the database is back: listening for append hints again");
                }
                loop {
                    listener.recv().await?;
                    self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                result = listener => {
                    let err: sqlx::Error = match result { Err(err) => err, Ok(never) => never };
                    let wait = backoff.next();
                    if outage.failed() {
                        let max = backoff.max();
                        tracing::warn!(target: "pupsource::store", error = %err, "listening for append hints failed; polling meanwhile, listening again in {wait:?}, then doubling up to every {max:?}");
                    } else {
                        tracing::debug!(target: "pupsource::store", error = %err, retry_in = ?wait, "listening for append hints failed again");
                    }
                    if !sleep_or_cancel(&stop, wait).await {
                        return;
                    }
                }
            }
        }
    }

    async fn check_log_order(&self) -> Result<()> {
        self.check_transaction_ids().await
    }

    async fn repair_log_order(&self) -> Result<RestoreRepair> {
        self.repair_restore().await
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

    async fn held_back(&self, after: Position, head: i64, scope: &Scope) -> Result<bool> {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Ok(sqlx::query_scalar(self.inner.sql.held_back.sql())
            .bind(after.transaction_id)
            .bind(after.global_position)
            .bind(list(&scope.contexts))
            .bind(list(&scope.aggregate_types))
            .bind(list(&scope.event_types))
            .bind(head)
            .fetch_one(&self.inner.pool)
            .await?)
    }

    /// The oldest transaction of this database in flight with an id (module docs, "The
    /// fence"): a backend's not known to be in another database, or a prepared transaction
    /// of this one. It holds the read fence, or will once any later transaction ends (until
    /// then, nothing committed is behind it).
    async fn fence(&self) -> Result<Option<Fence>> {
        let row: Option<(Option<i32>, Option<String>, Option<f64>)> = sqlx::query_as(
            "SELECT t.pid, t.gid, EXTRACT(EPOCH FROM clock_timestamp() - t.since)::float8 \
             FROM pg_database AS db, LATERAL ( \
               SELECT pid, NULL AS gid, xact_start AS since, backend_xid AS xid \
               FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND (datid = db.oid) IS NOT FALSE \
               UNION ALL \
               SELECT NULL, gid, prepared, transaction FROM pg_prepared_xacts \
               WHERE (database = db.datname) IS NOT FALSE) AS t \
             WHERE db.datname = current_database() ORDER BY age(t.xid) DESC LIMIT 1",
        )
        .fetch_optional(&self.inner.pool)
        .await?;
        Ok(row.map(|(blocking_pid, prepared, seconds)| Fence {
            blocking_pid,
            prepared,
            age: seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or_default()),
        }))
    }

    async fn lag_after(
        &self,
        after: Position,
        scope: &Scope,
        partition: Partition,
    ) -> Result<(u64, Option<OffsetDateTime>)> {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let (count, wrap) = partition_sql_args(partition.count);
        let (n, oldest): (i64, Option<OffsetDateTime>) =
            sqlx::query_as(self.inner.sql.lag_after.sql())
                .bind(after.transaction_id)
                .bind(after.global_position)
                .bind(list(&scope.contexts))
                .bind(list(&scope.aggregate_types))
                .bind(list(&scope.event_types))
                .bind(count)
                .bind(wrap)
                .bind(i64::from(partition.index))
                .fetch_one(&self.inner.pool)
                .await?;
        Ok((n.unsigned_abs(), oldest))
    }

    async fn begin_setup(&self, projection: &str) -> Result<Box<dyn Batch>> {
        let mut tx = self.begin_fenced(SETUP_IDLE_LIMIT).await?;
        sqlx::query(self.inner.sql.projection_lock.sql())
            .bind(projection)
            .execute(&mut *tx)
            .await?;
        Ok(Box::new(PgBatch { store: self.clone(), tx }))
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
            .bind(i32::try_from(partition.count).unwrap_or(i32::MAX))
            .bind(i32::try_from(partition.index).unwrap_or(i32::MAX))
            .bind(message.replace('\0', ""))
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
            Some(lease) => self.begin_fenced(lease).await?,
            None => self.inner.pool.begin().await?,
        };
        Ok(Box::new(PgBatch { store: self.clone(), tx }))
    }
}

/// The transaction of one batch on PostgreSQL.
struct PgBatch {
    store: PostgresStore,
    tx: sqlx::Transaction<'static, Postgres>,
}

#[async_trait::async_trait]
impl Batch for PgBatch {
    fn transaction(&mut self) -> Transaction<'_> {
        Transaction::Postgres(&mut self.tx)
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
            .bind(int4(partition.count))
            .bind(int4(partition.index))
            .bind(to.transaction_id)
            .bind(to.global_position)
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
            .bind(int4(partition.count))
            .bind(int4(partition.index))
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(CheckpointRead::read).transpose()
    }

    async fn fence_layouts(&mut self, projection: &str, partition_count: u32) -> Result<()> {
        sqlx::query(self.store.inner.sql.fence_layouts.sql())
            .bind(projection)
            .bind(int4(partition_count))
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
        let partitions: Vec<i32> = partitions.iter().map(|&p| int4(p)).collect();
        sqlx::query(self.store.inner.sql.create_checkpoints.sql())
            .bind(projection)
            .bind(int4(partition_count))
            .bind(start.transaction_id)
            .bind(start.global_position)
            .bind(partitions)
            .execute(&mut *self.tx)
            .await?;
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
            .bind(i32::try_from(partition_count).unwrap_or(i32::MAX))
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
            .bind(error.map(|e| e.replace('\0', "")))
            .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
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
        for sql in [&self.store.inner.sql.delete_checkpoints, &self.store.inner.sql.delete_parked] {
            sqlx::query(sql.sql()).bind(projection).execute(&mut *self.tx).await?;
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

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("tables", &self.inner.tables).finish_non_exhaustive()
    }
}

impl EventStore for PostgresStore {
    type Database = Postgres;

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        Ok(self.inner.pool.begin().await?)
    }

    async fn append<'t>(
        &self,
        tx: &mut sqlx::Transaction<'t, Postgres>,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        self.append_on(tx, expected, events).await
    }

    /// One statement in a transaction of its own (autocommit): one round trip, with the same
    /// checks and errors as [`EventStore::append`].
    async fn append_and_commit(
        &self,
        expected: ExpectedVersion,
        events: &[Event],
    ) -> Result<AppendResult> {
        let mut conn = self.inner.pool.acquire().await?;
        self.append_on(&mut conn, expected, events).await
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

    /// On an up-to-date schema this is one read: no DDL, no lock, nobody waits. Also refuses
    /// a database restored from another cluster ([`Error::RestoredDatabase`]), once its
    /// tables are migrated: see [`PostgresStore::repair_restore`].
    async fn migrate(&self) -> Result<()> {
        if !self.schema_is_current().await? {
            self.upgrade_schema().await?;
        }
        self.check_transaction_ids().await
    }
}
