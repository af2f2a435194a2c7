use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "UserCreated", version = 3)]
struct UserCreatedV3 {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 2, upcast_from = UserCreatedV3)]
struct UserCreated {}

impl From<UserCreatedV3> for UserCreated {
    fn from(_: UserCreatedV3) -> Self {
        UserCreated {}
    }
}

fn main() {}
