//! Static partition assignment: the same binary started N times, each process handling only
//! the events of its partition, with no coordination service.
//!
//! `--partition-key K --total-partitions N` runs partition K of N of the `partitioned_events`
//! projection. Events go to partition `partition_of(partition_hash(aggregate_id), N)`, so all
//! events of one account land in the same process, in order, and the N processes together
//! handle every event exactly once. On PostgreSQL each process also leases its partition, so
//! two processes given the same key never both handle it.
//!
//! On first run the example appends a demo workload of bank accounts (once, however many
//! processes start at the same time). Each event is counted in a SQL read model written in the
//! batch's transaction. The summary compares the count of this process's partition with the
//! events of the log that belong to it.
//!
//! ```text
//! # three terminals (or one after the other): a SQLite file, `pupsource.db`
//! cargo run --example partitioned -- --partition-key 0 --total-partitions 3 --until-caught-up
//! cargo run --example partitioned -- --partition-key 1 --total-partitions 3 --until-caught-up
//! cargo run --example partitioned -- --partition-key 2 --total-partitions 3 --until-caught-up
//!
//! # PostgreSQL: the same three commands, with the database in the environment
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --example partitioned -- --partition-key 0 --total-partitions 3 --until-caught-up
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use pupsource::partition::{partition_hash, partition_of};
use pupsource::projection::{Lease, Transaction};
use pupsource::runner::Runner;
use pupsource::{
    Context, DomainEvent, EventStore, ExpectedVersion, HandleRaw, HandlerError, HandlerResult,
    PersistedEvent, Store,
};
use serde::{Deserialize, Serialize};

/// An account's first event.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct AccountOpened {
    owner: String,
}

/// Money paid into an account.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct MoneyDeposited {
    cents: u64,
}

/// Money taken out of an account.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct MoneyWithdrawn {
    cents: u64,
}

/// The projection's name, as the macro derives it from the struct.
const NAME: &str = "partitioned_events";

/// Counts every event of the log per partition, in SQL; remembers what this process did.
#[pupsource::projection(partitions = 3, reset = PartitionedEvents::clear)]
#[derive(Default)]
struct PartitionedEvents {
    /// Events handled by this process in this run.
    this_run: AtomicU64,
    /// The lease of the first batch handled.
    lease: OnceLock<Lease>,
}

/// The read model: events per partition, for each partition count run so far.
const READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS partitioned_events (
    partition_count INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (partition_count, partition))";

/// Both databases understand this statement.
const COUNT: &str = "INSERT INTO partitioned_events (partition_count, partition, events) \
    VALUES ($1, $2, 1) ON CONFLICT (partition_count, partition) \
    DO UPDATE SET events = partitioned_events.events + 1";

