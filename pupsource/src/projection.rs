//! Projections: what turns events into read models.
//!
//! A [`Projection`] has a name, a partition count and a [`Scope`], and handles one
//! [`LogEvent`] at a time through [`Projection::handle`] (its payload still JSON text, which a
//! typed projection decodes straight into its event type). One instance is shared by every
//! partition, hence `Send + Sync + 'static`. Events of one aggregate always go to the same
//! partition, in version order.
//!
//! The handler gets a [`Context`]: the partition, the event's position, and the open database
//! [`Transaction`] of the batch, in which the partition's checkpoint is written before commit.
//! A read model written through it is exactly-once: the event's effects and the checkpoint
//! commit together or not at all. Effects outside that transaction (memory, other systems) are
//! at-least-once; [`Context::idempotency_key`] names each delivery for deduplication.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::{LogEvent, Position};
use crate::partition::Partition;
use crate::store::Scope;

/// What a handler may fail with: any error, boxed.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A handler panicked. The runner catches the panic at the handler call and treats it as the
/// handler's error (retried, then the partition halts or the event is parked); this is that
/// error, with the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the handler panicked: {message}")]
pub struct HandlerPanic {
    /// The panic's message (`"a panic without a message"` when it carried none).
    pub message: String,
}

impl HandlerPanic {
    /// From a caught panic's payload.
    pub(crate) fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|m| (*m).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        HandlerPanic { message }
    }
}

/// The future a [`Projection::handle`] returns.
pub type HandleFuture<'a> = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'a>>;

/// A projection: turns events into a read model.
///
/// Its `Typed` supertrait is sealed and holds for every `'static` type, so no projection
/// implements it: it lets [`Runner::get`](crate::Runner::get) hand a projection back as its
/// own type.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use pupsource::projection::{Context, HandleFuture, Projection};
/// use pupsource::LogEvent;
///
/// #[derive(Default)]
/// struct CountEvents(AtomicU64);
///
/// impl Projection for CountEvents {
///     fn name(&self) -> &str {
///         "count_events"
///     }
///
///     fn handle<'a>(&'a self, _event: &'a LogEvent, _cx: &'a mut Context<'_>) -> HandleFuture<'a> {
///         Box::pin(async move {
///             self.0.fetch_add(1, Ordering::Relaxed);
///             Ok(())
///         })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a projection",
    note = "declare it with `#[pupsource::projection]`, or implement `pupsource::projection::Projection`"
)]
pub trait Projection: sealed::Typed + Send + Sync + 'static {
    /// The projection's unique name; checkpoints are stored under it.
    fn name(&self) -> &str;

    /// How many partitions the projection is split into (default 1). Can be overridden per run.
    fn partitions(&self) -> u32 {
        1
    }

    /// Which events the projection receives (default: every event). Pushed down into SQL.
    fn scope(&self) -> Scope {
        Scope::all()
    }

    /// Handles one event. An error (or a panic, which the runner catches and reports as a
    /// [`HandlerPanic`]) is retried with backoff, then halts the partition or parks the event,
    /// as the runner's [`ErrorPolicy`](crate::runner::ErrorPolicy) says.
    ///
    /// The event's payload is the stored JSON text: [`LogEvent::decode`] decodes it into a
    /// typed event, [`LogEvent::to_persisted`] into a [`PersistedEvent`](crate::PersistedEvent).
    fn handle<'a>(&'a self, event: &'a LogEvent, cx: &'a mut Context<'_>) -> HandleFuture<'a>;

    /// Clears the projection's read model before a rebuild, in the transaction that also
    /// deletes its checkpoints (default: nothing to clear).
    fn reset<'a>(&'a self, transaction: &'a mut Transaction<'_>) -> HandleFuture<'a> {
        let _ = transaction;
        Box::pin(async { Ok(()) })
    }
}

mod sealed {
    /// What lets [`Runner::get`](crate::Runner::get) hand a projection back as its own type:
    /// every `'static` type has it, so no projection implements it, and no user names it.
    pub trait Typed: std::any::Any {}

    impl<T: std::any::Any> Typed for T {}
}

/// `projection` as a `P`, if that is its type.
pub(crate) fn downcast<P: Projection>(projection: &Arc<dyn Projection>) -> Option<Arc<P>> {
    (Arc::clone(projection) as Arc<dyn Any + Send + Sync>).downcast::<P>().ok()
}

