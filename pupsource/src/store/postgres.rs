//! The PostgreSQL event store.
//!
//! # Gap-free order
//! A sequence value is taken at insert time but becomes visible at commit, so paging on
//! `global_position > checkpoint` loses events whose transaction commits after a later one.
//! Every row therefore stores its transaction id (`xid8`), reads are ordered by
//! `(transaction_id, global_position)`, and a read returns only rows of transactions older than
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still in flight: every
//! such transaction has finished, and every transaction that has not will get a larger id.
//! A long transaction delays readers; it never makes them skip.
//!
//! # Per-aggregate order
//! The aggregate head stores the id of the transaction of the stream's last append. An append
//! from an older transaction (one that started writing before, but appends after) is refused
//! with [`Error::Concurrency`], so events of one stream are in version order in the log.
//!
//! # One statement per append
//! The head update and the insert of every event (`UNNEST` of arrays) are one statement.

use std::ops::RangeBounds;
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    EventStore, Scope, Tables, hash_from_stored, hash_to_stored, next_version, stored_version,
    version_bounds,
};
use crate::error::{ConstraintKind, Error, Result};
use crate::event::{
    AppendResult, Event, PersistedEvent, Position, Stream, StreamId, validate_append,
};
use crate::partition::partition_hash;
use crate::version::ExpectedVersion;

const MIGRATIONS: &[&str] = &[include_str!("../../../migrations/postgres/0001_event_store.sql")];

/// Columns of a [`PersistedEvent`], in the order [`decode`] reads them.
const EVENT_COLUMNS: &str = "global_position, transaction_id::text::bigint AS transaction_id, \
    bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, \
    event_version, payload, metadata, causation_id, correlation_id, trace_id, partition_hash, \
    created_at";

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
}

/// The store's statements, rendered once with its table names.
struct Sql {
    append_any: Arc<str>,
    append_new: Arc<str>,
    append_exact: Arc<str>,
    head: Arc<str>,
    read_all: Arc<str>,
    read_stream: Arc<str>,
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
        let append = |head: &str| -> Arc<str> {
            tables
                .render(&format!(
                    "WITH head AS ({head}), inserted AS ( \
                       INSERT INTO \"{{events}}\" (bounded_context, aggregate_type, aggregate_id, \
                         aggregate_version, event_id, event_type, event_version, payload, metadata, \
                         causation_id, correlation_id, trace_id, partition_hash, created_at) \
                       SELECT $1, $2, $3, head.version - $5 + u.ord, u.event_id, u.event_type, \
                         u.event_version, u.payload::json, u.metadata::json, u.causation_id, \
                         u.correlation_id, u.trace_id, $4, u.created_at \
                       FROM head, UNNEST($6::uuid[], $7::text[], $8::int4[], $9::text[], \
                         $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[]) \
                         WITH ORDINALITY AS u(event_id, event_type, event_version, payload, metadata, \
                         causation_id, correlation_id, trace_id, created_at, ord) \
                       ORDER BY u.ord \
                       RETURNING global_position, transaction_id, aggregate_version) \
                     SELECT global_position, transaction_id::text::bigint AS transaction_id, \
                       aggregate_version FROM inserted ORDER BY aggregate_version"
                ))
                .into()
        };
        Sql {
            append_any: append(&any),
            append_new: append(&new),
            append_exact: append(&exact),
            head: tables
                .render(&format!("SELECT version FROM \"{{aggregate_heads}}\" WHERE {key}"))
                .into(),
            read_all: tables
                .render(&format!(
                    "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" \
                     WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                       AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                       AND ($4::text[] IS NULL OR bounded_context = ANY($4)) \
                       AND ($5::text[] IS NULL OR aggregate_type = ANY($5)) \
                       AND ($6::text[] IS NULL OR event_type = ANY($6)) \
                     ORDER BY transaction_id, global_position LIMIT $3"
                ))
                .into(),
            read_stream: tables
                .render(&format!(
                    "SELECT {EVENT_COLUMNS} FROM \"{{events}}\" WHERE {key} \
                     AND aggregate_version BETWEEN $4 AND $5 ORDER BY aggregate_version"
                ))
                .into(),
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
        PostgresStore { inner: Arc::new(Inner { pool, tables, sql }) }
    }

