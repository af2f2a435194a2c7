use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(aggregate = "User")]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
struct UserDeleted {}

fn main() {}
