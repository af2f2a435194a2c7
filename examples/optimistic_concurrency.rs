//! Optimistic concurrency in a command handler: concurrent withdrawals from one bank account,
//! each of which loads the account's stream, checks the balance, and appends at the version it
//! loaded; a writer that lost the race gets `Error::Concurrency`, reloads and decides again.
//! No withdrawal is lost or applied twice, and the balance can never go below zero.
//!
//! The same workload runs twice: first with the loop written by hand (fold, decide, append,
//! retry), then with `#[pupsource::aggregate]` and `Store::execute`, which do all of that
//! (with bounded retries) given the `Apply` impls and the decision alone.
//!
//! `TASKS` tasks (default 8) each withdraw `WITHDRAWALS` times (default 25) at once, from an
//! account opened with enough money for all of them; the final balance is then checked
//! against the expected one. On an in-memory SQLite database by default, or `DATABASE_URL`.
//!
//! ```text
//! cargo run --example optimistic_concurrency
//! cargo run --example optimistic_concurrency -- 16 50
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example optimistic_concurrency
//! ```

use pupsource::aggregate::{Apply, Change, ExecuteError};
use pupsource::{DomainEvent, ExpectedVersion, PersistedEvent, Store};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct AccountOpened {
    initial_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct MoneyWithdrawn {
    amount_cents: u64,
}

/// Each withdrawal takes this much.
const AMOUNT_CENTS: u64 = 10;
/// What is left once every withdrawal went through.
const RESERVE_CENTS: u64 = 1_000;

/// The account as its history says it is.
#[derive(Debug, Default)]
struct Account {
    balance_cents: u64,
    /// The stream version the state was loaded at: the version the next append expects.
    version: u64,
}

impl Account {
    fn apply(&mut self, event: &PersistedEvent) -> Result<(), BoxError> {
        if AccountOpened::matches(event) {
            self.balance_cents = AccountOpened::decode(event)?.initial_cents;
        } else if MoneyWithdrawn::matches(event) {
            let amount = MoneyWithdrawn::decode(event)?.amount_cents;
            self.balance_cents =
                self.balance_cents.checked_sub(amount).ok_or("the history overdraws")?;
        }
        self.version = event.aggregate_version;
        Ok(())
    }

    async fn load(store: &Store, id: &str) -> Result<Account, BoxError> {
        let mut account = Account::default();
        for event in &store.read_stream(&AccountOpened::stream(id), ..).await?.events {
            account.apply(event)?;
        }
        Ok(account)
    }
}

enum Withdrawal {
    Done { conflicts: u64 },
    Refused { balance_cents: u64 },
}

/// The command handler: decides on the state it loaded, and appends only if that state is
/// still current.
async fn withdraw(store: &Store, id: &str, amount_cents: u64) -> Result<Withdrawal, BoxError> {
    let mut conflicts = 0;
    loop {
        let account = Account::load(store, id).await?;
        if account.balance_cents < amount_cents {
            return Ok(Withdrawal::Refused { balance_cents: account.balance_cents });
        }
        let event = MoneyWithdrawn { amount_cents }.to_event(id)?;
        match store.append_and_commit(ExpectedVersion::Exact(account.version), &[event]).await {
            Ok(_) => return Ok(Withdrawal::Done { conflicts }),
            // Another withdrawal got in first: the balance checked above is out of date.
            // Each conflict means someone else succeeded, so the retries cannot go on forever.
            Err(pupsource::Error::Concurrency { .. }) => conflicts += 1,
            Err(err) => return Err(err.into()),
        }
    }
}

/// The same account as an aggregate: the fold is one `Apply` impl per event, and `execute`
/// writes the load, the append at the loaded version and the retries.
#[derive(Debug, Default)]
#[pupsource::aggregate(events(AccountOpened, MoneyWithdrawn))]
struct AccountState {
    balance_cents: u64,
}

impl Apply<AccountOpened> for AccountState {
    fn apply(&mut self, event: &AccountOpened) {
        self.balance_cents = event.initial_cents;
    }
}

impl Apply<MoneyWithdrawn> for AccountState {
    fn apply(&mut self, event: &MoneyWithdrawn) {
        self.balance_cents = self.balance_cents.saturating_sub(event.amount_cents);
    }
}

/// The refusal of a withdrawal, the decision's own error.
#[derive(Debug)]
struct InsufficientFunds {
    balance_cents: u64,
}

/// The decision: no side effects, `execute` may run it more than once.
fn decide_withdrawal(
    account: &AccountState,
    amount_cents: u64,
) -> Result<Vec<Change<AccountState>>, InsufficientFunds> {
    if account.balance_cents < amount_cents {
        return Err(InsufficientFunds { balance_cents: account.balance_cents });
    }
    Ok(vec![MoneyWithdrawn { amount_cents }.into()])
}

/// The same workload through `execute`, on another account.
async fn with_execute(store: &Store, tasks: u64, per_task: u64) -> Result<(), BoxError> {
    let id = uuid::Uuid::now_v7().to_string();
    let initial_cents = tasks * per_task * AMOUNT_CENTS + RESERVE_CENTS;
    let opened = AccountOpened { initial_cents }.to_event(&id)?;
    store.append_and_commit(ExpectedVersion::NoStream, &[opened]).await?;

    let mut running = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (store, id) = (store.clone(), id.clone());
        running.spawn(async move {
            let mut attempts = 0;
            for _ in 0..per_task {
                let done = store
                    .execute(&id, |account: &AccountState| decide_withdrawal(account, AMOUNT_CENTS))
                    .await
                    .map_err(|err| format!("{err:?}"))?;
                attempts += u64::from(done.attempts);
            }
            Ok::<u64, BoxError>(attempts)
        });
    }
    let mut attempts = 0;
    while let Some(task) = running.join_next().await {
        attempts += task??;
    }
    let account = store.load::<AccountState>(&id).await?;
    let expected = initial_cents - tasks * per_task * AMOUNT_CENTS;
    println!(
        "with execute: final balance {} cents (expected {expected}), stream version {}, \
         {attempts} attempts",
        account.state.balance_cents, account.version
    );
    let too_much = account.state.balance_cents + 1;
    match store.execute(&id, |a: &AccountState| decide_withdrawal(a, too_much)).await {
        Err(ExecuteError::Rejected(InsufficientFunds { balance_cents })) => {
            println!(
                "with execute, withdrawing {too_much} cents: refused, the balance is {balance_cents}"
            );
        }
        other => return Err(format!("an overdraft was not refused: {other:?}").into()),
    }
    if account.state.balance_cents != expected {
        return Err("the final balance is wrong".into());
    }
    Ok(())
}

