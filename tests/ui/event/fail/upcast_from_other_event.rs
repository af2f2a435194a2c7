use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRegistered {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 2, upcast_from = UserRegistered)]
struct UserCreated {}

impl From<UserRegistered> for UserCreated {
    fn from(_: UserRegistered) -> Self {
        UserCreated {}
    }
}

fn main() {}
