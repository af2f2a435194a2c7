//! A raw projection with a name, a constructor, a reset hook and a scope.
#![deny(warnings)]

use pupsource::projection::Transaction;
use pupsource::{Context, HandleRaw, HandlerResult, PersistedEvent};

#[pupsource::projection(
    name = "publisher",
    contexts("Sales"),
    aggregates("Order", "Invoice"),
    new = Publisher::connect,
    reset = Publisher::clear
)]
struct Publisher {
    endpoint: String,
}

impl Publisher {
    fn connect() -> Self {
        Publisher { endpoint: "queue://orders".to_owned() }
    }

    async fn clear(&self, _transaction: &mut Transaction<'_>) -> HandlerResult {
        Ok(())
    }
}

impl HandleRaw for Publisher {
    async fn handle(&self, event: &PersistedEvent, _cx: &mut Context<'_>) -> HandlerResult {
        assert!(!self.endpoint.is_empty() && !event.event_type.is_empty());
        Ok(())
    }
}

fn main() {
    let all = pupsource::registry::registered().expect("registered");
    assert_eq!(all.len(), 1);
    let publisher = &all[0];
    assert_eq!(publisher.name(), "publisher");
    assert_eq!(publisher.partitions(), 1);
    assert!(publisher.scope().event_types.is_empty());
    assert_eq!(publisher.scope().contexts, ["Sales"]);
    assert_eq!(publisher.scope().aggregate_types, ["Order", "Invoice"]);
}
