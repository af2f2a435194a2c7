//! Scaling out: the same binary started once, twice, four times, on one machine or many,
//! shares the `scaling` projection's 8 partitions through PostgreSQL leases. No extra
//! service, no flags: each process registers with a heartbeat, takes a fair share of the
//! partitions (`ceil(8 / live processes)`), gives surplus back at a batch boundary, and takes
//! over the partitions of a process that stopped or died.
//!
//! Every applied event is recorded in the SQL read model `scaling_applied` with the worker
//! and the lease epoch it was applied under, in the batch's transaction; the summary printed
//! at exit shows who applied what and checks that no event was applied twice.
//!
//! ```text
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! cargo run --example scaling              # terminal 1: seeds 20,000 events, takes 8 partitions
//! cargo run --example scaling              # terminal 2: 4 partitions each
//! cargo run --example scaling -- status    # owner, epoch and lease of every partition
//! ```
//!
//! Environment: `SCALING_SEED_EVENTS` (default 20,000; appended on first run when the log is
//! empty), `SCALING_HANDLER_DELAY_MS` (default 2: a slow handler, so that the partitions
//! visibly move while there is work). On SQLite the processes of one machine share the
//! partitions the same way, through leases in the database file; on MySQL or MariaDB
//! (`DATABASE_URL=mysql://…`) exactly as on PostgreSQL.

use std::time::Duration;

use pupsource::runner::Runner;
use pupsource::{
    Context, DomainEvent, Envelope, EventStore, ExpectedVersion, Handle, HandlerResult, Store,
};
use serde::{Deserialize, Serialize};

/// A meter reading: the events of one meter share a partition and are applied in order.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Metering", aggregate = "Meter")]
struct MeterRead {
    value: u64,
}

/// Records every applied event with the worker and epoch it was applied under.
#[pupsource::projection(partitions = 8, events(MeterRead), new = Scaling::from_env)]
struct Scaling {
    delay: Duration,
}

impl Scaling {
    fn from_env() -> Self {
        let millis = env_number("SCALING_HANDLER_DELAY_MS", 2);
        Scaling { delay: Duration::from_millis(millis) }
    }
}

/// PostgreSQL and SQLite understand this statement.
const RECORD: &str = "INSERT INTO scaling_applied \
    (global_position, aggregate_id, aggregate_version, partition, owner, epoch) \
    VALUES ($1, $2, $3, $4, $5, $6)";
/// MySQL's: `?` placeholders, and `partition` is a reserved word.
const MYSQL_RECORD: &str = "INSERT INTO scaling_applied \
    (global_position, aggregate_id, aggregate_version, `partition`, owner, epoch) \
    VALUES (?, ?, ?, ?, ?, ?)";