/// The open transaction of a batch, on whichever database the store uses.
///
/// ```
/// use pupsource::projection::{Context, Transaction};
///
/// async fn count(cx: &mut Context<'_>, key: &str) -> Result<(), sqlx::Error> {
///     // Both databases understand this statement.
///     let sql = "INSERT INTO counts (key, n) VALUES ($1, 1) \
///                ON CONFLICT (key) DO UPDATE SET n = counts.n + 1";
///     match cx.transaction() {
///         Transaction::Postgres(tx) => sqlx::query(sql).bind(key).execute(&mut **tx).await?.rows_affected(),
///         Transaction::Sqlite(tx) => sqlx::query(sql).bind(key).execute(&mut **tx).await?.rows_affected(),
///         _ => return Err(sqlx::Error::Protocol("a database this read model does not support".into())),
///     };
///     Ok(())
/// }
/// ```
///
/// More databases may come in a minor release (the enum is `#[non_exhaustive]`):
/// [`with_transaction!`](crate::with_transaction) always covers every one.
#[derive(Debug)]
#[non_exhaustive]
pub enum Transaction<'a> {
    /// A PostgreSQL transaction.
    #[cfg(feature = "postgres")]
    Postgres(&'a mut sqlx::PgConnection),
    /// A SQLite transaction.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a mut sqlx::SqliteConnection),
    /// A MySQL or MariaDB transaction.
    #[cfg(feature = "mysql")]
    MySql(&'a mut sqlx::MySqlConnection),
}

/// Runs the same code on the batch's transaction, whichever database it is: `$conn` is bound
/// to `&mut PgConnection` or `&mut SqliteConnection`, and both arms must produce one type.
///
/// ```
/// use pupsource::{Context, HandlerResult};
///
/// async fn count(cx: &mut Context<'_>, key: &str) -> HandlerResult {
///     let sql = "INSERT INTO counts (key, n) VALUES ($1, 1) \
///                ON CONFLICT (key) DO UPDATE SET n = counts.n + 1";
///     pupsource::with_transaction!(cx.transaction(), |tx| {
///         sqlx::query(sql).bind(key).execute(tx).await.map(|done| done.rows_affected())
///     })?;
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! with_transaction {
    ($transaction:expr, |$conn:ident| $body:expr) => {{
        let transaction = $transaction;
        $crate::__on_postgres!(
            transaction,
            $conn,
            $body,
            $crate::__on_sqlite!(
                transaction,
                $conn,
                $body,
                $crate::__on_mysql!(
                    transaction,
                    $conn,
                    $body,
                    ::core::unreachable!(
                        "with_transaction! covers every database pupsource was built with"
                    )
                )
            )
        )
    }};
}

/// One arm of [`with_transaction!`] per database the crate is built with: the macro expands
/// in the caller's crate, where pupsource's features are not visible to `#[cfg]`.
#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_postgres {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        match $transaction {
            $crate::projection::Transaction::Postgres($conn) => {
                let $conn = &mut **$conn;
                $body
            }
            #[allow(unreachable_patterns)]
            $transaction => $otherwise,
        }
    };
}

/// See [`__on_postgres!`]: PostgreSQL is not built in.
#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_postgres {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        $otherwise
    };
}

/// See [`__on_postgres!`].
#[cfg(feature = "sqlite")]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_sqlite {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        match $transaction {
            $crate::projection::Transaction::Sqlite($conn) => {
                let $conn = &mut **$conn;
                $body
            }
            #[allow(unreachable_patterns)]
            $transaction => $otherwise,
        }
    };
}

/// See [`__on_postgres!`]: SQLite is not built in.
#[cfg(not(feature = "sqlite"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_sqlite {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        $otherwise
    };
}

/// See [`__on_postgres!`].
#[cfg(feature = "mysql")]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_mysql {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        match $transaction {
            $crate::projection::Transaction::MySql($conn) => {
                let $conn = &mut **$conn;
                $body
            }
            #[allow(unreachable_patterns)]
            $transaction => $otherwise,
        }
    };
}

/// See [`__on_postgres!`]: MySQL is not built in.
#[cfg(not(feature = "mysql"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __on_mysql {
    ($transaction:ident, $conn:ident, $body:expr, $otherwise:expr) => {
        $otherwise
    };
}

/// The lease under which a partition runs: which worker holds it, and the epoch of its claim. Every claim of a partition increments
/// its epoch, and a batch commits only while its worker still holds that epoch, so the pair
/// names at most one worker at any time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The worker holding the partition (`Runner::worker_id`).
    pub owner: std::sync::Arc<str>,
    /// The epoch of its claim.
    pub epoch: u64,
}

/// What a handler knows about the event it handles, and the batch's open transaction.
#[derive(Debug)]
pub struct Context<'a> {
    projection: &'a str,
    partition: Partition,
    position: Position,
    lease: Option<&'a Lease>,
    transaction: Transaction<'a>,
    /// The handler asked for the transaction (it may have written through it).
    touched: bool,
}

impl<'a> Context<'a> {
    pub(crate) fn new(
        projection: &'a str,
        partition: Partition,
        position: Position,
        transaction: Transaction<'a>,
    ) -> Self {
        Context { projection, partition, position, lease: None, transaction, touched: false }
    }

    pub(crate) fn with_lease(mut self, lease: Option<&'a Lease>) -> Self {
        self.lease = lease;
        self
    }

    /// The lease the partition runs under; `None` when replaying parked events.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease
    }

    /// The projection's name.
    pub fn projection(&self) -> &str {
        self.projection
    }

    /// The partition handling the event.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The event's position in the log.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The batch's open transaction: write the read model through it to make it exactly-once.
    ///
    /// A batch transaction commits once 100 of its events asked for it; one whose handlers
    /// do not ask for it grows with the backlog instead (up to 100 ms). See
    /// [`Runner::batch_size`](crate::runner::Runner::batch_size).
    pub fn transaction(&mut self) -> &mut Transaction<'a> {
        self.touched = true;
        &mut self.transaction
    }

    /// Whether the handler asked for the transaction.
    pub(crate) fn touched(&self) -> bool {
        self.touched
    }

    /// The PostgreSQL transaction, if the store is PostgreSQL.
    #[cfg(feature = "postgres")]
    pub fn postgres(&mut self) -> Option<&mut sqlx::PgConnection> {
        match self.transaction() {
            Transaction::Postgres(tx) => Some(tx),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The SQLite transaction, if the store is SQLite.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&mut self) -> Option<&mut sqlx::SqliteConnection> {
        match self.transaction() {
            Transaction::Sqlite(tx) => Some(tx),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The MySQL or MariaDB transaction, if the store is MySQL.
    #[cfg(feature = "mysql")]
    pub fn mysql(&mut self) -> Option<&mut sqlx::MySqlConnection> {
        match self.transaction() {
            Transaction::MySql(tx) => Some(tx),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// A key unique to this delivery, `projection:position`, for sinks outside the database
    /// that deduplicate: a redelivery after a crash has the same key.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{}:{}:{}",
            self.projection, self.position.transaction_id, self.position.global_position
        )
    }
}
