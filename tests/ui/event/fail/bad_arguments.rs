use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 0, schema = 2)]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "", aggregate = "User", name = "Renamed", name = "Again")]
struct UserRenamed {}

fn main() {}