impl Handle<MeterRead> for Scaling {
    async fn handle(&self, event: Envelope<MeterRead>, cx: &mut Context<'_>) -> HandlerResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let (owner, epoch) = match cx.lease() {
            Some(lease) => (lease.owner.to_string(), i64::try_from(lease.epoch)?),
            None => ("this process".to_owned(), 0),
        };
        let version = i64::try_from(event.aggregate_version)?;
        let partition = i64::from(cx.partition().index);
        let record = if cx.mysql().is_some() { MYSQL_RECORD } else { RECORD };
        pupsource::with_transaction!(cx.transaction(), |tx| {
            sqlx::query(record)
                .bind(event.position.global_position)
                .bind(&event.stream.aggregate_id)
                .bind(version)
                .bind(partition)
                .bind(&owner)
                .bind(epoch)
                .execute(tx)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// No primary key on the position: a duplicate would be recorded, and the summary counts it.
const POSTGRES_READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS scaling_applied (
    seq BIGSERIAL PRIMARY KEY, global_position BIGINT NOT NULL, aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL, partition BIGINT NOT NULL, owner TEXT NOT NULL,
    epoch BIGINT NOT NULL)";
const SQLITE_READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS scaling_applied (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, global_position BIGINT NOT NULL,
    aggregate_id TEXT NOT NULL, aggregate_version BIGINT NOT NULL, partition BIGINT NOT NULL,
    owner TEXT NOT NULL, epoch BIGINT NOT NULL)";

const MYSQL_READ_MODEL: &str = "CREATE TABLE IF NOT EXISTS scaling_applied (
    seq BIGINT AUTO_INCREMENT PRIMARY KEY, global_position BIGINT NOT NULL,
    aggregate_id VARCHAR(200) NOT NULL, aggregate_version BIGINT NOT NULL,
    `partition` BIGINT NOT NULL, owner VARCHAR(200) NOT NULL, epoch BIGINT NOT NULL)";

/// Meters in the seeded workload.
const METERS: u64 = 100;

/// Appends the seed workload in one transaction if the log is empty; `tx` holds whatever lock
/// makes that check safe against other processes.
async fn seed<S: EventStore>(
    store: &S,
    tx: &mut sqlx::Transaction<'_, S::Database>,
) -> pupsource::Result<u64> {
    let events = env_number("SCALING_SEED_EVENTS", 20_000);
    let log = store.read_all(pupsource::Position::START, 1, &pupsource::Scope::all()).await?;
    if !log.is_empty() || events == 0 {
        return Ok(0);
    }
    for meter in 0..METERS {
        let readings: Vec<_> = (meter..events)
            .step_by(METERS as usize)
            .map(|value| MeterRead { value }.to_event(format!("meter-{meter}")))
            .collect::<pupsource::Result<_>>()?;
        if !readings.is_empty() {
            store.append(tx, ExpectedVersion::Any, &readings).await?;
        }
    }
    Ok(events)
}

/// Creates the read model and seeds the log, once, however many processes start together.
async fn prepare(runner: Runner) -> Result<(), pupsource::HandlerError> {
    let appended = match runner.store() {
        Store::Postgres(store) => {
            let mut tx = store.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('scaling example setup'))")
                .execute(&mut *tx)
                .await?;
            sqlx::query(POSTGRES_READ_MODEL).execute(&mut *tx).await?;
            let appended = seed(store, &mut tx).await?;
            tx.commit().await?;
            appended
        }
        Store::Sqlite(store) => {
            sqlx::query(SQLITE_READ_MODEL).execute(store.pool()).await?;
            let mut tx = store.begin().await?;
            let appended = seed(store, &mut tx).await?;
            tx.commit().await?;
            appended
        }
        Store::MySql(store) => {
            // A named lock of this connection, held across the seed's transaction.
            let mut conn = store.pool().acquire().await?;
            sqlx::query(MYSQL_READ_MODEL).execute(&mut *conn).await?;
            sqlx::query("SELECT GET_LOCK('scaling example setup', 60)").execute(&mut *conn).await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let appended = seed(store, &mut tx).await?;
            tx.commit().await?;
            sqlx::query("SELECT RELEASE_LOCK('scaling example setup')").execute(&mut *conn).await?;
            appended
        }
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    if appended > 0 {
        println!("appended {appended} meter readings");
    }
    Ok(())
}

/// Who applied how many events, and whether any event was applied twice.
async fn summary(runner: Runner) -> Result<(), pupsource::HandlerError> {
    let per_owner = "SELECT owner, count(*), count(DISTINCT epoch) FROM scaling_applied \
                     GROUP BY owner ORDER BY owner";
    let mysql_per_owner = "SELECT CONVERT(owner USING utf8mb4), count(*), count(DISTINCT epoch) \
                           FROM scaling_applied GROUP BY owner ORDER BY owner";
    let totals = "SELECT count(*), count(DISTINCT global_position) FROM scaling_applied";
    let log = "SELECT count(*) FROM events";
    // (owner, events, epochs) per owner; (rows, distinct positions); events in the log.
    type Counts = (Vec<(String, i64, i64)>, (i64, i64), i64);
    let (owners, (applied, distinct), log): Counts = match runner.store() {
        Store::Postgres(store) => (
            sqlx::query_as(per_owner).fetch_all(store.pool()).await?,
            sqlx::query_as(totals).fetch_one(store.pool()).await?,
            sqlx::query_scalar(log).fetch_one(store.pool()).await?,
        ),
        Store::Sqlite(store) => (
            sqlx::query_as(per_owner).fetch_all(store.pool()).await?,
            sqlx::query_as(totals).fetch_one(store.pool()).await?,
            sqlx::query_scalar(log).fetch_one(store.pool()).await?,
        ),
        Store::MySql(store) => (
            sqlx::query_as(mysql_per_owner).fetch_all(store.pool()).await?,
            sqlx::query_as(totals).fetch_one(store.pool()).await?,
            sqlx::query_scalar(log).fetch_one(store.pool()).await?,
        ),
        other => return Err(format!("no example for {}", other.backend_name()).into()),
    };
    println!("this worker: {}", runner.id());
    for (owner, events, epochs) in owners {
        println!("  {owner}: {events} events under {epochs} epochs");
    }
    println!("log {log}, applied {distinct}, applied twice {}", applied - distinct);
    Ok(())
}

fn main() -> std::process::ExitCode {
    pupsource::cli::App::new().before_run(prepare).after_run(summary).main()
}
