//! The command side: aggregates declared with `#[pupsource::aggregate]`, loaded from their
//! stream (and a snapshot), and changed by decisions that are retried on conflicts.
//!
//! An aggregate is a state folded from its stream's events, one typed [`Apply`] impl per event.
//! [`AggregateStore::load`] reads it; [`AggregateStore::execute`] loads it, runs a decision on
//! it, appends the decision's events at exactly the version it loaded
//! ([`ExpectedVersion::Exact`](crate::ExpectedVersion::Exact)), and when another writer got
//! there first ([`Error::Concurrency`]), loads again and decides again, a bounded number of
//! times ([`Retry`]).
//!
//! ```
//! use pupsource::aggregate::{AggregateStore, Apply, Change, ExecuteError};
//! use pupsource::EventStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, pupsource::DomainEvent)]
//! #[event(context = "Banking", aggregate = "Account")]
//! struct Deposited { amount: u64 }
//!
//! #[derive(Serialize, Deserialize, pupsource::DomainEvent)]
//! #[event(context = "Banking", aggregate = "Account")]
//! struct Withdrawn { amount: u64 }
//!
//! #[derive(Default)]
//! #[pupsource::aggregate(events(Deposited, Withdrawn))]
//! struct Account { balance: u64 }
//!
//! impl Apply<Deposited> for Account {
//!     fn apply(&mut self, event: &Deposited) { self.balance += event.amount; }
//! }
//! impl Apply<Withdrawn> for Account {
//!     fn apply(&mut self, event: &Withdrawn) { self.balance -= event.amount; }
//! }
//!
//! #[derive(Debug, PartialEq)]
//! enum Refused { InsufficientFunds { balance: u64 } }
//!
//! // The decisions: no side effects, they may run more than once.
//! fn deposit(_: &Account, amount: u64) -> Result<Vec<Change<Account>>, Refused> {
//!     Ok(vec![Deposited { amount }.into()])
//! }
//! fn withdraw(account: &Account, amount: u64) -> Result<Vec<Change<Account>>, Refused> {
//!     if account.balance < amount {
//!         return Err(Refused::InsufficientFunds { balance: account.balance });
//!     }
//!     Ok(vec![Withdrawn { amount }.into()])
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pupsource::Result<()> {
//! let store = pupsource::SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//!
//! store.execute::<Account, _>("a-1", |account| deposit(account, 50)).await.expect("deposited");
//! let done = store.execute::<Account, _>("a-1", |account| withdraw(account, 20)).await.expect("withdrawn");
//! assert_eq!((done.state.balance, done.version, done.positions.len()), (30, 2, 1));
//!
//! // The caller's own error comes back, and nothing is written.
//! let refused = store.execute::<Account, _>("a-1", |account| withdraw(account, 100)).await;
//! assert!(matches!(refused, Err(ExecuteError::Rejected(Refused::InsufficientFunds { balance: 30 }))));
//!
//! let account = store.load::<Account>("a-1").await?;
//! assert_eq!((account.state.balance, account.version), (30, 2));
//! let new = store.load::<Account>("a-2").await?;
//! assert_eq!((new.state.balance, new.version), (0, 0));
//! # Ok(()) }
//! ```
//!
//! # Invariants
//! - A decision sees a state folded from every event up to the version it is appended after;
//!   its events are appended only if the stream is still at that version. A decision can run
//!   more than once (after a conflict), so it must have no side effects: compute events, send
//!   nothing.
//! - Every stored event of the stream is applied, or explicitly ignored
//!   (`#[aggregate(ignore("OldName"))]`); any other event type is
//!   [`Error::UnlistedEvent`], never skipped silently. Older schema versions are upcast by the
//!   events' [`DomainEvent`] decoders.
//! - A decision's events are applied to the state, through the same decoder as a load, before
//!   they are appended: an event that would not load back is refused with nothing written.
//! - Snapshots (`#[aggregate(snapshot_every = N, snapshot_version = V)]`) are written in the
//!   transaction of the append they describe, so a snapshot never runs ahead of its events;
//!   each aggregate type has its own, so two aggregates folding one stream never share state.
//!   A load trusts a snapshot only if its `snapshot_version` is the aggregate's and it decodes;
//!   otherwise it folds the whole stream, and the next write replaces the snapshot. A snapshot
//!   is written when an append crosses a multiple of `N`, or when the newest usable snapshot is
//!   `N` or more versions behind.

mod backend;
mod change;
mod run;

use std::future::Future;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::{DecodeError, DomainEvent};
use crate::error::{Error, Result};
use crate::event::{Event, Position, StreamId};
use crate::store::Store;

pub use backend::Backend;
pub use change::{Change, EventOf};

/// A state folded from one stream's events. Implement it with `#[pupsource::aggregate]`:
///
/// `#[aggregate(events(A, B), ignore("Old"), snapshot_every = 100, snapshot_version = 1)]`
/// on a struct or enum that implements [`Default`] (the state of a new stream) and
/// [`Apply<E>`] for each listed event. The aggregate's context and type are those of its
/// events, which must all agree (checked at compile time). `ignore("…")` names stored event
/// types that a load skips; `snapshot_every` (with a serde state) turns on snapshots, tagged
/// with `snapshot_version` (default 1; change it whenever the state's serialized shape
/// changes). `crate = "path"` names the runtime for a crate that re-exports pupsource.
pub trait Aggregate: Default + Send + 'static {
    /// The Rust type's name: for messages, and the key of its snapshots among those of other
    /// aggregates of the same stream (renaming the type makes its old snapshots unused).
    const NAME: &'static str;
    /// The bounded context of its streams.
    const CONTEXT: &'static str;
    /// The aggregate type of its streams.
    const AGGREGATE_TYPE: &'static str;
    /// Stored event types that are skipped on load.
    const IGNORED: &'static [&'static str];
    /// How it is snapshotted, if at all.
    const SNAPSHOTS: Option<Snapshots<Self>>;

    /// Applies one event of its stream, decoded (and upcast) into the type the aggregate lists
    /// for it; [`Dispatch::Unlisted`] if it lists no type of that name.
    ///
    /// # Errors
    /// [`DecodeError`] if the payload does not decode into the listed type.
    fn apply_event(&mut self, event: &Event) -> Result<Dispatch, DecodeError>;

    /// The stream of the aggregate with this id.
    fn stream(id: impl Into<String>) -> StreamId {
        StreamId::new(Self::CONTEXT, Self::AGGREGATE_TYPE, id)
    }
}

