use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "UserCreated")]
struct UserCreatedV0 {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", upcast_from = UserCreatedV0)]
struct UserCreated {}

fn main() {}
