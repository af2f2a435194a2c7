//! A typed projection compiles under `#![deny(warnings)]`, with user items named `Result`,
//! `Option` and `pupsource` in scope, and generates the declared name, partitions and scope.
#![deny(warnings)]

use std::sync::atomic::{AtomicU64, Ordering};

use ::pupsource::{Context, Envelope, Handle, HandlerResult, Projection};
use serde::{Deserialize, Serialize};

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
mod pupsource {}

#[derive(Serialize, Deserialize, ::pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserCreated {
    email: String,
}

#[derive(Serialize, Deserialize, ::pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order", name = "order.placed", version = 3)]
struct OrderPlaced {}

#[::pupsource::projection(partitions = 4, events(UserCreated, OrderPlaced))]
#[derive(Default)]
struct UserCounter {
    users: AtomicU64,
}

impl Handle<UserCreated> for UserCounter {
    async fn handle(&self, event: Envelope<UserCreated>, _cx: &mut Context<'_>) -> HandlerResult {
        assert!(!event.email.is_empty());
        self.users.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Handle<OrderPlaced> for UserCounter {
    async fn handle(&self, _: Envelope<OrderPlaced>, _cx: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {
    let counter = UserCounter::default();
    assert_eq!(counter.name(), "user_counter");
    assert_eq!(counter.partitions(), 4);
    let scope = counter.scope();
    assert_eq!(scope.contexts, ["Identity", "Sales"]);
    assert_eq!(scope.aggregate_types, ["User", "Order"]);
    assert_eq!(scope.event_types, ["UserCreated", "order.placed"]);
    let registered = ::pupsource::registry::registered().map(|all| all.len()).unwrap_or(0);
    assert_eq!(registered, 1);
}
