//! The command side and the read side of one domain: bank accounts as an aggregate
//! (`#[pupsource::aggregate]`, with snapshots), changed by commands through `execute` (which
//! retries on conflicts), a transfer that changes two accounts in one transaction, and a
//! projection that reads the same events into a table of balances.
//!
//! `TASKS` tasks (default 8) each run `COMMANDS` commands (default 40) at once against a few
//! accounts: deposits, and withdrawals that the decision refuses when the balance is too low.
//! At the end, every account is loaded (from its newest snapshot plus the events after it)
//! and compared with the projection's balance and with the sum of the commands that went
//! through. On an in-memory SQLite database by default, or `DATABASE_URL`.
//!
//! ```text
//! cargo run --example bank_account
//! cargo run --example bank_account -- 16 100
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example bank_account
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pupsource::aggregate::{AggregateStore, Apply, Change, ExecuteError, Retry};
use pupsource::{Context, Envelope, Handle, HandlerResult, Runner, Store};
use serde::{Deserialize, Serialize};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ----- Events -------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct AccountOpened {
    owner: String,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct MoneyDeposited {
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct MoneyWithdrawn {
    amount_cents: u64,
}

// ----- The aggregate ------------------------------------------------------------------------

/// An account as its history says it is. A snapshot is stored every 10 versions, so a load
/// reads at most the events since the last one.
#[derive(Debug, Default, Serialize, Deserialize)]
#[pupsource::aggregate(
    events(AccountOpened, MoneyDeposited, MoneyWithdrawn),
    snapshot_every = 10,
    snapshot_version = 1
)]
struct Account {
    owner: Option<String>,
    balance_cents: u64,
}

impl Apply<AccountOpened> for Account {
    fn apply(&mut self, event: &AccountOpened) {
        self.owner = Some(event.owner.clone());
    }
}

impl Apply<MoneyDeposited> for Account {
    fn apply(&mut self, event: &MoneyDeposited) {
        self.balance_cents += event.amount_cents;
    }
}

impl Apply<MoneyWithdrawn> for Account {
    fn apply(&mut self, event: &MoneyWithdrawn) {
        // The decision never withdraws more than the balance.
        self.balance_cents = self.balance_cents.saturating_sub(event.amount_cents);
    }
}

// ----- Commands: decisions without side effects ---------------------------------------------

#[derive(Debug)]
enum Refused {
    AlreadyOpen,
    NotOpen,
    InsufficientFunds { balance_cents: u64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::AlreadyOpen => f.write_str("the account is open already"),
            Refused::NotOpen => f.write_str("the account is not open"),
            Refused::InsufficientFunds { balance_cents } => {
                write!(f, "insufficient funds: the balance is {balance_cents} cents")
            }
        }
    }
}

impl std::error::Error for Refused {}

type Decision = Result<Vec<Change<Account>>, Refused>;

impl Account {
    fn open(&self, owner: &str) -> Decision {
        match self.owner {
            Some(_) => Err(Refused::AlreadyOpen),
            None => Ok(vec![AccountOpened { owner: owner.to_owned() }.into()]),
        }
    }

    fn deposit(&self, amount_cents: u64) -> Decision {
        self.owner.as_ref().ok_or(Refused::NotOpen)?;
        Ok(vec![MoneyDeposited { amount_cents }.into()])
    }

    fn withdraw(&self, amount_cents: u64) -> Decision {
        self.owner.as_ref().ok_or(Refused::NotOpen)?;
        if self.balance_cents < amount_cents {
            return Err(Refused::InsufficientFunds { balance_cents: self.balance_cents });
        }
        Ok(vec![MoneyWithdrawn { amount_cents }.into()])
    }
}

/// Moves money between two accounts in one transaction: both appends commit, or neither.
async fn transfer<S: AggregateStore>(
    store: &S,
    from: &str,
    to: &str,
    amount_cents: u64,
) -> Result<(), ExecuteError<Refused>> {
    let mut tx = store.begin().await?;
    store
        .execute_in(&mut tx, from, Retry::default(), |a: &Account| a.withdraw(amount_cents))
        .await?;
    store.execute_in(&mut tx, to, Retry::default(), |a: &Account| a.deposit(amount_cents)).await?;
    tx.commit().await.map_err(|e| ExecuteError::Store(e.into()))?;
    Ok(())
}

// ----- The read side ------------------------------------------------------------------------

/// Every account's balance, from the same events.
#[pupsource::projection(events(AccountOpened, MoneyDeposited, MoneyWithdrawn))]
#[derive(Default)]
struct Balances {
    cents: Mutex<BTreeMap<String, i64>>,
}

impl Balances {
    fn add(&self, account: &str, cents: i64) -> HandlerResult {
        let mut balances = self.cents.lock().map_err(|_| "balances lock poisoned")?;
        *balances.entry(account.to_owned()).or_default() += cents;
        Ok(())
    }
}

impl Handle<AccountOpened> for Balances {
    async fn handle(&self, event: Envelope<AccountOpened>, _: &mut Context<'_>) -> HandlerResult {
        self.add(&event.stream.aggregate_id, 0)
    }
}

