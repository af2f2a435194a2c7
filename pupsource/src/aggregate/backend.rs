//! What loading and changing aggregates needs of each database: a connection, a stream read
//! through a given connection (a pooled one, or the caller's transaction), and the snapshot
//! row of a stream. The SQL of snapshots lives here, rendered with the store's table names.
//!
//! One row per stream and aggregate type (`{snapshots}`, primary key: the stream and
//! `state_type`, the Rust name of the aggregate): two aggregates folding the same stream never
//! read each other's state. It is written only in the transaction of an append to its stream,
//! after the append: that append holds the stream's head (PostgreSQL: the head row's lock;
//! SQLite: the write lock) until commit, so snapshot writes of one stream happen in version
//! order and a plain upsert never goes back in time.

use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Row as _};
#[cfg(feature = "mysql")]
use sqlx::{MySql, MySqlConnection};
#[cfg(feature = "postgres")]
use sqlx::{PgConnection, Postgres};
#[cfg(feature = "sqlite")]
use sqlx::{Sqlite, SqliteConnection};
#[cfg(feature = "sqlite")]
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::event::{PersistedEvent, StreamId};
use crate::store::EventStore;
#[cfg(feature = "mysql")]
use crate::store::MySqlStore;
#[cfg(feature = "postgres")]
use crate::store::PostgresStore;
#[cfg(feature = "sqlite")]
use crate::store::SqliteStore;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::store::Tables;

/// A stream's snapshot row.
#[derive(Debug)]
pub struct StoredSnapshot {
    /// The Rust name of the aggregate whose state it is.
    pub(super) state_type: &'static str,
    /// The stream version the state was folded up to.
    pub(super) aggregate_version: u64,
    /// The schema version of the state.
    pub(super) snapshot_version: u32,
    /// The state, as JSON text.
    pub(super) state: String,
}

/// A connection of the backend `B`.
pub(super) type Connection<B> = <<B as EventStore>::Database as sqlx::Database>::Connection;

/// The databases aggregates are stored in: PostgreSQL, SQLite and MySQL. Sealed: its
/// methods are the aggregate module's, not public API.
pub trait Backend: EventStore + sealed::Sealed {
    /// A connection from the store's pool.
    #[doc(hidden)]
    fn connection(&self) -> impl Future<Output = Result<PoolConnection<Self::Database>>> + Send;

    /// The events of `stream` after version `after`, in version order.
    #[doc(hidden)]
    fn read_after(
        &self,
        conn: &mut Connection<Self>,
        stream: &StreamId,
        after: u64,
    ) -> impl Future<Output = Result<Vec<PersistedEvent>>> + Send;

    /// The snapshot row of `stream` of the aggregate named `state_type`, if any.
    #[doc(hidden)]
    fn read_snapshot(
        &self,
        conn: &mut Connection<Self>,
        stream: &StreamId,
        state_type: &'static str,
    ) -> impl Future<Output = Result<Option<StoredSnapshot>>> + Send;

