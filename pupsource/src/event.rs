//! Events before and after persistence, aggregate streams and append results.
//!
//! An [`Event`] is what an application appends; a [`PersistedEvent`] is what the store hands
//! back, with its global [`Position`] and its version in the aggregate's stream.

use std::fmt;

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{FieldProblem, InvalidInput, Result};

use crate::limits::{
    EARLIEST_CREATED_AT, LATEST_CREATED_AT, MAX_ID_LEN, MAX_JSON_DEPTH, MAX_NAME_LEN,
};

/// Identifies one aggregate's stream: bounded context, aggregate type and aggregate id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// The bounded context, e.g. `"Identity"`.
    pub context: String,
    /// The aggregate type, e.g. `"User"`.
    pub aggregate_type: String,
    /// The aggregate's id, e.g. a UUID as text.
    pub aggregate_id: String,
}

impl StreamId {
    /// A stream id from its three parts.
    pub fn new(
        context: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Self {
        StreamId {
            context: context.into(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.context, self.aggregate_type, self.aggregate_id)
    }
}

/// An event to append.
///
/// ```
/// use pupsource::{Event, StreamId};
/// use serde_json::json;
///
/// let stream = StreamId::new("Identity", "User", "42");
/// let event = Event::new(&stream, "UserCreated", json!({ "email": "ada@example.com" }))
///     .with_correlation_id("req-7");
/// assert_eq!(event.event_version, 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// Unique id of the event (a UUIDv7 by default).
    pub event_id: Uuid,
    /// The event's type name, e.g. `"UserCreated"`.
    pub event_type: String,
    /// The schema version of the payload (1 or more).
    pub event_version: u32,
    /// The event's data.
    pub payload: Value,
    /// Free-form metadata (an empty object by default).
    pub metadata: Value,
    /// Id of the event or command that caused this one. `Some("")` is stored as an empty string.
    pub causation_id: Option<String>,
    /// Id correlating the events of one business flow.
    pub correlation_id: Option<String>,
    /// Id of the distributed trace that produced the event.
    pub trace_id: Option<String>,
    /// When the event happened. Stored with microsecond precision.
    pub created_at: OffsetDateTime,
}

impl Event {
    /// A new event of `stream` with a fresh UUIDv7 id, schema version 1, empty metadata and the
    /// current time (truncated to microseconds, the precision the stores keep).
    pub fn new(stream: &StreamId, event_type: impl Into<String>, payload: Value) -> Self {
        Self::in_stream(stream.clone(), event_type, payload)
    }

    /// [`Event::new`] with a stream id the caller gives away, so its names are not copied.
    pub(crate) fn in_stream(
        stream: StreamId,
        event_type: impl Into<String>,
        payload: Value,
    ) -> Self {
        Event {
            stream,
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            event_version: 1,
            payload,
            metadata: Value::Object(serde_json::Map::new()),
            causation_id: None,
            correlation_id: None,
            trace_id: None,
            created_at: truncate_to_micros(OffsetDateTime::now_utc()),
        }
    }

    /// Like [`Event::new`], with the payload given as JSON text.
    ///
    /// # Errors
    /// [`InvalidInput::Payload`] if `json` is not valid JSON.
    pub fn from_json(stream: &StreamId, event_type: impl Into<String>, json: &str) -> Result<Self> {
        let payload = serde_json::from_str(json)
            .map_err(|e| InvalidInput::Payload { reason: e.to_string() })?;
        Ok(Event::new(stream, event_type, payload))
    }

