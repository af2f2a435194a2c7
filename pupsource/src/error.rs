//! The one error type of pupsource.
//!
//! Every failure is a variant of [`Error`], with the context needed to act on it as fields.
//! Database failures are classified by their SQLSTATE code and constraint name, never by
//! matching on message text, so a duplicate event id, a `NOT NULL` violation or a lost
//! connection can never be mistaken for an optimistic-concurrency conflict.

use std::borrow::Cow;
use std::time::Duration;

use uuid::Uuid;

use crate::event::{Position, StreamId};
use crate::partition::Partition;
use crate::projection::HandlerError;
use crate::version::ExpectedVersion;

/// `Result` with pupsource's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in pupsource.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version, or a concurrent writer appended to it first.
    ///
    /// Nothing was written. Reload the aggregate and retry the command.
    #[error(
        "concurrency conflict on stream {stream}: expected {expected}, actual version {actual}"
    )]
    Concurrency {
        /// The stream the append was for.
        stream: StreamId,
        /// The version the caller expected.
        expected: ExpectedVersion,
        /// The version the stream had when the append was refused.
        actual: u64,
    },

    /// An event id of this append is already stored. Nothing was written.
    #[error("an event id of this append to stream {stream} is already stored")]
    DuplicateEvent {
        /// The stream the append was for.
        stream: StreamId,
    },

    /// The input was rejected before anything was sent to the database.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// A database constraint other than the ones above rejected a write.
    #[error("{kind} violated{}", constraint.as_deref().map(|c| format!(" (constraint `{c}`)")).unwrap_or_default())]
    Constraint {
        /// Which kind of constraint.
        kind: ConstraintKind,
        /// The constraint's name, where the database reports it.
        constraint: Option<String>,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },

    /// Once the store is open: the database could not be reached, the connection was lost,
    /// or (SQLite) another writer held the database locked for longer than the busy timeout.
    /// (Opening the store reports [`Error::Connect`] instead.)
    ///
    /// Retrying later may succeed.
    #[error("database unavailable: {0}")]
    Connection(#[source] sqlx::Error),

    /// The store could not be opened: the PostgreSQL server did not answer or refused the
    /// connection, or the SQLite file could not be opened. Says where, and why, in one line:
    /// `cannot connect to PostgreSQL at 127.0.0.1:5499: connection refused`.
    #[error("cannot connect to {database} at {address}: {cause}")]
    Connect {
        /// `PostgreSQL` or `SQLite`.
        database: &'static str,
        /// PostgreSQL: `host:port`, or the socket's path; SQLite: the file's path.
        address: String,
        /// Why.
        cause: ConnectFailure,
    },

    /// The database configuration (URL, options) is not usable.
    #[error("invalid database configuration: {0}")]
    Configuration(#[source] sqlx::Error),

    /// A stored row could not be decoded into an event.
    #[error("stored event at position {position} cannot be decoded: {reason}")]
    Decode {
        /// The global position of the row.
        position: i64,
        /// What was wrong with it.
        reason: String,
    },

    /// A stored event of an aggregate's stream is of a type the aggregate neither lists in
    /// `#[aggregate(events(...))]` nor ignores with `ignore("...")`: loading it would silently
    /// drop what it says.
    #[error(
        "aggregate `{aggregate}` cannot apply event `{event_type}` (version {aggregate_version} \
         of stream {stream}): list it in `#[aggregate(events(...))]` or skip it with \
         `#[aggregate(ignore(\"{event_type}\"))]`"
    )]
    UnlistedEvent {
        /// The aggregate's Rust type.
        aggregate: &'static str,
        /// The stream.
        stream: Box<StreamId>,
        /// The stored event type.
        event_type: String,
        /// The event's version in the stream.
        aggregate_version: u64,
    },

    /// An event of an aggregate's stream (stored, or just decided) does not decode into the
    /// type the aggregate lists for it.
    #[error(
        "event `{event_type}` (version {aggregate_version} of stream {stream}) cannot be applied: {source}"
    )]
    EventDecode {
        /// The stream.
        stream: Box<StreamId>,
        /// The event type.
        event_type: String,
        /// The event's version in the stream.
        aggregate_version: u64,
        /// Why it does not decode.
        #[source]
        source: crate::domain::DecodeError,
    },

    /// A handler kept failing on an event, and the policy is to stop the projection.
    #[error(
        "projection `{projection}` partition {partition} failed on event `{event_type}` at \
         position {position} after {attempts} attempt{}: {source}",
        if *attempts == 1 { "" } else { "s" }
    )]
    Handler {
        /// The projection.
        projection: String,
        /// The partition that handled the event.
        partition: Partition,
        /// The event's position.
        position: Position,
        /// The event's type.
        event_type: String,
        /// How many times the handler was tried.
        attempts: u32,
        /// The handler's last error.
        #[source]
        source: HandlerError,
    },

    /// A projection's reset hook failed during a rebuild; nothing was reset.
    #[error("the reset hook of projection `{projection}` failed: {source}")]
    Reset {
        /// The projection.
        projection: String,
        /// The hook's error.
        #[source]
        source: HandlerError,
    },

    /// A partition's checkpoint row disappeared while the partition ran (e.g. the projection
    /// was rebuilt, or another process retired this partition layout).
    #[error("the checkpoint of projection `{projection}` partition {partition} no longer exists")]
    CheckpointLost {
        /// The projection.
        projection: String,
        /// The partition.
        partition: Partition,
    },

    /// A partition's checkpoint is no longer where the batch started from: the batch was
    /// committed already (its first commit's outcome was lost with its connection, then the
    /// batch was tried again). The batch in flight was rolled back; nothing was applied twice.
    /// The runner handles this itself; it is returned only by lower-level calls.
    #[error(
        "the checkpoint of projection `{projection}` partition {partition} moved from {expected} to {stored} meanwhile"
    )]
    CheckpointMoved {
        /// The projection.
        projection: String,
        /// The partition.
        partition: Partition,
        /// Where the batch expected the checkpoint.
        expected: Position,
        /// Where it is.
        stored: Position,
    },

    /// This worker's lease on a partition was taken over by another worker (it expired while
    /// this one was paused, slow or cut off): the batch in flight was rolled back and the
    /// partition is left to its new owner. The runner handles this itself; it is returned
    /// only by lower-level calls.
    #[error(
        "projection `{projection}` partition {partition}: the lease of worker `{worker}` (epoch {epoch}) was taken over"
    )]
    LeaseLost {
        /// The projection.
        projection: String,
        /// The partition.
        partition: Partition,
        /// This worker's id.
        worker: String,
        /// The epoch of this worker's claim.
        epoch: u64,
    },

    /// The projection runs with another partition count in a live worker: every worker of a
    /// projection must use the same count, so stop the others first (their leases end with
    /// them) and start again.
    #[error(
        "projection `{projection}` runs with {running} partitions in live worker `{worker}`; stop it before running with {requested}"
    )]
    LayoutInUse {
        /// The projection.
        projection: String,
        /// The partition count asked for.
        requested: u32,
        /// The partition count of the live worker.
        running: u32,
        /// That worker's id.
        worker: String,
    },

    /// Two projections were registered under one name.
    #[error("two projections are named `{name}`; projection names must be unique")]
    DuplicateProjection {
        /// The name.
        name: String,
    },

    /// A projection name was asked for that is not registered.
    #[error("no projection is named `{name}`; known: {known}")]
    UnknownProjection {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },

    /// The runner was given no projection to run.
    #[error(
        "no projection to run: register one with `#[pupsource::projection]` or `Runner::projection`"
    )]
    NoProjections,

    /// A background task of the runner panicked.
    #[error("a task of projection `{projection}` panicked: {message}")]
    Panicked {
        /// The projection.
        projection: String,
        /// The panic message.
        message: String,
    },

    /// The PostgreSQL database holds transaction ids this cluster has not given out yet: it was
    /// restored (`pg_dump` / `pg_restore`) or moved (logical replication) from another cluster
    /// whose counter was higher. Reads would return nothing past those ids and every append to
    /// an existing stream would fail as a conflict, so `migrate` and `run` stop here.
    ///
    /// Run [`PostgresStore::repair_restore`](crate::PostgresStore::repair_restore) (the CLI's
    /// `repair-restore` command) once, before anything appends again.
    #[error(
        "stored transaction id {stored} is ahead of this PostgreSQL cluster (next id {current}): the database was restored or moved from another cluster; run the `repair-restore` command (`PostgresStore::repair_restore`) before anything appends"
    )]
    RestoredDatabase {
        /// The largest transaction id stored in the log, its checkpoints or parked events.
        stored: u64,
        /// The next transaction id this cluster will give out.
        current: u64,
    },

    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// Whether retrying the same operation later can succeed: a concurrency conflict, a lost
    /// connection, or a serialization failure / deadlock reported by the database.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Concurrency { .. } | Error::Connection(_) => true,
            Error::Connect { cause, .. } => {
                matches!(cause, ConnectFailure::Io(_) | ConnectFailure::TimedOut(_))
            }
            Error::Database(sqlx::Error::Database(db)) => conflict(db.as_ref()),
            _ => false,
        }
    }

    /// Whether the operation failed for a passing reason and can simply be tried again (the
    /// runner retries these with backoff on every path): a lost connection, a database
    /// locked by another writer, a serialization failure or a deadlock.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Connection(_) => true,
            Error::Database(sqlx::Error::Database(db)) => conflict(db.as_ref()),
            _ => false,
        }
    }

    /// Classifies a database error by SQLSTATE and error kind.
    pub(crate) fn from_sqlx(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                let kind = match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation => Some(ConstraintKind::Unique),
                    sqlx::error::ErrorKind::NotNullViolation => Some(ConstraintKind::NotNull),
                    sqlx::error::ErrorKind::ForeignKeyViolation => Some(ConstraintKind::ForeignKey),
                    sqlx::error::ErrorKind::CheckViolation => Some(ConstraintKind::Check),
                    sqlx::error::ErrorKind::ExclusionViolation => Some(ConstraintKind::Exclusion),
                    _ => None,
                };
                if let Some(kind) = kind {
                    let constraint = db.constraint().map(str::to_owned);
                    return Error::Constraint { kind, constraint, source: err };
                }
                // SQLite: SQLITE_BUSY or SQLITE_LOCKED (primary codes 5 and 6, in the low
                // byte of extended codes): another writer held the lock past the busy timeout.
                #[cfg(feature = "sqlite")]
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    let primary = db.code().and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff);
                    if matches!(primary, Some(5 | 6)) {
                        return Error::Connection(err);
                    }
                    return Error::Database(err);
                }
                // MySQL: the server closed the connection (shutting down, killed, idle past
                // `wait_timeout`: a paused worker).
                #[cfg(feature = "mysql")]
                if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    use crate::store::mysql_codes as codes;
                    return match mysql.number() {
                        codes::SERVER_SHUTDOWN
                        | codes::CONNECTION_KILLED
                        | codes::CLIENT_INTERACTION_TIMEOUT => Error::Connection(err),
                        _ => Error::Database(err),
                    };
                }
                // Class 08: connection exception; 57P01..57P03: the server is shutting down;
                // 25P03: the server closed a transaction left idle too long (a paused worker)
                // or not yet accepting connections.
                let code = db.code();
                if code.as_deref().is_some_and(|c| {
                    c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "25P03")
                }) {
                    return Error::Connection(err);
                }
                Error::Database(err)
            }
            // A protocol error leaves the connection in an unknown state: sqlx drops it, and a
            // new one may well work.
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Error::Connection(err),
            sqlx::Error::Configuration(_) => Error::Configuration(err),
            _ => Error::Database(err),
        }
    }
}

