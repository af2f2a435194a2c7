use pupsource::{Context, Envelope, Handle, HandlerResult};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserCreated {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserDeleted {}

#[pupsource::projection(events(UserCreated, UserDeleted))]
#[derive(Default)]
struct Counter;

impl Handle<UserCreated> for Counter {
    async fn handle(&self, _: Envelope<UserCreated>, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