    /// Sets the event id.
    pub fn with_event_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the schema version of the payload.
    pub fn with_event_version(mut self, version: u32) -> Self {
        self.event_version = version;
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the trace id.
    pub fn with_trace_id(mut self, id: impl Into<String>) -> Self {
        self.trace_id = Some(id.into());
        self
    }

    /// Sets when the event happened (truncated to microseconds).
    pub fn with_created_at(mut self, at: OffsetDateTime) -> Self {
        self.created_at = truncate_to_micros(at);
        self
    }
}

/// Drops sub-microsecond precision, which neither store keeps.
pub(crate) fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// Where an event stands in the global order of the log.
///
/// On PostgreSQL the order is `(transaction_id, global_position)`: events are delivered in the
/// order their transactions were assigned ids, and only once every older transaction has
/// finished, so an event committed late is never skipped. On SQLite writers are serialized,
/// `transaction_id` is always 0 and the order is `global_position` alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    /// The id of the transaction that appended the event (PostgreSQL `xid8`; 0 on SQLite).
    pub transaction_id: i64,
    /// The event's sequence number in the log.
    pub global_position: i64,
}

impl Position {
    /// Before the first event.
    pub const START: Position = Position { transaction_id: 0, global_position: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transaction_id == 0 {
            write!(f, "{}", self.global_position)
        } else {
            write!(f, "{}@tx{}", self.global_position, self.transaction_id)
        }
    }
}

/// An event as stored, with its place in the log and in its stream.
#[derive(Debug, Clone, PartialEq)]
pub struct PersistedEvent {
    /// The event as appended.
    pub event: Event,
    /// Its place in the global log.
    pub position: Position,
    /// Its version in the aggregate's stream (1 for the first event).
    pub aggregate_version: u64,
    /// SipHash-1-3 of the aggregate id, see [`crate::partition`].
    pub partition_hash: u64,
}

impl std::ops::Deref for PersistedEvent {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// An event as the runner hands it to a [`Projection`](crate::Projection): every stored column,
/// with the payload and metadata still the JSON text the store returned.
///
/// A typed projection decodes only the payload, straight from the text into its event type
/// ([`LogEvent::decode`]); a raw one gets the [`PersistedEvent`] ([`LogEvent::to_persisted`]),
/// whose payload and metadata are [`Value`]s.
///
/// ```
/// use pupsource::{Event, LogEvent, PersistedEvent, Position, StreamId};
/// use serde_json::json;
///
/// let event = Event::new(&StreamId::new("Sales", "Order", "o1"), "Placed", json!({ "total": 5 }));
/// let stored = PersistedEvent { event, position: Position::START, aggregate_version: 1, partition_hash: 0 };
/// let logged = LogEvent::from(stored.clone());
/// assert_eq!(logged.payload_json(), r#"{"total":5}"#);
/// assert_eq!(logged.to_persisted()?, stored);
/// # Ok::<(), pupsource::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    /// The stream the event belongs to.
    pub stream: StreamId,
    /// Unique id of the event.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// The schema version of the payload.
    pub event_version: u32,
    /// The payload's JSON text.
    pub(crate) payload: String,
    /// The metadata's JSON text.
    pub(crate) metadata: String,
    /// Id of the event or command that caused this one.
    pub causation_id: Option<String>,
    /// Id correlating the events of one business flow.
    pub correlation_id: Option<String>,
    /// Id of the distributed trace that produced the event.
    pub trace_id: Option<String>,
    /// When the event happened.
    pub created_at: OffsetDateTime,
    /// Its place in the global log.
    pub position: Position,
    /// Its version in the aggregate's stream (1 for the first event).
    pub aggregate_version: u64,
    /// SipHash-1-3 of the aggregate id, see [`crate::partition`].
    pub partition_hash: u64,
}

impl LogEvent {
    /// The payload as stored: JSON text.
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// The metadata as stored: JSON text.
    pub fn metadata_json(&self) -> &str {
        &self.metadata
    }

    /// The event with its payload and metadata decoded into [`Value`]s.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) if either is not JSON (the store only holds
    /// JSON, so this means the row was changed behind the store's back).
    pub fn to_persisted(&self) -> Result<PersistedEvent> {
        self.clone().into_persisted()
    }

    /// [`LogEvent::to_persisted`], consuming the event.
    pub(crate) fn into_persisted(self) -> Result<PersistedEvent> {
        let position = self.position;
        let json = |what: &str, text: &str| {
            serde_json::from_str(text).map_err(|e| crate::Error::Decode {
                position: position.global_position,
                reason: format!("{what}: {e}"),
            })
        };
        let event = Event {
            payload: json("payload", &self.payload)?,
            metadata: json("metadata", &self.metadata)?,
            stream: self.stream,
            event_id: self.event_id,
            event_type: self.event_type,
            event_version: self.event_version,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            trace_id: self.trace_id,
            created_at: self.created_at,
        };
        Ok(PersistedEvent {
            event,
            position,
            aggregate_version: self.aggregate_version,
            partition_hash: self.partition_hash,
        })
    }
}

impl From<PersistedEvent> for LogEvent {
    fn from(stored: PersistedEvent) -> Self {
        let PersistedEvent { event, position, aggregate_version, partition_hash } = stored;
        LogEvent {
            stream: event.stream,
            event_id: event.event_id,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload.to_string(),
            metadata: event.metadata.to_string(),
            causation_id: event.causation_id,
            correlation_id: event.correlation_id,
            trace_id: event.trace_id,
            created_at: event.created_at,
            position,
            aggregate_version,
            partition_hash,
        }
    }
}

/// The history of one aggregate, in version order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    /// Which stream.
    pub id: StreamId,
    /// Its events, ordered by [`PersistedEvent::aggregate_version`].
    pub events: Vec<PersistedEvent>,
}