/// A serialization failure or deadlock (SQLSTATE 40001, 40P01), or a MySQL lock wait that
/// timed out: the transaction lost a race, and the same work may succeed when tried again.
fn conflict(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(
            mysql.number(),
            crate::store::mysql_codes::DEADLOCK | crate::store::mysql_codes::LOCK_WAIT_TIMEOUT
        );
    }
    matches!(db.code().as_deref(), Some("40001" | "40P01"))
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::from_sqlx(err)
    }
}

/// Why a store could not be opened ([`Error::Connect`]), classified from the driver's typed
/// errors (I/O error kinds, SQLSTATE codes), never from message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing answered within the connect timeout.
    #[error("no answer within {}", short(*.0))]
    TimedOut(Duration),
    /// The host name does not resolve to an address.
    #[error("name not found")]
    NameNotFound,
    /// The network failed: `connection refused` (nothing listens on the port), `network
    /// unreachable`, `connection reset`, …
    #[error("{0}")]
    Io(std::io::ErrorKind),
    /// The database named in the URL does not exist (PostgreSQL SQLSTATE `3D000`).
    #[error("database \"{0}\" does not exist")]
    NoSuchDatabase(String),
    /// The server rejected the user's password (PostgreSQL SQLSTATE `28P01`; MySQL errors 1045
    /// and 1698, which also stand for an unknown user).
    #[error("password authentication failed")]
    PasswordRejected,
    /// The database refused for another reason, in its own words: e.g. a role that does not
    /// exist (PostgreSQL `28000`), too many connections (`53300`), a SQLite file that cannot
    /// be opened (SQLite result code `14`).
    #[error("{message}")]
    Refused {
        /// The SQLSTATE (PostgreSQL) or result code (SQLite), where there is one.
        code: Option<String>,
        /// The database's message.
        message: String,
    },
    /// Anything else the driver reported (TLS, protocol).
    #[error("{0}")]
    Driver(sqlx::Error),
}