/// What [`Aggregate::apply_event`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// The event was applied.
    Applied,
    /// The aggregate lists no event of this type.
    Unlisted,
}

/// How one event changes an aggregate: `#[aggregate(events(E, …))]` dispatches each `E` here.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists `{E}` in `#[aggregate(events(...))]` but does not apply it",
    label = "missing `impl pupsource::aggregate::Apply<{E}> for {Self}`",
    note = "add `impl pupsource::aggregate::Apply<{E}> for {Self} {{ fn apply(&mut self, event: &{E}) {{ … }} }}`"
)]
pub trait Apply<E: DomainEvent> {
    /// Folds `event` into the state. It cannot fail: the event happened; validation belongs
    /// in the decision that produced it.
    fn apply(&mut self, event: &E);
}

/// How an aggregate is snapshotted: every how many versions, the schema version of the
/// snapshot, and its serde codec. Built by `#[aggregate(snapshot_every = N)]`.
pub struct Snapshots<A> {
    every: NonZeroU64,
    version: u32,
    encode: fn(&A) -> serde_json::Result<String>,
    decode: fn(&str) -> serde_json::Result<A>,
}

impl<A: Serialize + DeserializeOwned> Snapshots<A> {
    /// A snapshot every `every` versions, tagged with `version`.
    ///
    /// ```
    /// use std::num::NonZeroU64;
    /// use pupsource::aggregate::Snapshots;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct State { total: u64 }
    ///
    /// let snapshots = Snapshots::<State>::new(NonZeroU64::MIN.saturating_add(99), 2);
    /// assert_eq!((snapshots.every().get(), snapshots.version()), (100, 2));
    /// ```
    pub const fn new(every: NonZeroU64, version: u32) -> Self {
        Snapshots {
            every,
            version,
            encode: |state| serde_json::to_string(state),
            decode: |text| serde_json::from_str(text),
        }
    }
}

