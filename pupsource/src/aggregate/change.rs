//! What a decision returns: events of its aggregate, typed until they are appended.

use std::marker::PhantomData;

use serde_json::Value;

use super::Aggregate;
use crate::domain::DomainEvent;
use crate::error::{InvalidInput, Result};
use crate::event::Event;

/// Marks `Self` as an event of the aggregate `A`: `#[aggregate(events(…))]` implements it for
/// each listed event, so that a decision can only return events its aggregate applies.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event of `{A}`",
    label = "`{A}` does not list `{Self}`",
    note = "list it in `#[aggregate(events(...))]` on `{A}` and implement `pupsource::aggregate::Apply<{Self}>` for it"
)]
pub trait EventOf<A>: DomainEvent {}

/// One event a decision returns for its aggregate `A`, made with `.into()` from an event of
/// `A`: `vec![Deposited { amount }.into()]`.
///
/// Its payload is serialized when it is made; an event that cannot be (e.g. a map with
/// non-string keys) fails the command with [`InvalidInput::Payload`] and nothing is written.
#[derive(Debug)]
pub struct Change<A> {
    event_type: &'static str,
    event_version: u32,
    payload: Result<Value, String>,
    metadata: Option<Value>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, E: EventOf<A>> From<E> for Change<A> {
    fn from(event: E) -> Self {
        Change {
            event_type: E::NAME,
            event_version: E::VERSION,
            payload: serde_json::to_value(&event).map_err(|e| e.to_string()),
            metadata: None,
            correlation_id: None,
            causation_id: None,
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Change<A> {
    /// Sets the event's metadata.
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the event's correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the event's causation id (e.g. the command's id).
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// The store event for the aggregate `id`.
    pub(super) fn into_event(self, id: &str) -> Result<Event> {
        let payload = self.payload.map_err(|reason| InvalidInput::Payload { reason })?;
        let mut event = Event::in_stream(A::stream(id), self.event_type, payload)
            .with_event_version(self.event_version);
        if let Some(metadata) = self.metadata {
            event = event.with_metadata(metadata);
        }
        event.correlation_id = self.correlation_id;
        event.causation_id = self.causation_id;
        Ok(event)
    }
}
