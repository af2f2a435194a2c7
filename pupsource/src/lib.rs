#![doc = include_str!("../README.md")]

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

pub use domain::{DecodeError, DomainEvent, Envelope, Handle, HandleRaw};
pub use error::{ConstraintKind, Error, FieldProblem, InvalidInput, Result};
pub use event::{AppendResult, Event, PersistedEvent, Position, Stream, StreamId};
pub use projection::{Context, HandlerError, HandlerResult, Projection};
pub use pupsource_macros::{DomainEvent, main, projection};
pub use runner::Runner;
pub use store::{EventStore, PostgresStore, Scope, SqliteStore, Store};
pub use version::ExpectedVersion;

#[doc(hidden)]
#[path = "__private.rs"]
pub mod __private;