impl HandleRaw for PartitionedEvents {
    async fn handle(&self, _: &PersistedEvent, cx: &mut Context<'_>) -> HandlerResult {
        if let Some(lease) = cx.lease() {
            let _ = self.lease.set(lease.clone());
        }
        let partition = cx.partition();
        let (count, index) = (i64::from(partition.count), i64::from(partition.index));
        pupsource::with_transaction!(cx.transaction(), |tx| {
            let query = sqlx::query(COUNT).bind(count).bind(index);
            query.execute(tx).await.map(|done| done.rows_affected())
        })?;
        self.this_run.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl PartitionedEvents {
    /// `rebuild partitioned_events` clears the read model with the checkpoints.
    async fn clear(&self, transaction: &mut Transaction<'_>) -> HandlerResult {
        pupsource::with_transaction!(transaction, |tx| {
            let query = sqlx::query("DELETE FROM partitioned_events");
            query.execute(tx).await.map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

/// Accounts in the demo workload.
const DEMO_ACCOUNTS: u64 = 500;

/// Whether the log has an event; asked inside the seeding transaction.
const ANY_EVENT: &str = "SELECT count(*) FROM (SELECT 1 FROM events LIMIT 1) AS head";

/// Serializes the processes that start together on PostgreSQL, in the seeding transaction.
const SEED_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('pupsource example partitioned'))";

/// Appends the demo workload in the caller's transaction: each account opened, then a few
/// deposits, and a withdrawal for every third one.
async fn seed<S: EventStore>(
    store: &S,
    tx: &mut sqlx::Transaction<'static, S::Database>,
) -> pupsource::Result<u64> {
    let mut appended = 0;
    for a in 0..DEMO_ACCOUNTS {
        let account = format!("account-{a}");
        let mut events = vec![AccountOpened { owner: format!("owner-{a}") }.to_event(&account)?];
        for d in 0..a % 5 {
            events.push(MoneyDeposited { cents: 1_000 * (d + 1) }.to_event(&account)?);
        }
        if a % 3 == 0 {
            events.push(MoneyWithdrawn { cents: 500 }.to_event(&account)?);
        }
        appended += events.len() as u64;
        store.append(tx, ExpectedVersion::NoStream, &events).await?;
    }
    Ok(appended)
}

/// Creates the read model and seeds an empty log. Both happen in one transaction that holds
/// the writers' lock (`BEGIN IMMEDIATE` on SQLite, an advisory lock on PostgreSQL), so of the
/// processes started together exactly one seeds, and the others find the log filled.
async fn prepare(runner: Runner) -> Result<(), HandlerError> {
    let appended = match runner.store() {
        Store::Postgres(store) => {
            let mut tx = store.begin().await?;
            sqlx::query(SEED_LOCK).execute(&mut *tx).await?;
            sqlx::query(READ_MODEL).execute(&mut *tx).await?;
            let any: i64 = sqlx::query_scalar(ANY_EVENT).fetch_one(&mut *tx).await?;
            let appended = if any == 0 { seed(store, &mut tx).await? } else { 0 };
            tx.commit().await?;
            appended
        }
        Store::Sqlite(store) => {
            let mut tx = store.begin().await?;
            sqlx::query(READ_MODEL).execute(&mut *tx).await?;
            let any: i64 = sqlx::query_scalar(ANY_EVENT).fetch_one(&mut *tx).await?;
            let appended = if any == 0 { seed(store, &mut tx).await? } else { 0 };
            tx.commit().await?;
            appended
        }
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    if appended > 0 {
        println!("appended a demo workload of {appended} events");
    }
    Ok(())
}

/// Prints what this process handled, and checks each of its partitions against the log.
async fn summary(runner: Runner) -> Result<(), HandlerError> {
    let Some(count) = runner.partition_count(NAME) else { return Ok(()) };
    let ours = runner.get::<PartitionedEvents>();
    let read_model = "SELECT CAST(partition AS BIGINT), events FROM partitioned_events \
                      WHERE partition_count = $1";
    let per_aggregate = "SELECT aggregate_id, count(*) FROM events GROUP BY aggregate_id";
    // Partition and events; aggregate id and events. The log is counted in SQL, not read
    // through the store, whose reads PostgreSQL fences at the oldest transaction in flight.
    let counted: Vec<(i64, i64)>;
    let log: Vec<(String, i64)>;
    match runner.store() {
        Store::Postgres(store) => {
            let query = sqlx::query_as(read_model).bind(i64::from(count));
            counted = query.fetch_all(store.pool()).await?;
            log = sqlx::query_as(per_aggregate).fetch_all(store.pool()).await?;
        }
        Store::Sqlite(store) => {
            let query = sqlx::query_as(read_model).bind(i64::from(count));
            counted = query.fetch_all(store.pool()).await?;
            log = sqlx::query_as(per_aggregate).fetch_all(store.pool()).await?;
        }
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    }

    let partitions = match runner.assignment() {
        Some(assigned) => {
            println!("this process ran partition {assigned} (static assignment)");
            assigned.index..assigned.index + 1
        }
        None => {
            println!("no --partition-key: checking all {count} partitions");
            0..count
        }
    };
    if let Some(lease) = ours.as_ref().and_then(|p| p.lease.get()) {
        println!("leased by worker {} (epoch {})", lease.owner, lease.epoch);
    }
    let handled = ours.map_or(0, |p| p.this_run.load(Ordering::Relaxed));
    println!("handled by this process: {handled} events");
    for partition in partitions {
        let in_read_model: i64 = counted
            .iter()
            .filter(|(p, _)| *p == i64::from(partition))
            .map(|(_, events)| events)
            .sum();
        let in_log: i64 = log
            .iter()
            .filter(|(id, _)| partition_of(partition_hash(id), count) == partition)
            .map(|(_, events)| events)
            .sum();
        let name = format!("partition {partition}/{count}");
        println!("{name}: {in_read_model} events in the read model, {in_log} in the log");
        if in_read_model == in_log {
            println!("{name} matches the log");
        } else {
            println!("{name}: {} events to go", in_log - in_read_model);
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    pupsource::cli::App::new().before_run(prepare).after_run(summary).main()
}
