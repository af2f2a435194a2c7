//! Typed domain events: types declared with `#[derive(pupsource::DomainEvent)]`, the envelope a
//! typed handler receives, and the handler traits a `#[projection]` dispatches to.
//!
//! A domain event has a bounded context, an aggregate type, a name (the stored `event_type`)
//! and a schema version. Several versions of one event can coexist in the log: each older
//! version is its own type, and the current type declares `upcast_from = Older` once (with a
//! `From<Older>` impl); decoding a stored event of an older version goes through it.

use std::future::Future;
use std::ops::Deref;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{InvalidInput, Result};
use crate::event::{Event, LogEvent, PersistedEvent, Position, StreamId};
use crate::projection::{Context, HandlerResult};

/// A typed domain event. Implement it with `#[derive(pupsource::DomainEvent)]`.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, pupsource::DomainEvent)]
/// #[event(context = "Identity", aggregate = "User")]
/// struct UserCreated {
///     email: String,
/// }
///
/// use pupsource::DomainEvent;
/// assert_eq!(UserCreated::NAME, "UserCreated");
/// let event = UserCreated { email: "ada@example.com".into() }.to_event("42")?.with_correlation_id("req-1");
/// assert_eq!(event.stream.aggregate_type, "User");
/// assert_eq!(event.event_version, 1);
/// # Ok::<(), pupsource::Error>(())
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The bounded context.
    const CONTEXT: &'static str;
    /// The aggregate type.
    const AGGREGATE: &'static str;
    /// The stored event type name.
    const NAME: &'static str;
    /// The schema version of this type's payload.
    const VERSION: u32;

    /// Decodes a stored payload of schema `version`, upcasting older versions.
    ///
    /// # Errors
    /// [`DecodeError`] if the version is unknown or the payload does not match.
    ///
    /// `payload` is any serde_json deserializer: a stored [`Value`] (`&Value`), or JSON text
    /// (`&mut serde_json::Deserializer`), which decodes straight into the type.
    fn decode_payload<'de, D>(payload: D, version: u32) -> Result<Self, DecodeError>
    where
        D: serde::Deserializer<'de, Error = serde_json::Error>;

    /// The stream of the aggregate with this id.
    fn stream(aggregate_id: impl Into<String>) -> StreamId {
        StreamId::new(Self::CONTEXT, Self::AGGREGATE, aggregate_id)
    }

    /// A store [`Event`] for the aggregate `aggregate_id`, to append. Set causation,
    /// correlation, trace ids and metadata with the `Event::with_…` methods.
    ///
    /// # Errors
    /// [`InvalidInput::Payload`] if the value cannot be serialized to JSON (e.g. a map with
    /// non-string keys).
    fn to_event(&self, aggregate_id: impl Into<String>) -> Result<Event> {
        let payload = serde_json::to_value(self)
            .map_err(|e| InvalidInput::Payload { reason: e.to_string() })?;
        Ok(Event::in_stream(Self::stream(aggregate_id), Self::NAME, payload)
            .with_event_version(Self::VERSION))
    }

    /// Decodes a stored event of this type.
    ///
    /// # Errors
    /// [`DecodeError`] if it is another event, an unknown version, or does not match.
    fn decode(event: &PersistedEvent) -> Result<Self, DecodeError> {
        if !Self::matches(event) {
            return Err(DecodeError::WrongType {
                expected: Self::NAME,
                found: event.event_type.clone(),
            });
        }
        Self::decode_payload(&event.payload, event.event_version)
    }

    /// Whether a stored event is of this type (context and name).
    fn matches(event: &PersistedEvent) -> bool {
        event.event_type == Self::NAME && event.stream.context == Self::CONTEXT
    }
}

/// Why a stored event could not be decoded into its type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The stored event is of another type.
    #[error("expected event `{expected}`, found `{found}`")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The stored type.
        found: String,
    },
    /// No type of this event handles the stored schema version.
    #[error(
        "`{event_type}` has no decoder for schema version {version} (current version is {current})"
    )]
    UnknownVersion {
        /// The event type.
        event_type: &'static str,
        /// The stored version.
        version: u32,
        /// The current version.
        current: u32,
    },
    /// The payload does not deserialize into the type (schema drift).
    #[error("payload of `{event_type}` v{version} does not match its type: {source}")]
    Payload {
        /// The event type.
        event_type: &'static str,
        /// The stored version.
        version: u32,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Deserializes a payload of exactly this version. Used by generated code.
#[doc(hidden)]
pub fn decode_exact<'de, E, D>(payload: D, version: u32) -> Result<E, DecodeError>
where
    E: DomainEvent,
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    E::deserialize(payload).map_err(|source| DecodeError::Payload {
        event_type: E::NAME,
        version,
        source,
    })
}

