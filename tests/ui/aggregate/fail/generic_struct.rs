use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[pupsource::aggregate(events(Deposited))]
#[derive(Default)]
struct Account<T> {
    inner: T,
}

fn main() {}
