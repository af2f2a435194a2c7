use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = Identity, aggregate = "", name = 4, version = "2")]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "")]
#[event(version = 2147483648, upcast_from)]
struct UserRenamed {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 99999999999, upcast_from = "Old")]
struct UserDeleted {}

fn main() {}