impl From<sqlx::Error> for ConnectFailure {
    /// Classifies what every database reports alike; each store maps its own codes first.
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(io) => ConnectFailure::Io(io.kind()),
            sqlx::Error::Database(db) => ConnectFailure::Refused {
                code: db.code().map(Cow::into_owned),
                message: db.message().to_owned(),
            },
            err => ConnectFailure::Driver(err),
        }
    }
}

/// A kind of database constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConstraintKind {
    /// `UNIQUE` or primary key.
    Unique,
    /// `NOT NULL`.
    NotNull,
    /// `FOREIGN KEY`.
    ForeignKey,
    /// `CHECK`.
    Check,
    /// `EXCLUDE` (PostgreSQL).
    Exclusion,
}

impl std::fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConstraintKind::Unique => "unique constraint",
            ConstraintKind::NotNull => "not-null constraint",
            ConstraintKind::ForeignKey => "foreign-key constraint",
            ConstraintKind::Check => "check constraint",
            ConstraintKind::Exclusion => "exclusion constraint",
        })
    }
}

/// Input rejected before it reached the database; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// `append` was called with no events.
    #[error("an append needs at least one event")]
    NoEvents,

    /// One append held events of different aggregates.
    #[error("event #{index} belongs to stream {found}, but this append is for stream {expected}")]
    MixedStreams {
        /// Index of the first event of another stream.
        index: usize,
        /// The stream of the first event.
        expected: Box<StreamId>,
        /// The stream of the event at `index`.
        found: Box<StreamId>,
    },

    /// The same event id appeared twice in one append.
    #[error("event #{index} repeats event id {event_id} of an earlier event of this append")]
    RepeatedEventId {
        /// Index of the repeated event.
        index: usize,
        /// The repeated id.
        event_id: Uuid,
    },

    /// A field of an event is empty, too long or holds a NUL character.
    #[error("event #{index}: field `{field}` {problem}")]
    Field {
        /// Index of the event in the append.
        index: usize,
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        problem: FieldProblem,
    },

    /// An expected version or a resulting version does not fit the store (at most `i64::MAX`).
    #[error("version {version} is out of range (at most {})", i64::MAX)]
    VersionOutOfRange {
        /// The offending version.
        version: u64,
    },

    /// A table name is not a plain SQL identifier.
    #[error("invalid table name `{name}`: {problem}")]
    TableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        problem: Cow<'static, str>,
    },

    /// A database URL names no supported database.
    #[error("invalid database URL `{url}`: {problem}")]
    DatabaseUrl {
        /// The URL, without its password.
        url: String,
        /// What is wrong with it.
        problem: &'static str,
    },

    /// A partition count of 0 or above [`MAX_PARTITIONS`](crate::limits::MAX_PARTITIONS).
    #[error(
        "invalid partition count {count}{}: a projection has 1 to {} partitions",
        projection.as_deref().map(|p| format!(" of projection `{p}`")).unwrap_or_default(),
        crate::limits::MAX_PARTITIONS
    )]
    PartitionCount {
        /// The rejected count.
        count: u32,
        /// The projection whose own count it is; `None` for a count given to the runner
        /// ([`Runner::partitions`](crate::Runner::partitions) or
        /// [`Runner::assign`](crate::Runner::assign)), which every projection would run with.
        projection: Option<String>,
    },

    /// A statically assigned partition outside the partition count.
    #[error("invalid partition key {key}: with {total} partitions the keys are 0 to {}", total.saturating_sub(1))]
    PartitionKey {
        /// The rejected key.
        key: u32,
        /// The partition count.
        total: u32,
    },

    /// A [`Runner::heartbeat`](crate::Runner::heartbeat) or
    /// [`Runner::poll_interval`](crate::Runner::poll_interval) outside its bounds.
    #[error(
        "{setting} of {} is out of range ({} to {})",
        short(*value),
        short(*min),
        short(*max)
    )]
    Interval {
        /// Which setting: `heartbeat` or `poll interval`.
        setting: &'static str,
        /// The rejected value.
        value: Duration,
        /// The shortest accepted.
        min: Duration,
        /// The longest accepted.
        max: Duration,
    },

    /// A worker id that is empty, longer than 200 bytes, or holds a NUL character.
    #[error("invalid worker id {id:?}: {problem}")]
    WorkerId {
        /// The rejected id.
        id: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },

    /// A read's scope names something no event can have (a NUL character).
    #[error("scope name {name:?} {problem}")]
    ScopeName {
        /// The name.
        name: String,
        /// What is wrong with it.
        problem: FieldProblem,
    },

    /// A payload string was not valid JSON.
    #[error("payload is not valid JSON: {reason}")]
    Payload {
        /// The parser's message.
        reason: String,
    },
}

