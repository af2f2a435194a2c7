use pupsource::aggregate::Apply;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Deposited {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Loan")]
struct LoanGranted {}

#[derive(Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Lending", aggregate = "Account")]
struct RateChanged {}

#[pupsource::aggregate(events(Deposited, LoanGranted, RateChanged))]
#[derive(Default)]
struct Account;

impl Apply<Deposited> for Account {
    fn apply(&mut self, _: &Deposited) {}
}

impl Apply<LoanGranted> for Account {
    fn apply(&mut self, _: &LoanGranted) {}
}

impl Apply<RateChanged> for Account {
    fn apply(&mut self, _: &RateChanged) {}
}

fn main() {}
