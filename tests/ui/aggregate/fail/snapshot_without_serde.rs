use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[pupsource::aggregate(events(Deposited), snapshot_every = 100)]
#[derive(Default)]
struct Account;

impl pupsource::aggregate::Apply<Deposited> for Account {
    fn apply(&mut self, _: &Deposited) {}
}

fn main() {}