impl<A> Snapshots<A> {
    /// A snapshot is written when an append crosses a multiple of this.
    pub const fn every(&self) -> NonZeroU64 {
        self.every
    }

    /// The schema version snapshots are tagged with; others are ignored on load.
    pub const fn version(&self) -> u32 {
        self.version
    }
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A> Copy for Snapshots<A> {}

impl<A> std::fmt::Debug for Snapshots<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("every", &self.every)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// An aggregate as loaded: its state and the version of its stream it reflects.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state: `Default` for a stream with no event.
    pub state: A,
    /// The stream's version the state reflects (0 for a new stream): the version a decision on
    /// it is appended after.
    pub version: u64,
    /// The stream version of the snapshot the load started from, if one was used.
    pub snapshot: Option<u64>,
    /// How many events were read and folded after the snapshot (or from the start).
    pub folded: usize,
}

/// What [`AggregateStore::execute`] did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Executed<A> {
    /// The state after the decision's events.
    pub state: A,
    /// The stream's version after the append (unchanged if the decision returned no events).
    pub version: u64,
    /// Where the appended events are in the log, in version order (empty if none).
    pub positions: Vec<Position>,
    /// How many times the decision ran: 1, plus one per conflict.
    pub attempts: u32,
}

/// Why [`AggregateStore::execute`] did not append.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The decision refused the command with the caller's own error. Nothing was written.
    #[error("{0}")]
    Rejected(E),
    /// Other writers appended to the stream before each of `attempts` tries. Nothing was
    /// written; the command can be tried again later.
    #[error("stream still in conflict after {attempts} attempts: {source}")]
    Conflict {
        /// How many times the decision ran.
        attempts: u32,
        /// The last conflict ([`Error::Concurrency`]).
        #[source]
        source: Error,
    },
    /// Loading, appending or committing failed.
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> ExecuteError<E> {
    /// The caller's error, if the decision rejected the command.
    pub fn rejected(self) -> Option<E> {
        match self {
            ExecuteError::Rejected(err) => Some(err),
            _ => None,
        }
    }
}

/// How often [`AggregateStore::execute`] decides again after a conflict, and how long it
/// waits before each new attempt: a random wait between half and all of a bound that starts at
/// `first_wait` and doubles up to `max_wait`, so that colliding writers spread out.
///
/// Defaults: 10 attempts, waits from 2 ms up to 200 ms.
///
/// ```
/// use std::time::Duration;
/// use pupsource::aggregate::Retry;
///
/// let retry = Retry::default().attempts(20).waits(Duration::from_millis(2), Duration::from_secs(1));
/// assert_eq!(retry.max_attempts(), 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    first_wait: Duration,
    max_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 10,
            first_wait: Duration::from_millis(2),
            max_wait: Duration::from_millis(200),
        }
    }
}

impl Retry {
    /// Runs the decision at most `attempts` times in all (at least once).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// Waits at most `first` before the second attempt, twice as long before each next one,
    /// at most `max`.
    pub fn waits(mut self, first: Duration, max: Duration) -> Self {
        self.first_wait = first;
        self.max_wait = max.max(first);
        self
    }

    /// How many times the decision runs at most.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }
}

/// Loading and changing aggregates, on [`PostgresStore`](crate::PostgresStore) and
/// [`SqliteStore`](crate::SqliteStore) ([`Store`] has the same methods, but for the ones taking
/// a transaction).
pub trait AggregateStore: Backend {
    /// Loads the aggregate `id`: from its newest usable snapshot, if any, then every later
    /// event of its stream.
    ///
    /// # Errors
    /// [`Error::UnlistedEvent`] for a stored event type the aggregate neither lists nor
    /// ignores; [`Error::EventDecode`] for one that does not decode; the store's errors.
    fn load<A: Aggregate>(&self, id: &str) -> impl Future<Output = Result<Loaded<A>>> + Send {
        async move {
            let mut conn = self.connection().await?;
            run::load(self, &mut conn, &A::stream(id)).await
        }
    }

    /// [`load`](AggregateStore::load) inside the caller's transaction.
    ///
    /// # Errors
    /// As [`load`](AggregateStore::load).
    fn load_in<A: Aggregate>(
        &self,
        tx: &mut sqlx::Transaction<'_, Self::Database>,
        id: &str,
    ) -> impl Future<Output = Result<Loaded<A>>> + Send {
        async move { run::load(self, tx, &A::stream(id)).await }
    }