/// A duration as the CLI takes it (`10ms`, `2s`, `5m`, `1h`), or in full where it has a
/// fraction of a millisecond.
fn short(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    let units = [(3_600_000, "h"), (60_000, "m"), (1000, "s")];
    match units.into_iter().find(|&(n, _)| ms > 0 && ms.is_multiple_of(n)) {
        Some((n, unit)) => format!("{}{unit}", ms / n),
        None => format!("{ms}ms"),
    }
}

/// What is wrong with a field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldProblem {
    /// It is empty.
    #[error("is empty")]
    Empty,
    /// It is longer than the store accepts.
    #[error("is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// It contains a NUL character, which PostgreSQL text cannot store.
    #[error("contains a NUL character")]
    NulCharacter,
    /// A number is out of the stored range.
    #[error("is out of range (1 to {max})")]
    OutOfRange {
        /// The maximum.
        max: u64,
    },
    /// A timestamp outside what both stores hold: 4714-11-24 BC to 9999-12-31 (UTC).
    #[error("is outside 4714-11-24 BC to 9999-12-31 (UTC)")]
    TimestampOutOfRange,
    /// JSON nested deeper than can be read back.
    #[error("is nested more than {max} levels deep")]
    TooDeep {
        /// The deepest nesting accepted.
        max: usize,
    },
}
