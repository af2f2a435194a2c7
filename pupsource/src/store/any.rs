//! [`Store`]: any backend, chosen at run time (e.g. from a URL).
//!
//! Everything the runner needs of it goes through [`Store::backend`]: the
//! [`Backend`](super::backend::Backend) trait that each database implements in its module.

use std::ops::RangeBounds;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "mysql")]
use super::MySqlStore;
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
    /// MySQL or MariaDB.
    #[cfg(feature = "mysql")]
    MySql(MySqlStore),
}

#[cfg(feature = "mysql")]
impl From<MySqlStore> for Store {
    fn from(store: MySqlStore) -> Self {
        Store::MySql(store)
    }
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

/// How [`Store::connect_with`] (and [`PostgresStore::connect_with`](crate::PostgresStore::connect_with))
/// connects.
///
/// ```
/// use std::time::Duration;
/// use pupsource::store::ConnectOptions;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let options = ConnectOptions::default().timeout(Duration::from_millis(500));
/// // Nothing listens on port 1: refused at once, or at the latest after the timeout.
/// let err = pupsource::Store::connect_with("postgres://app@127.0.0.1:1/app", options)
///     .await
///     .unwrap_err();
/// assert!(err.to_string().starts_with("cannot connect to PostgreSQL at 127.0.0.1:1: "));
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How long opening a PostgreSQL store waits for the server: resolving its name,
    /// connecting and logging in. Default 5 s. (SQLite opens a local file; it waits only for
    /// another process's lock, up to its busy timeout.)
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { timeout: Duration::from_secs(5) }
    }
}

impl ConnectOptions {
    /// Sets [`ConnectOptions::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Store {
    /// Connects to `url`: `postgres://…` / `postgresql://…` for PostgreSQL, `sqlite:…` for
    /// SQLite (a file, created if missing, or `sqlite::memory:`), `mysql://…` / `mariadb://…`
    /// for MySQL or MariaDB (with the `mysql` feature), with the default [`ConnectOptions`].
    ///
    /// # Errors
    /// As [`Store::connect_with`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects to `url` (as [`Store::connect`]) with `options`.
    ///
    /// # Errors
    /// [`InvalidInput::DatabaseUrl`] for any other scheme; [`Error::Configuration`] for a
    /// malformed URL; [`Error::Connect`] (where, and why) if the database cannot be reached
    /// or opened.
    ///
    /// [`Error::Configuration`]: crate::Error::Configuration
    /// [`Error::Connect`]: crate::Error::Connect
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        #[cfg(not(any(feature = "postgres", feature = "mysql")))]
        let _ = options;
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                Ok(Store::Postgres(PostgresStore::connect_with(url, options).await?))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url).await?)),
            #[cfg(feature = "mysql")]
            "mysql" | "mariadb" => Ok(Store::MySql(MySqlStore::connect_with(url, options).await?)),
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
            #[cfg(feature = "mysql")]
            Store::MySql(s) => Arc::new(s.clone()),
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
const SCHEMES: &str = {
    const POSTGRES: bool = cfg!(feature = "postgres");
    const SQLITE: bool = cfg!(feature = "sqlite");
    const MYSQL: bool = cfg!(feature = "mysql");
    match (POSTGRES, SQLITE, MYSQL) {
        (true, true, true) => {
            "expected a `postgres://`, `postgresql://`, `sqlite:`, `mysql://` or `mariadb://` URL"
        }
        (true, true, false) => {
            "expected a `postgres://`, `postgresql://` or `sqlite:` URL (MySQL is not built in: \
             enable the `mysql` feature)"
        }
        (true, false, true) => {
            "expected a `postgres://`, `postgresql://`, `mysql://` or \
             `mariadb://` URL (SQLite is not built in)"
        }
        (false, true, true) => {
            "expected a `sqlite:`, `mysql://` or `mariadb://` URL (PostgreSQL is not built in)"
        }
        (true, false, false) => {
            "expected a `postgres://` or `postgresql://` URL (SQLite and \
             MySQL are not built in)"
        }
        (false, true, false) => "expected a `sqlite:` URL (PostgreSQL and MySQL are not built in)",
        (false, false, true) => {
            "expected a `mysql://` or `mariadb://` URL (PostgreSQL and SQLite are not built in)"
        }
        (false, false, false) => {
            "no database is built in: enable the `postgres`, `sqlite` or `mysql` feature"
        }
    }
};

/// Where a server store connects: its host and port, or its Unix socket.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) struct Server<'a> {
    pub(crate) database: &'static str,
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) socket: Option<&'a std::path::Path>,
}

/// Opens (and closes) one connection with `connect` within `timeout`, before a store opens its
/// pool: a pool would retry a refused connection until its acquire timeout and then report
/// only that it timed out. `classify` names the database's own refusals (no such database, a
/// rejected password).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) async fn check_server<O: sqlx::ConnectOptions>(
    connect: &O,
    server: Server<'_>,
    timeout: Duration,
    classify: impl FnOnce(sqlx::Error) -> crate::ConnectFailure,
) -> Result<()>
where
    O::Connection: Sized,
{
    use crate::ConnectFailure;
    let first = async {
        if server.socket.is_none() {
            let found = tokio::net::lookup_host((server.host, server.port))
                .await
                .is_ok_and(|mut addresses| addresses.next().is_some());
            if !found {
                return Err(ConnectFailure::NameNotFound);
            }
        }
        connect.connect().await.map_err(classify)
    };
    let cause = match tokio::time::timeout(timeout, first).await {
        Ok(Ok(connection)) => {
            let _ = sqlx::Connection::close(connection).await;
            return Ok(());
        }
        Ok(Err(cause)) => cause,
        Err(_) => ConnectFailure::TimedOut(timeout),
    };
    let address = match server.socket {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", server.host, server.port),
    };
    Err(crate::Error::Connect { database: server.database, address, cause })
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