    /// Writes (inserts or replaces) the snapshot row of `stream`.
    #[doc(hidden)]
    fn write_snapshot(
        &self,
        conn: &mut Connection<Self>,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> impl Future<Output = Result<()>> + Send;
}

mod sealed {
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for crate::PostgresStore {}
    #[cfg(feature = "sqlite")]
    impl Sealed for crate::SqliteStore {}
    #[cfg(feature = "mysql")]
    impl Sealed for crate::MySqlStore {}
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
/// `SELECT` of a stream's snapshot row; `$1`..`$3` are the stream, `$4` the state's type.
fn select_sql(tables: &Tables, cast: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(tables.render(&format!(
        "SELECT aggregate_version, snapshot_version, state{cast} FROM \"{{snapshots}}\" \
         WHERE bounded_context = $1 AND aggregate_type = $2 AND aggregate_id = $3 \
           AND state_type = $4"
    )))
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
/// Upsert of a stream's snapshot row: `$1`..`$3` the stream, `$4` the state's type, `$5` its
/// version, `$6` the snapshot version, `$7` the state as JSON text, `$8` the time (SQLite
/// only).
fn upsert_sql(tables: &Tables, state: &str, created_at: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(tables.render(&format!(
        "INSERT INTO \"{{snapshots}}\" (bounded_context, aggregate_type, aggregate_id, \
           state_type, aggregate_version, snapshot_version, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, {state}, {created_at}) \
         ON CONFLICT (bounded_context, aggregate_type, aggregate_id, state_type) DO UPDATE SET \
           aggregate_version = excluded.aggregate_version, \
           snapshot_version = excluded.snapshot_version, state = excluded.state, \
           created_at = excluded.created_at"
    )))
}

/// A snapshot row as read: the integers as stored.
fn stored(
    state_type: &'static str,
    aggregate_version: i64,
    snapshot_version: i64,
    state: String,
) -> Result<StoredSnapshot> {
    let bad = |column: &str, value: i64| Error::Decode {
        position: 0,
        reason: format!("snapshot column `{column}` holds {value}, out of range"),
    };
    Ok(StoredSnapshot {
        state_type,
        aggregate_version: u64::try_from(aggregate_version)
            .map_err(|_| bad("aggregate_version", aggregate_version))?,
        snapshot_version: u32::try_from(snapshot_version)
            .map_err(|_| bad("snapshot_version", snapshot_version))?,
        state,
    })
}

#[cfg(feature = "postgres")]
impl Backend for PostgresStore {
    async fn connection(&self) -> Result<PoolConnection<Postgres>> {
        Ok(self.pool().acquire().await?)
    }

    async fn read_after(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        after: u64,
    ) -> Result<Vec<PersistedEvent>> {
        let from = after.saturating_add(1);
        Ok(self.read_stream_on(conn, stream, from..).await?.events)
    }

    async fn read_snapshot(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        state_type: &'static str,
    ) -> Result<Option<StoredSnapshot>> {
        let row = sqlx::query(select_sql(self.tables(), "::text"))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(state_type)
            .fetch_optional(conn)
            .await?;
        row.map(|row| {
            stored(state_type, row.try_get(0)?, row.try_get::<i32, _>(1)?.into(), row.try_get(2)?)
        })
        .transpose()
    }

    async fn write_snapshot(
        &self,
        conn: &mut PgConnection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<()> {
        sqlx::query(upsert_sql(self.tables(), "$7::json", "now()"))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(snapshot.state_type)
            .bind(crate::store::stored_version(snapshot.aggregate_version)?)
            .bind(i32::try_from(snapshot.snapshot_version).unwrap_or(i32::MAX))
            .bind(&snapshot.state)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(feature = "sqlite")]
impl Backend for SqliteStore {
    async fn connection(&self) -> Result<PoolConnection<Sqlite>> {
        Ok(self.pool().acquire().await?)
    }

    async fn read_after(
        &self,
        conn: &mut SqliteConnection,
        stream: &StreamId,
        after: u64,
    ) -> Result<Vec<PersistedEvent>> {
        let from = after.saturating_add(1);
        Ok(self.read_stream_on(conn, stream, from..).await?.events)
    }

    async fn read_snapshot(
        &self,
        conn: &mut SqliteConnection,
        stream: &StreamId,
        state_type: &'static str,
    ) -> Result<Option<StoredSnapshot>> {
        let row = sqlx::query(select_sql(self.tables(), ""))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(state_type)
            .fetch_optional(conn)
            .await?;
        row.map(|row| stored(state_type, row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            .transpose()
    }

    async fn write_snapshot(
        &self,
        conn: &mut SqliteConnection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<()> {
        sqlx::query(upsert_sql(self.tables(), "$7", "$8"))
            .bind(&stream.context)
            .bind(&stream.aggregate_type)
            .bind(&stream.aggregate_id)
            .bind(snapshot.state_type)
            .bind(crate::store::stored_version(snapshot.aggregate_version)?)
            .bind(i64::from(snapshot.snapshot_version))
            .bind(&snapshot.state)
            .bind(crate::store::unix_micros(OffsetDateTime::now_utc()))
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(feature = "mysql")]
impl Backend for MySqlStore {
    async fn connection(&self) -> Result<PoolConnection<MySql>> {
        Ok(self.pool().acquire().await?)
    }

    async fn read_after(
        &self,
        conn: &mut MySqlConnection,
        stream: &StreamId,
        after: u64,
    ) -> Result<Vec<PersistedEvent>> {
        let from = after.saturating_add(1);
        Ok(self.read_stream_on(conn, stream, from..).await?.events)
    }

    async fn read_snapshot(
        &self,
        conn: &mut MySqlConnection,
        stream: &StreamId,
        state_type: &'static str,
    ) -> Result<Option<StoredSnapshot>> {
        let sql = self.tables().render(
            "SELECT aggregate_version, snapshot_version, state FROM `{snapshots}` \
             WHERE bounded_context = ? AND aggregate_type = ? AND aggregate_id = ? \
               AND state_type = ?",
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(stream.context.as_str())
            .bind(stream.aggregate_type.as_str())
            .bind(stream.aggregate_id.as_str())
            .bind(state_type)
            .fetch_optional(conn)
            .await?;
        row.map(|row| {
            stored(state_type, row.try_get(0)?, row.try_get::<i32, _>(1)?.into(), row.try_get(2)?)
        })
        .transpose()
    }

    async fn write_snapshot(
        &self,
        conn: &mut MySqlConnection,
        stream: &StreamId,
        snapshot: &StoredSnapshot,
    ) -> Result<()> {
        let sql = self.tables().render(
            "INSERT INTO `{snapshots}` (bounded_context, aggregate_type, aggregate_id, \
               state_type, aggregate_version, snapshot_version, state, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE aggregate_version = ?, snapshot_version = ?, state = ?, \
               created_at = UTC_TIMESTAMP(6)",
        );
        let version = crate::store::stored_version(snapshot.aggregate_version)?;
        let schema = i32::try_from(snapshot.snapshot_version).unwrap_or(i32::MAX);
        sqlx::query(AssertSqlSafe(sql))
            .bind(stream.context.as_str())
            .bind(stream.aggregate_type.as_str())
            .bind(stream.aggregate_id.as_str())
            .bind(snapshot.state_type)
            .bind(version)
            .bind(schema)
            .bind(&snapshot.state)
            .bind(version)
            .bind(schema)
            .bind(&snapshot.state)
            .execute(conn)
            .await?;
        Ok(())
    }
}