    /// Loads the aggregate `id`, runs `decide` on it, and appends the events it returns
    /// (with a snapshot, when one is due), all in one transaction, expecting the version it
    /// loaded. On a conflict it rolls back, then loads and decides again in a new transaction,
    /// up to [`Retry::default`]'s attempts. (On SQLite the transaction holds the write lock
    /// from the load on, so there is no conflict; on PostgreSQL a concurrent writer can append
    /// while `decide` runs.)
    ///
    /// `decide` may run more than once: it must not have side effects.
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] with `decide`'s error; [`ExecuteError::Conflict`] when every
    /// attempt lost to another writer; [`ExecuteError::Store`] for the errors of
    /// [`load`](AggregateStore::load), an event that does not serialize or does not decode
    /// back ([`Error::EventDecode`]), and the store's errors.
    fn execute<A: Aggregate, E: Send>(
        &self,
        id: &str,
        decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
    ) -> impl Future<Output = Result<Executed<A>, ExecuteError<E>>> + Send {
        self.execute_with(id, Retry::default(), decide)
    }

    /// [`execute`](AggregateStore::execute) with another [`Retry`] policy.
    ///
    /// # Errors
    /// As [`execute`](AggregateStore::execute).
    fn execute_with<A: Aggregate, E: Send>(
        &self,
        id: &str,
        retry: Retry,
        decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
    ) -> impl Future<Output = Result<Executed<A>, ExecuteError<E>>> + Send {
        run::execute(self, None, id, retry, decide)
    }

    /// [`execute`](AggregateStore::execute) inside the caller's transaction (from
    /// [`EventStore::begin`](crate::EventStore::begin)), so that the events commit together
    /// with the caller's other writes, or not at all. The caller commits.
    ///
    /// A conflict is retried inside the transaction: on PostgreSQL (read committed) each
    /// attempt sees what committed meanwhile. A conflict that persists (PostgreSQL: the stream
    /// was appended to by a transaction younger than this one) ends in
    /// [`ExecuteError::Conflict`]: roll back and run the whole transaction again. On SQLite
    /// the transaction holds the write lock from its start, so no conflict can occur.
    ///
    /// # Errors
    /// As [`execute`](AggregateStore::execute). After an error, roll the transaction back.
    fn execute_in<A: Aggregate, E: Send>(
        &self,
        tx: &mut sqlx::Transaction<'_, Self::Database>,
        id: &str,
        retry: Retry,
        decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
    ) -> impl Future<Output = Result<Executed<A>, ExecuteError<E>>> + Send {
        run::execute(self, Some(tx), id, retry, decide)
    }
}

impl<B: Backend> AggregateStore for B {}

/// Calls the same method of [`AggregateStore`] on whichever backend `$store` is.
macro_rules! dispatch {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            #[cfg(feature = "postgres")]
            Store::Postgres($s) => $call,
            #[cfg(feature = "sqlite")]
            Store::Sqlite($s) => $call,
            #[cfg(feature = "mysql")]
            Store::MySql($s) => $call,
        }
    };
}

impl Store {
    /// [`AggregateStore::load`] on either backend.
    ///
    /// # Errors
    /// As [`AggregateStore::load`].
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>> {
        dispatch!(self, s => s.load(id).await)
    }

    /// [`AggregateStore::execute`] on either backend. `decide` must not have side effects:
    /// it runs again after a conflict.
    ///
    /// # Errors
    /// As [`AggregateStore::execute`].
    pub async fn execute<A: Aggregate, E: Send>(
        &self,
        id: &str,
        decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
    ) -> Result<Executed<A>, ExecuteError<E>> {
        dispatch!(self, s => s.execute(id, decide).await)
    }

    /// [`AggregateStore::execute_with`] on either backend.
    ///
    /// # Errors
    /// As [`AggregateStore::execute`].
    pub async fn execute_with<A: Aggregate, E: Send>(
        &self,
        id: &str,
        retry: Retry,
        decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
    ) -> Result<Executed<A>, ExecuteError<E>> {
        dispatch!(self, s => s.execute_with(id, retry, decide).await)
    }
}