/// Decodes a payload of schema `version` from its JSON text, straight into `E` (no
/// intermediate [`Value`]), upcasting older versions.
///
/// The result is the one of [`DomainEvent::decode`] on the stored event: text that the
/// direct path refuses but a [`Value`] accepts (an object that repeats a key, which
/// PostgreSQL's `json` and SQLite keep as written, and a writer other than pupsource may
/// have stored) is decoded through a [`Value`], where the last of the repeated keys wins.
/// Only a payload that fails the direct path pays for the second attempt.
fn decode_text<E: DomainEvent>(payload: &str, version: u32) -> Result<E, DecodeError> {
    let mut text = serde_json::Deserializer::from_str(payload);
    let direct = E::decode_payload(&mut text, version).and_then(|event| {
        text.end().map_err(|source| DecodeError::Payload {
            event_type: E::NAME,
            version,
            source,
        })?;
        Ok(event)
    });
    match direct {
        Err(DecodeError::Payload { .. }) => serde_json::from_str::<Value>(payload)
            .ok()
            .and_then(|value| E::decode_payload(&value, version).ok())
            .map_or(direct, Ok),
        direct => direct,
    }
}

/// A decoded event with its stored context: position, stream, ids, metadata.
///
/// Dereferences to the event itself.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Envelope<E> {
    /// The decoded event.
    pub data: E,
    /// Its stream.
    pub stream: StreamId,
    /// Its id.
    pub event_id: Uuid,
    /// Its version in the stream.
    pub aggregate_version: u64,
    /// Its place in the log.
    pub position: Position,
    /// The schema version it was stored with (older ones were upcast).
    pub event_version: u32,
    /// When it happened.
    pub created_at: OffsetDateTime,
    /// Its metadata.
    pub metadata: Value,
    /// Its causation id.
    pub causation_id: Option<String>,
    /// Its correlation id.
    pub correlation_id: Option<String>,
    /// Its trace id.
    pub trace_id: Option<String>,
}

/// The [`Envelope`] of `data` decoded from `event`, a [`PersistedEvent`] or a [`LogEvent`]
/// (the same fields by name).
macro_rules! envelope {
    ($data:expr, $metadata:expr, $event:expr) => {{
        let event = $event;
        Envelope {
            data: $data,
            stream: event.stream.clone(),
            event_id: event.event_id,
            aggregate_version: event.aggregate_version,
            position: event.position,
            event_version: event.event_version,
            created_at: event.created_at,
            metadata: $metadata,
            causation_id: event.causation_id.clone(),
            correlation_id: event.correlation_id.clone(),
            trace_id: event.trace_id.clone(),
        }
    }};
}

impl<E: DomainEvent> Envelope<E> {
    /// Decodes a stored event.
    ///
    /// # Errors
    /// [`DecodeError`] if it is another event, an unknown version, or does not match.
    pub fn decode(event: &PersistedEvent) -> Result<Self, DecodeError> {
        Ok(envelope!(E::decode(event)?, event.metadata.clone(), event))
    }
}

impl LogEvent {
    /// Whether the event is of `E`'s type (context and name).
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.event_type == E::NAME && self.stream.context == E::CONTEXT
    }

    /// Decodes the event as `E`: its payload straight from the stored JSON text into the type
    /// (upcast from an older schema version if need be), its metadata into a [`Value`].
    ///
    /// # Errors
    /// [`DecodeError`] if it is another event, an unknown version, or does not match.
    pub fn decode<E: DomainEvent>(&self) -> Result<Envelope<E>, DecodeError> {
        if !self.is::<E>() {
            return Err(DecodeError::WrongType {
                expected: E::NAME,
                found: self.event_type.clone(),
            });
        }
        let data = decode_text::<E>(self.payload_json(), self.event_version)?;
        let metadata = serde_json::from_str(self.metadata_json()).map_err(|source| {
            DecodeError::Payload { event_type: E::NAME, version: self.event_version, source }
        })?;
        Ok(envelope!(data, metadata, self))
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.data
    }
}

/// A typed handler: a `#[projection(events(E, …))]` dispatches each `E` to it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` lists `{E}` in `#[projection(events(...))]` but does not handle it",
    label = "missing `impl pupsource::Handle<{E}> for {Self}`",
    note = "add `impl pupsource::Handle<{E}> for {Self} {{ async fn handle(&self, event: pupsource::Envelope<{E}>, cx: &mut pupsource::Context<'_>) -> pupsource::HandlerResult {{ … }} }}`"
)]
pub trait Handle<E: DomainEvent> {
    /// Handles one event.
    fn handle(
        &self,
        event: Envelope<E>,
        cx: &mut Context<'_>,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// A raw handler: a `#[projection]` without `events(…)` hands it every event in its scope
/// (all events, or those of `contexts(…)` / `aggregates(…)`), undecoded.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a raw projection (no `events(...)`) but does not implement `HandleRaw`",
    label = "missing `impl pupsource::HandleRaw for {Self}`",
    note = "list the typed events it handles with `#[projection(events(...))]`, or implement `pupsource::HandleRaw` to receive every event"
)]
pub trait HandleRaw {
    /// Handles one event.
    fn handle(
        &self,
        event: &PersistedEvent,
        cx: &mut Context<'_>,
    ) -> impl Future<Output = HandlerResult> + Send;
}
