//! An aggregate with snapshots and ignored events compiles under `#![deny(warnings)]`, with
//! user items named `Result`, `Option` and `pupsource` in scope, and declares its stream, its
//! ignored events and its snapshot policy; its dispatch applies each listed event (older
//! schema versions upcast) and reports the others as unlisted.
#![deny(warnings)]

use ::pupsource::aggregate::{Aggregate, Apply, Change, Dispatch};
use ::pupsource::DomainEvent;
use serde::{Deserialize, Serialize};

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
mod pupsource {}

#[derive(Serialize, Deserialize, ::pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account", name = "Deposited", version = 1)]
struct DepositedV1 {
    cents: u64,
}

#[derive(Serialize, Deserialize, ::pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account", version = 2, upcast_from = DepositedV1)]
struct Deposited {
    amount: u64,
}

impl From<DepositedV1> for Deposited {
    fn from(old: DepositedV1) -> Self {
        Deposited { amount: old.cents }
    }
}

#[derive(Serialize, Deserialize, ::pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Withdrawn {
    amount: u64,
}

#[::pupsource::aggregate(
    events(Deposited, Withdrawn),
    ignore("Audited", "Frozen"),
    snapshot_every = 50,
    snapshot_version = 3
)]
#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.balance += event.amount;
    }
}

impl Apply<Withdrawn> for Account {
    fn apply(&mut self, event: &Withdrawn) {
        self.balance -= event.amount;
    }
}

/// An enum state without snapshots.
#[::pupsource::aggregate(events(Deposited))]
#[derive(Default)]
enum Opened {
    #[default]
    No,
    Yes,
}

impl Apply<Deposited> for Opened {
    fn apply(&mut self, _: &Deposited) {
        *self = Opened::Yes;
    }
}

fn main() {
    assert_eq!((Account::NAME, Account::CONTEXT, Account::AGGREGATE_TYPE), ("Account", "Banking", "Account"));
    assert_eq!(Account::IGNORED, ["Audited", "Frozen"]);
    let snapshots = Account::SNAPSHOTS.expect("snapshots");
    assert_eq!((snapshots.every().get(), snapshots.version()), (50, 3));
    assert!(Opened::SNAPSHOTS.is_none());

    let mut account = Account::default();
    let old = DepositedV1 { cents: 7 }.to_event("a").expect("event");
    assert_eq!(account.apply_event(&old).expect("upcast"), Dispatch::Applied);
    let new = Withdrawn { amount: 2 }.to_event("a").expect("event");
    assert_eq!(account.apply_event(&new).expect("decoded"), Dispatch::Applied);
    assert_eq!(account.balance, 5);
    let other = ::pupsource::Event::new(&Account::stream("a"), "Audited", serde_json::json!({}));
    assert_eq!(account.apply_event(&other).expect("not decoded"), Dispatch::Unlisted);

    let mut opened = Opened::default();
    opened.apply_event(&old).expect("upcast");
    assert!(matches!(opened, Opened::Yes));

    let _: Vec<Change<Account>> = vec![Deposited { amount: 1 }.into(), Withdrawn { amount: 1 }.into()];
}
