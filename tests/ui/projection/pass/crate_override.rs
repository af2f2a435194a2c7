//! `crate = "…"` names the runtime through a crate's re-export of pupsource, for events and
//! projections alike.
#![deny(warnings)]

use serde::{Deserialize, Serialize};

/// What a crate that re-exports pupsource offers.
mod framework {
    pub use ::pupsource as runtime;
}

use framework::runtime::{Context, DomainEvent, Envelope, Handle, HandlerResult, Projection};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", crate = "crate::framework::runtime")]
struct UserCreated {}

#[pupsource::projection(events(UserCreated), crate = "framework::runtime")]
#[derive(Default)]
struct Counter;

impl Handle<UserCreated> for Counter {
    async fn handle(&self, _: Envelope<UserCreated>, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {
    assert_eq!((UserCreated::NAME, UserCreated::VERSION), ("UserCreated", 1));
    assert_eq!(Counter.scope().event_types, ["UserCreated"]);
    let registered = framework::runtime::registry::registered().expect("registered");
    assert_eq!(registered.len(), 1);
}
