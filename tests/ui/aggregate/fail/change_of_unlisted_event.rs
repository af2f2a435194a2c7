use pupsource::aggregate::{Apply, Change};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Closed {}

#[pupsource::aggregate(events(Deposited))]
#[derive(Default)]
struct Account;

impl Apply<Deposited> for Account {
    fn apply(&mut self, _: &Deposited) {}
}

fn decide(_: &Account) -> Vec<Change<Account>> {
    vec![Closed {}.into()]
}

fn main() {
    let _ = decide;
}
