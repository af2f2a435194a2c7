use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", crate = "crate::missing")]
struct UserCreated {}

fn main() {}
