//! The worker pool: one projection split into partitions that share one instance.
//!
//! On first run it creates the database (a SQLite file, `pupsource.db`, unless
//! `DATABASE_URL` says otherwise) and appends a demo workload of users and orders. Then it
//! runs the `counter` projection across `--workers` partitions: each event is counted once in
//! a shared in-memory `AtomicU64` (this process's work) and once in a SQL read model written
//! through the batch's transaction (exactly-once, per partition). It prints a summary whose
//! totals equal the events in the log: run it again, stop it with Ctrl-C, or change
//! `--workers`, and the totals stay exact.
//!
//! ```text
//! cargo run --example counter -- --workers 8
//! cargo run --example counter -- --workers 3 --until-caught-up
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example counter -- --workers 8
//! cargo run --example counter -- status
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use pupsource::projection::Transaction;
use pupsource::runner::Runner;
use pupsource::{
    Context, DomainEvent, Envelope, EventStore, ExpectedVersion, Handle, HandlerResult, Store,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRegistered {
    email: String,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order")]
struct OrderPlaced {
    user_id: String,
    total_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order")]
struct OrderShipped {}

/// Counts events in memory and in SQL. All partitions share this one instance, which the
/// macro checks is `Send + Sync`.
#[pupsource::projection(
    partitions = 4,
    events(UserRegistered, OrderPlaced, OrderShipped),
    reset = Counter::clear
)]
#[derive(Default)]
struct Counter {
    this_run: AtomicU64,
}

const READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS counter_events (
    partition_count INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (partition_count, partition, event_type))";

/// PostgreSQL and SQLite understand these statements.
const COUNT: &str = "INSERT INTO counter_events (partition_count, partition, event_type, events) \
    VALUES ($1, $2, $3, 1) ON CONFLICT (partition_count, partition, event_type) \
    DO UPDATE SET events = counter_events.events + 1";

/// MySQL's: `partition` is a reserved word, placeholders are `?`, upserts are its own.
const MYSQL_READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS counter_events (
    partition_count INTEGER NOT NULL,
    `partition` INTEGER NOT NULL,
    event_type VARCHAR(255) NOT NULL,
    events BIGINT NOT NULL,
    PRIMARY KEY (partition_count, `partition`, event_type))";
const MYSQL_COUNT: &str = "INSERT INTO counter_events \
    (partition_count, `partition`, event_type, events) VALUES (?, ?, ?, 1) \
    ON DUPLICATE KEY UPDATE events = events + 1";

impl Counter {
    async fn count(&self, event_type: &str, cx: &mut Context<'_>) -> HandlerResult {
        let partition = cx.partition();
        let (count, index) = (i64::from(partition.count), i64::from(partition.index));
        let sql = if cx.mysql().is_some() { MYSQL_COUNT } else { COUNT };
        pupsource::with_transaction!(cx.transaction(), |tx| {
            let query = sqlx::query(sql).bind(count).bind(index).bind(event_type);
            query.execute(tx).await.map(|done| done.rows_affected())
        })?;
        self.this_run.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `rebuild counter` clears the read model in the transaction that resets checkpoints.
    async fn clear(&self, transaction: &mut Transaction<'_>) -> HandlerResult {
        // `rebuild` may come before any `run` created the table.
        let ddl = if matches!(transaction, Transaction::MySql(_)) {
            MYSQL_READ_MODEL
        } else {
            READ_MODEL
        };
        pupsource::with_transaction!(&mut *transaction, |tx| {
            let query = sqlx::query(ddl);
            query.execute(tx).await.map(|done| done.rows_affected())
        })?;
        pupsource::with_transaction!(transaction, |tx| {
            let query = sqlx::query("DELETE FROM counter_events");
            query.execute(tx).await.map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

impl Handle<UserRegistered> for Counter {
    async fn handle(&self, _: Envelope<UserRegistered>, cx: &mut Context<'_>) -> HandlerResult {
        self.count(UserRegistered::NAME, cx).await
    }
}

impl Handle<OrderPlaced> for Counter {
    async fn handle(&self, _: Envelope<OrderPlaced>, cx: &mut Context<'_>) -> HandlerResult {
        self.count(OrderPlaced::NAME, cx).await
    }
}

impl Handle<OrderShipped> for Counter {
    async fn handle(&self, _: Envelope<OrderShipped>, cx: &mut Context<'_>) -> HandlerResult {
        self.count(OrderShipped::NAME, cx).await
    }
}

/// Users in the demo workload.
const DEMO_USERS: u64 = 1_000;

/// Appends the demo workload in `tx`, unless the log has events. `tx` holds whatever lock
/// makes that check safe against another process starting at the same moment; a run stopped
/// while seeding leaves nothing behind, and the next run seeds again.
async fn seed<S: EventStore>(
    store: &S,
    tx: &mut sqlx::Transaction<'_, S::Database>,
    log_is_empty: bool,
) -> pupsource::Result<u64> {
    if !log_is_empty {
        return Ok(0);
    }
    let mut appended = 0;
    for u in 0..DEMO_USERS {
        let user = format!("user-{u}");
        let registered = UserRegistered { email: format!("{user}@example.com") }.to_event(&user)?;
        store.append(tx, ExpectedVersion::NoStream, &[registered]).await?;
        appended += 1;
        for o in 0..u % 4 {
            let order = format!("order-{u}-{o}");
            let placed = OrderPlaced { user_id: user.clone(), total_cents: 100 * (o + 1) };
            let mut events = vec![placed.to_event(&order)?];
            if o % 2 == 0 {
                events.push(OrderShipped {}.to_event(&order)?);
            }
            appended += events.len() as u64;
            store.append(tx, ExpectedVersion::NoStream, &events).await?;
        }
    }
    Ok(appended)
}

/// Both databases understand it.
const LOG_IS_EMPTY: &str = "SELECT NOT EXISTS (SELECT 1 FROM events)";

/// Creates the read model and seeds the log, once, however many processes start together.
async fn prepare(runner: Runner) -> Result<(), pupsource::HandlerError> {
    let appended = match runner.store() {
        Store::Postgres(store) => {
            sqlx::query(READ_MODEL).execute(store.pool()).await?;
            let mut tx = store.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('counter example setup'))")
                .execute(&mut *tx)
                .await?;
            let empty = sqlx::query_scalar(LOG_IS_EMPTY).fetch_one(&mut *tx).await?;
            let appended = seed(store, &mut tx, empty).await?;
            tx.commit().await?;
            appended
        }
        Store::Sqlite(store) => {
            sqlx::query(READ_MODEL).execute(store.pool()).await?;
            // `begin` takes the write lock (`BEGIN IMMEDIATE`): one process at a time.
            let mut tx = store.begin().await?;
            let empty = sqlx::query_scalar(LOG_IS_EMPTY).fetch_one(&mut *tx).await?;
            let appended = seed(store, &mut tx, empty).await?;
            tx.commit().await?;
            appended
        }
        Store::MySql(store) => {
            // A named lock of this connection, held across the seed's transaction.
            let mut conn = store.pool().acquire().await?;
            sqlx::query(MYSQL_READ_MODEL).execute(&mut *conn).await?;
            sqlx::query("SELECT GET_LOCK('counter example setup', 60)").execute(&mut *conn).await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let empty: i64 = sqlx::query_scalar(LOG_IS_EMPTY).fetch_one(&mut *tx).await?;
            let appended = seed(store, &mut tx, empty != 0).await?;
            tx.commit().await?;
            sqlx::query("SELECT RELEASE_LOCK('counter example setup')").execute(&mut *conn).await?;
            appended
        }
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    if appended > 0 {
        println!("appended a demo workload of {appended} events");
    }
    Ok(())
}

async fn summary(runner: Runner) -> Result<(), pupsource::HandlerError> {
    let sql = "SELECT CAST(partition_count AS BIGINT), CAST(partition AS BIGINT), \
               CAST(SUM(events) AS BIGINT) FROM counter_events \
               GROUP BY partition_count, partition ORDER BY partition_count, partition";
    let (rows, log): (Vec<(i64, i64, i64)>, i64) = match runner.store() {
        Store::Postgres(store) => (
            sqlx::query_as(sql).fetch_all(store.pool()).await?,
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(store.pool()).await?,
        ),
        Store::Sqlite(store) => (
            sqlx::query_as(sql).fetch_all(store.pool()).await?,
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(store.pool()).await?,
        ),
        Store::MySql(store) => (
            sqlx::query_as(
                "SELECT CAST(partition_count AS SIGNED), CAST(`partition` AS SIGNED), \
                 CAST(SUM(events) AS SIGNED) FROM counter_events \
                 GROUP BY partition_count, `partition` ORDER BY partition_count, `partition`",
            )
            .fetch_all(store.pool())
            .await?,
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(store.pool()).await?,
        ),
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    let current = i64::from(runner.partition_count("counter").unwrap_or(0));
    let this_run = runner.get::<Counter>().map_or(0, |c| c.this_run.load(Ordering::Relaxed));

    println!("partition  events (SQL read model)");
    let mut earlier = 0;
    for &(count, partition, events) in &rows {
        if count == current {
            println!("{:>9}  {events:>8}", format!("{partition}/{count}"));
        } else {
            earlier += events;
        }
    }
    if earlier > 0 {
        println!("{:>9}  {earlier:>8}", "earlier");
    }
    let total: i64 = rows.iter().map(|r| r.2).sum();
    println!("total      {total:>8}");
    println!("log        {log:>8}");
    println!("handled by this process (shared AtomicU64): {this_run}");
    if total == log {
        println!("totals match the log");
    } else {
        println!("not caught up yet: {} events to go", log - total);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    pupsource::cli::App::new().before_run(prepare).after_run(summary).main()
}
