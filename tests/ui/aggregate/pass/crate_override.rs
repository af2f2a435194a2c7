//! `crate = "…"` names the runtime through a crate's re-export of pupsource.
#![deny(warnings)]

use serde::{Deserialize, Serialize};

/// What a crate that re-exports pupsource offers.
mod framework {
    pub use ::pupsource as runtime;
}

use framework::runtime::aggregate::{Aggregate, Apply};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", crate = "crate::framework::runtime")]
struct UserCreated {}

#[pupsource::aggregate(events(UserCreated), crate = "framework::runtime")]
#[derive(Default)]
struct User {
    created: bool,
}

impl Apply<UserCreated> for User {
    fn apply(&mut self, _: &UserCreated) {
        self.created = true;
    }
}

fn main() {
    assert_eq!(User::stream("u-1").aggregate_type, "User");
    assert!(!User::default().created);
}
