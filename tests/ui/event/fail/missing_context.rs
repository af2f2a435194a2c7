use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::Event)]
#[event(aggregate = "User")]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::Event)]
struct UserDeleted {}

fn main() {}