fn arg(position: usize, default: u64) -> Result<u64, BoxError> {
    match std::env::args().nth(position) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| format!("`{text}` is not a count").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (tasks, per_task) = (arg(1, 8)?, arg(2, 25)?);
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    let id = uuid::Uuid::now_v7().to_string();
    let initial_cents = tasks * per_task * AMOUNT_CENTS + RESERVE_CENTS;
    let opened = AccountOpened { initial_cents }.to_event(&id)?;
    store.append_and_commit(ExpectedVersion::NoStream, &[opened]).await?;
    println!("opened account {id} with {initial_cents} cents");
    println!("{tasks} tasks withdraw {per_task} times {AMOUNT_CENTS} cents each, concurrently");

    let mut running = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (store, id) = (store.clone(), id.clone());
        running.spawn(async move {
            let mut conflicts = 0;
            for _ in 0..per_task {
                match withdraw(&store, &id, AMOUNT_CENTS).await? {
                    Withdrawal::Done { conflicts: c } => conflicts += c,
                    Withdrawal::Refused { .. } => return Err("refused: funds were planned".into()),
                }
            }
            Ok::<u64, BoxError>(conflicts)
        });
    }
    let mut conflicts = 0;
    while let Some(task) = running.join_next().await {
        conflicts += task??;
    }

    let account = Account::load(&store, &id).await?;
    let expected = initial_cents - tasks * per_task * AMOUNT_CENTS;
    println!(
        "final balance {} cents (expected {expected}), stream version {}, {conflicts} conflicts \
         retried",
        account.balance_cents, account.version
    );
    let too_much = account.balance_cents + 1;
    match withdraw(&store, &id, too_much).await? {
        Withdrawal::Refused { balance_cents } => {
            println!("withdrawing {too_much} cents: refused, the balance is {balance_cents}");
        }
        Withdrawal::Done { .. } => return Err("an overdraft went through".into()),
    }
    if account.balance_cents != expected {
        return Err("the final balance is wrong".into());
    }
    with_execute(&store, tasks, per_task).await
}