impl Handle<MoneyDeposited> for Balances {
    async fn handle(&self, event: Envelope<MoneyDeposited>, _: &mut Context<'_>) -> HandlerResult {
        self.add(&event.stream.aggregate_id, i64::try_from(event.amount_cents)?)
    }
}

impl Handle<MoneyWithdrawn> for Balances {
    async fn handle(&self, event: Envelope<MoneyWithdrawn>, _: &mut Context<'_>) -> HandlerResult {
        self.add(&event.stream.aggregate_id, -i64::try_from(event.amount_cents)?)
    }
}

// ----- The run ------------------------------------------------------------------------------

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
const OPENING_CENTS: u64 = 500;

fn arg(position: usize, default: u64) -> Result<u64, BoxError> {
    match std::env::args().nth(position) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| format!("`{text}` is not a count").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (tasks, commands) = (arg(1, 8)?, arg(2, 40)?);
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let id = |name: &str| format!("{name}-{run}");

    for name in ACCOUNTS {
        store.execute(&id(name), |a: &Account| a.open(name)).await?;
        store.execute(&id(name), |a: &Account| a.deposit(OPENING_CENTS)).await?;
    }
    let refused = store.execute(&id("alice"), |a: &Account| a.open("mallory")).await;
    println!(
        "opening alice's account again: {}",
        refused.err().map_or("done".into(), |e| e.to_string())
    );

    // Concurrent commands: each task deposits and withdraws on every account in turn.
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let (store, ids) = (store.clone(), ACCOUNTS.map(id));
        running.spawn(async move {
            let (mut moved, mut refused, mut attempts) = (BTreeMap::new(), 0u64, 0u64);
            for command in 0..commands {
                let account = &ids[usize::try_from((task + command) % 3)?];
                let amount = 10 + (task * 7 + command * 13) % 90;
                let result = if command % 3 == 2 {
                    store
                        .execute(account, |a: &Account| a.withdraw(amount * 6))
                        .await
                        .map(|done| (done, -6))
                } else {
                    store
                        .execute(account, |a: &Account| a.deposit(amount))
                        .await
                        .map(|done| (done, 1))
                };
                match result {
                    Ok((done, sign)) => {
                        attempts += u64::from(done.attempts);
                        *moved.entry(account.clone()).or_insert(0i64) +=
                            sign * i64::try_from(amount)?;
                    }
                    Err(ExecuteError::Rejected(Refused::InsufficientFunds { .. })) => refused += 1,
                    Err(err) => return Err(BoxError::from(err.to_string())),
                }
            }
            Ok::<_, BoxError>((moved, refused, attempts))
        });
    }
    let mut expected: BTreeMap<String, i64> =
        ACCOUNTS.iter().map(|name| (id(name), i64::try_from(OPENING_CENTS).unwrap_or(0))).collect();
    let (mut refused, mut attempts) = (0, 0);
    while let Some(task) = running.join_next().await {
        let (moved, task_refused, task_attempts) = task??;
        for (account, cents) in moved {
            *expected.entry(account).or_default() += cents;
        }
        refused += task_refused;
        attempts += task_attempts;
    }
    println!(
        "{} commands: {} applied in {attempts} attempts (conflicts decided again), {refused} refused",
        tasks * commands,
        tasks * commands - refused
    );

    // A transfer: two streams, one transaction.
    let transfer_cents = 25;
    let transferred = match &store {
        Store::Postgres(s) => transfer(s, &id("alice"), &id("bob"), transfer_cents).await,
        Store::Sqlite(s) => transfer(s, &id("alice"), &id("bob"), transfer_cents).await,
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    match transferred {
        Ok(()) => {
            *expected.entry(id("alice")).or_default() -= i64::try_from(transfer_cents)?;
            *expected.entry(id("bob")).or_default() += i64::try_from(transfer_cents)?;
            println!("transferred {transfer_cents} cents from alice to bob");
        }
        Err(err) => println!("transfer refused: {err}"),
    }

    // The read side catches up on the same events.
    let balances = Arc::new(Balances::default());
    Runner::new(store.clone()).projection(balances.clone()).until_caught_up().run().await?;
    let projected = balances.cents.lock().map_err(|_| "balances lock poisoned")?.clone();

    let mut consistent = true;
    for name in ACCOUNTS {
        let loaded = store.load::<Account>(&id(name)).await?;
        let snapshot = loaded.snapshot.map_or("none".into(), |v| format!("version {v}"));
        let balance = i64::try_from(loaded.state.balance_cents)?;
        let (want, seen) = (expected[&id(name)], projected.get(&id(name)).copied().unwrap_or(0));
        println!(
            "{name}: balance {balance} cents at version {} (snapshot {snapshot}, {} events folded after it); projection {seen}; expected {want}",
            loaded.version, loaded.folded
        );
        consistent &= balance == want && seen == want;
    }
    if !consistent {
        return Err("the aggregates, the projection and the commands disagree".into());
    }
    println!("aggregates, projection and commands agree");
    Ok(())
}