    /// Connects to `url` (`postgres://user@host:port/db`) with a pool of 10 connections.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a malformed URL, [`Error::Connection`] if the server
    /// cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(Error::Configuration)?;
        let pool = PgPoolOptions::new().max_connections(10).connect_with(options).await?;
        Ok(Self::new(pool))
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
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
        let stream = validate_append(events)?;
        let expected_version = expected.exact().map(stored_version).transpose()?;
        next_version(expected.exact().unwrap_or(0), events.len())?;
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);

        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut versions = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        let mut metadata = Vec::with_capacity(events.len());
        let mut causation = Vec::with_capacity(events.len());
        let mut correlation = Vec::with_capacity(events.len());
        let mut trace = Vec::with_capacity(events.len());
        let mut created = Vec::with_capacity(events.len());
        for event in events {
            ids.push(event.event_id);
            types.push(event.event_type.clone());
            versions.push(i32::try_from(event.event_version).unwrap_or(i32::MAX));
            payloads.push(event.payload.to_string());
            metadata.push(event.metadata.to_string());
            causation.push(event.causation_id.clone());
            correlation.push(event.correlation_id.clone());
            trace.push(event.trace_id.clone());
            created.push(event.created_at);
        }

        let sql = match expected_version {
            None => &self.inner.sql.append_any,
            Some(0) => &self.inner.sql.append_new,
            Some(_) => &self.inner.sql.append_exact,
        };
        let mut query = sqlx::query(AssertSqlSafe(Arc::clone(sql)))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(hash_to_stored(partition_hash(&stream.aggregate_id)))
            .bind(count)
            .bind(ids)
            .bind(types)
            .bind(versions)
            .bind(payloads)
            .bind(metadata)
            .bind(causation)
            .bind(correlation)
            .bind(trace)
            .bind(created);
        if let Some(version) = expected_version.filter(|v| *v > 0) {
            query = query.bind(version);
        }
        let rows = query.fetch_all(&mut **tx).await.map_err(|e| self.append_error(e, stream))?;

        if rows.is_empty() {
            // The head refused the append: wrong version, or a younger transaction appended.
            let actual: Option<i64> =
                sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.inner.sql.head)))
                    .bind(&stream.context)
                    .bind(&stream.aggregate_type)
                    .bind(&stream.aggregate_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            let actual = actual.map_or(0, |v| v.unsigned_abs());
            return Err(Error::Concurrency { stream: stream.clone(), expected, actual });
        }

        let mut positions = Vec::with_capacity(rows.len());
        let mut versions = Vec::with_capacity(rows.len());
        for row in &rows {
            positions.push(Position {
                global_position: row.try_get(0)?,
                transaction_id: row.try_get(1)?,
            });
            versions.push(row.try_get::<i64, _>(2)?.unsigned_abs());
        }
        Ok(AppendResult {
            from_version: versions.first().copied().unwrap_or(0),
            to_version: versions.last().copied().unwrap_or(0),
            positions,
        })
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        versions: impl RangeBounds<u64> + Send,
    ) -> Result<Stream> {
        let Some((from, to)) = version_bounds(&versions) else {
            return Ok(Stream { id: stream.clone(), events: Vec::new() });
        };
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.inner.sql.read_stream)))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(from)
            .bind(to)
            .fetch_all(&self.inner.pool)
            .await?;
        let events = rows.iter().map(decode).collect::<Result<_>>()?;
        Ok(Stream { id: stream.clone(), events })
    }

    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>> {
        let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let rows = sqlx::query(AssertSqlSafe(Arc::clone(&self.inner.sql.read_all)))
            .bind(after.transaction_id)
            .bind(after.global_position)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(list(&scope.contexts))
            .bind(list(&scope.aggregate_types))
            .bind(list(&scope.event_types))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.inner.pool.begin().await?;
        // Serializes concurrent migrations: `CREATE TABLE IF NOT EXISTS` races otherwise.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('pupsource.migrate'))")
            .execute(&mut *tx)
            .await?;
        for migration in MIGRATIONS {
            sqlx::raw_sql(AssertSqlSafe(self.inner.tables.render(migration)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

fn decode(row: &PgRow) -> Result<PersistedEvent> {
    let position = Position { global_position: row.try_get(0)?, transaction_id: row.try_get(1)? };
    let event_version: i32 = row.try_get(8)?;
    let aggregate_version: i64 = row.try_get(5)?;
    Ok(PersistedEvent {
        event: Event {
            stream: StreamId {
                context: row.try_get(2)?,
                aggregate_type: row.try_get(3)?,
                aggregate_id: row.try_get(4)?,
            },
            event_id: row.try_get::<Uuid, _>(6)?,
            event_type: row.try_get(7)?,
            event_version: event_version.unsigned_abs(),
            payload: row.try_get(9)?,
            metadata: row.try_get(10)?,
            causation_id: row.try_get(11)?,
            correlation_id: row.try_get(12)?,
            trace_id: row.try_get(13)?,
            created_at: row.try_get::<OffsetDateTime, _>(15)?,
        },
        position,
        aggregate_version: aggregate_version.unsigned_abs(),
        partition_hash: hash_from_stored(row.try_get(14)?),
    })
}
