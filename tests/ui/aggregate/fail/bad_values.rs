use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[pupsource::aggregate(events(), ignore("", "Old", "Old"), snapshot_every = 0)]
#[derive(Default)]
struct Account;

#[pupsource::aggregate(events(Deposited), snapshot_version = 2)]
#[derive(Default)]
struct Ledger;

impl pupsource::aggregate::Apply<Deposited> for Ledger {
    fn apply(&mut self, _: &Deposited) {}
}

#[pupsource::aggregate(snapshot_every = "often")]
#[derive(Default)]
struct Journal;

#[pupsource::aggregate(events(Deposited))]
union Raw {
    a: u8,
}

fn main() {}
