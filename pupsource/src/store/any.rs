//! [`Store`]: any backend, chosen at run time (e.g. from a URL).
//!
//! Everything the runner needs of it goes through [`Store::backend`]: the
//! [`Backend`](super::backend::Backend) trait that each database implements in its module.

use std::ops::RangeBounds;
use std::str::FromStr as _;
use std::sync::Arc;

#[cfg(feature = "postgres")]
use super::PostgresStore;
use super::Scope;
#[cfg(feature = "sqlite")]
use super::SqliteStore;
use super::backend::Backend;
use crate::error::{InvalidInput, Result};
use crate::event::{PersistedEvent, Position, StreamId};

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
#[non_exhaustive]
pub enum Store {
    /// PostgreSQL.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

#[cfg(feature = "postgres")]
impl From<PostgresStore> for Store {
    fn from(store: PostgresStore) -> Self {
        Store::Postgres(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<SqliteStore> for Store {
    fn from(store: SqliteStore) -> Self {
        Store::Sqlite(store)
    }
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
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => Ok(Store::Postgres(PostgresStore::connect(url).await?)),
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url).await?)),
            _ => Err(InvalidInput::DatabaseUrl { url: redact(url), problem: SCHEMES }.into()),
        }
    }

    /// The backend, as the runner uses it. The one place that matches on the variants.
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        match self {
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Arc::new(s.clone()),
            #[cfg(feature = "sqlite")]
            Store::Sqlite(s) => Arc::new(s.clone()),
        }
    }

    /// Creates the tables if they do not exist. Idempotent.
    pub async fn migrate(&self) -> Result<()> {
        self.backend().migrate().await
    }

    /// Repairs a PostgreSQL database restored from another cluster
    /// ([`PostgresStore::repair_restore`](crate::PostgresStore::repair_restore)); SQLite
    /// stores no transaction id, so there is nothing to repair.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pupsource::Result<()> {
    /// let store = pupsource::Store::connect("sqlite::memory:").await?;
    /// store.migrate().await?;
    /// assert!(!store.repair_restore().await?.repaired);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The database's errors.
    pub async fn repair_restore(&self) -> Result<super::RestoreRepair> {
        self.backend().repair_log_order().await
    }

    /// Appends `events` in a transaction of its own; see
    /// [`EventStore::append_and_commit`](super::EventStore::append_and_commit).
    ///
    /// # Errors
    /// As [`EventStore::append`](super::EventStore::append).
    pub async fn append_and_commit(
        &self,
        expected: crate::ExpectedVersion,
        events: &[crate::Event],
    ) -> Result<crate::AppendResult> {
        self.backend().append_and_commit(expected, events).await
    }

    /// Reads one stream; see [`EventStore::read_stream`](super::EventStore::read_stream).
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        versions: impl RangeBounds<u64> + Send,
    ) -> Result<crate::Stream> {
        let versions = (versions.start_bound().cloned(), versions.end_bound().cloned());
        self.backend().read_stream(stream, versions).await
    }

    /// Reads up to `limit` events after `after` in log order; see [`EventStore::read_all`](super::EventStore::read_all).
    pub async fn read_all(
        &self,
        after: Position,
        limit: usize,
        scope: &Scope,
    ) -> Result<Vec<PersistedEvent>> {
        self.backend().read_all(after, limit, scope).await
    }

    /// Which database this is, for messages.
    pub fn backend_name(&self) -> &'static str {
        self.backend().name()
    }
}

/// What [`Store::connect`] accepts, in this build.
const SCHEMES: &str = match (cfg!(feature = "postgres"), cfg!(feature = "sqlite")) {
    (true, true) => "expected a `postgres://`, `postgresql://` or `sqlite:` URL",
    (true, false) => "expected a `postgres://` or `postgresql://` URL (SQLite is not built in)",
    (false, true) => "expected a `sqlite:` URL (PostgreSQL is not built in)",
    (false, false) => "no database is built in: enable the `postgres` or `sqlite` feature",
};

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