impl Stream {
    /// The version of the last event read (0 when none was).
    pub fn version(&self) -> u64 {
        self.events.last().map_or(0, |e| e.aggregate_version)
    }

    /// Whether no event was read.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// How many events were read.
    pub fn len(&self) -> usize {
        self.events.len()
    }
}

/// What one append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// Version of the first appended event.
    pub from_version: u64,
    /// Version of the last appended event: the stream's version after the append.
    pub to_version: u64,
    /// Positions of the appended events, in version order.
    pub positions: Vec<Position>,
}

/// Checks every event of one append; returns the stream they share.
pub(crate) fn validate_append(events: &[Event]) -> Result<&StreamId> {
    let first = events.first().ok_or(InvalidInput::NoEvents)?;
    let stream = &first.stream;
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if event.stream != *stream {
            return Err(InvalidInput::MixedStreams {
                index,
                expected: Box::new(stream.clone()),
                found: Box::new(event.stream.clone()),
            }
            .into());
        }
        if !seen.insert(event.event_id) {
            return Err(InvalidInput::RepeatedEventId { index, event_id: event.event_id }.into());
        }
        let field = |field, problem| InvalidInput::Field { index, field, problem };
        for (name, value, max) in [
            ("context", event.stream.context.as_str(), MAX_NAME_LEN),
            ("aggregate_type", event.stream.aggregate_type.as_str(), MAX_NAME_LEN),
            ("aggregate_id", event.stream.aggregate_id.as_str(), MAX_ID_LEN),
            ("event_type", event.event_type.as_str(), MAX_NAME_LEN),
        ] {
            if value.is_empty() {
                return Err(field(name, FieldProblem::Empty).into());
            }
            check_text(value, max).map_err(|p| field(name, p))?;
        }
        for (name, value) in [
            ("causation_id", &event.causation_id),
            ("correlation_id", &event.correlation_id),
            ("trace_id", &event.trace_id),
        ] {
            if let Some(value) = value {
                check_text(value, MAX_ID_LEN).map_err(|p| field(name, p))?;
            }
        }
        for (name, value) in [("payload", &event.payload), ("metadata", &event.metadata)] {
            if json_depth(value) > MAX_JSON_DEPTH {
                return Err(field(name, FieldProblem::TooDeep { max: MAX_JSON_DEPTH }).into());
            }
        }
        if !(EARLIEST_CREATED_AT..=LATEST_CREATED_AT).contains(&event.created_at) {
            return Err(field("created_at", FieldProblem::TimestampOutOfRange).into());
        }
        if event.event_version == 0 || i32::try_from(event.event_version).is_err() {
            let max = i32::MAX.unsigned_abs().into();
            return Err(field("event_version", FieldProblem::OutOfRange { max }).into());
        }
    }
    Ok(stream)
}

/// How deeply arrays and objects nest in `value` (a scalar is 0), without recursion. Only
/// nested arrays and objects wait on the stack, so a flat value allocates nothing.
fn json_depth(value: &Value) -> usize {
    let is_nested = |item: &&Value| item.is_array() || item.is_object();
    let mut deepest = 0;
    let mut nested = Vec::new();
    let mut next = Some((value, 0usize));
    while let Some((value, depth)) = next.take().or_else(|| nested.pop()) {
        let below = |item| (item, depth + 1);
        match value {
            Value::Array(items) => nested.extend(items.iter().filter(is_nested).map(below)),
            Value::Object(map) => nested.extend(map.values().filter(is_nested).map(below)),
            _ => continue,
        }
        deepest = deepest.max(depth + 1);
    }
    deepest
}

/// Whether a stream with this id can exist: appends refuse NUL characters.
pub(crate) fn storable(stream: &StreamId) -> bool {
    ![&stream.context, &stream.aggregate_type, &stream.aggregate_id]
        .iter()
        .any(|part| part.contains('\0'))
}

fn check_text(value: &str, max: usize) -> Result<(), FieldProblem> {
    if value.len() > max {
        return Err(FieldProblem::TooLong { len: value.len(), max });
    }
    if value.contains('\0') {
        return Err(FieldProblem::NulCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_depth_counts_nested_arrays_and_objects() {
        assert_eq!(json_depth(&json!(7)), 0);
        assert_eq!(json_depth(&json!({})), 1);
        assert_eq!(json_depth(&json!({ "a": 1, "b": "x" })), 1);
        assert_eq!(json_depth(&json!([[], {}])), 2);
        assert_eq!(json_depth(&json!({ "a": 1, "b": [{ "c": [] }], "d": [[]] })), 4);
        let mut deep = json!(0);
        for _ in 0..1_000 {
            deep = Value::Array(vec![json!(1), deep]);
        }
        assert_eq!(json_depth(&deep), 1_000);
    }
}
