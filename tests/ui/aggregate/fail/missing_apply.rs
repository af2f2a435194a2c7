use pupsource::aggregate::Apply;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Withdrawn {}

#[pupsource::aggregate(events(Deposited, Withdrawn))]
#[derive(Default)]
struct Account;

impl Apply<Deposited> for Account {
    fn apply(&mut self, _: &Deposited) {}
}

fn main() {}
