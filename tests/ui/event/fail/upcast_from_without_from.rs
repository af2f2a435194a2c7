use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "UserCreated")]
struct UserCreatedV1 {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 2, upcast_from = UserCreatedV1)]
struct UserCreated {}

fn main() {}
