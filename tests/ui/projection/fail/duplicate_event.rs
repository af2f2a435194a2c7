use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserCreated {}

#[pupsource::projection(events(UserCreated, UserCreated))]
#[derive(Default)]
struct Counter;

fn main() {}
