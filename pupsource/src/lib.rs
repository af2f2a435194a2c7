//! # pupsource
//!
//! Event sourcing for Rust: an append-only event store on PostgreSQL or SQLite with optimistic
//! concurrency and per-aggregate streams, read in a gap-free global order; aggregates loaded
//! from their streams and snapshots and changed by retried decisions ([`mod@aggregate`]); and
//! partitioned projections ([`mod@projection`]).
//!
//! ```
//! use pupsource::{Event, EventStore, ExpectedVersion, Position, Scope, SqliteStore, StreamId};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> pupsource::Result<()> {
//! let store = SqliteStore::connect("sqlite::memory:").await?;
//! store.migrate().await?;
//!
//! let order = StreamId::new("Sales", "Order", "o-1");
//! store
//!     .append_and_commit(
//!         ExpectedVersion::NoStream,
//!         &[
//!             Event::new(&order, "OrderPlaced", json!({ "total": 42 })),
//!             Event::new(&order, "OrderPaid", json!({})),
//!         ],
//!     )
//!     .await?;
//!
//! // A second writer that still believes the order is new loses the race.
//! let late = Event::new(&order, "OrderPlaced", json!({ "total": 7 }));
//! let err = store.append_and_commit(ExpectedVersion::NoStream, &[late]).await.unwrap_err();
//! assert!(matches!(err, pupsource::Error::Concurrency { actual: 2, .. }));
//!
//! let log = store.read_all(Position::START, 100, &Scope::all()).await?;
//! assert_eq!(log.len(), 2);
//! # Ok(()) }
//! ```

pub mod aggregate;
mod backoff;
mod checkpoint;
pub mod cli;
mod domain;
mod error;
mod event;
pub mod limits;
pub mod partition;
pub mod projection;
pub mod registry;
pub mod runner;
pub mod store;
mod version;

pub use aggregate::{Aggregate, AggregateStore, Apply, Change};
pub use domain::{DecodeError, DomainEvent, Envelope, Handle, HandleRaw};
pub use error::{ConstraintKind, Error, FieldProblem, InvalidInput, Result};
pub use event::{AppendResult, Event, PersistedEvent, Position, Stream, StreamId};
pub use projection::{Context, HandlerError, HandlerResult, Projection};
pub use pupsource_macros::{DomainEvent, aggregate, main, projection};
pub use runner::Runner;
pub use store::{EventStore, PostgresStore, Scope, SqliteStore, Store};
pub use version::ExpectedVersion;

#[doc(hidden)]
#[path = "__private.rs"]
pub mod __private;

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
