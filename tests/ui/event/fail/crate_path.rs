use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", crate = "not a path")]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", crate = pupsource)]
struct UserRenamed {}

fn main() {}
