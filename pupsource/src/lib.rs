#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "postgres", feature = "sqlite", feature = "mysql")))]
compile_error!("pupsource needs a database: enable its `postgres`, `sqlite` or `mysql` feature");

pub mod aggregate;
mod backoff;
mod checkpoint;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod cli;
mod domain;
mod error;
mod event;
pub mod limits;
pub mod partition;
mod process;
pub mod projection;
pub mod registry;
pub mod runner;
pub mod store;
mod version;

pub use aggregate::{Aggregate, AggregateStore, Apply, Change};
pub use domain::{DecodeError, DomainEvent, Envelope, Handle, HandleRaw};
pub use error::{ConnectFailure, ConstraintKind, Error, FieldProblem, InvalidInput, Result};
pub use event::{AppendResult, Event, LogEvent, PersistedEvent, Position, Stream, StreamId};
pub use projection::{Context, HandlerError, HandlerResult, Projection};
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub use pupsource_macros::main;
pub use pupsource_macros::{DomainEvent, aggregate, projection};
pub use runner::Runner;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use store::MySqlStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use store::PostgresStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use store::SqliteStore;
pub use store::{EventStore, Scope, Store};
pub use version::ExpectedVersion;

#[doc(hidden)]
#[path = "__private.rs"]
pub mod __private;
