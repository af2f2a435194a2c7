use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[pupsource::aggregate(events(Deposited, crate::Deposited, Deposited))]
#[derive(Default)]
struct Account;

impl pupsource::aggregate::Apply<Deposited> for Account {
    fn apply(&mut self, _: &Deposited) {}
}

fn main() {}
