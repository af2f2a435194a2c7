//! The event store on PostgreSQL: appends in the caller's transaction (committed or rolled
//! back), optimistic concurrency, stream reads, and the read fence that keeps a reader from
//! ever skipping an event whose transaction commits late.
//!
//! Needs `DATABASE_URL=postgres://…` (it creates the tables if they do not exist); each run
//! writes new orders, so it can run again on the same database.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example postgres_basic
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pupsource::{
    Event, EventStore, ExpectedVersion, PersistedEvent, Position, PostgresStore, Scope, StreamId,
};
use serde_json::json;

type BoxError = Box<dyn std::error::Error>;

fn new_order() -> StreamId {
    StreamId::new("Sales", "Order", uuid::Uuid::now_v7().to_string())
}

/// The events of `streams` that a reader sees after `after`.
async fn visible(
    store: &PostgresStore,
    after: Position,
    streams: &[&StreamId],
) -> pupsource::Result<Vec<PersistedEvent>> {
    let log = store.read_all(after, 1_000, &Scope::all().aggregate_types(["Order"])).await?;
    Ok(log.into_iter().filter(|e| streams.contains(&&e.stream)).collect())
}

/// Reads until `count` events of `streams` are visible: a transaction of another session on
/// the server, older than ours, holds readers back until it ends.
async fn wait_until_visible(
    store: &PostgresStore,
    after: Position,
    streams: &[&StreamId],
    count: usize,
) -> Result<Vec<PersistedEvent>, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = visible(store, after, streams).await?;
        if seen.len() >= count {
            return Ok(seen);
        }
        if Instant::now() > deadline {
            return Err("an older transaction on the server has held readers back for 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run(url: &str) -> Result<(), BoxError> {
    let store = PostgresStore::connect(url).await?;
    store.migrate().await?;

    // The caller owns the transaction: both appends, and whatever else the application
    // writes in it, commit together.
    let order = new_order();
    let mut tx = store.begin().await?;
    let placed = Event::new(&order, "OrderPlaced", json!({ "customer": "ada" }));
    store.append(&mut tx, ExpectedVersion::NoStream, &[placed]).await?;
    let items = [
        Event::new(&order, "ItemAdded", json!({ "sku": "WIDGET-001", "quantity": 2 })),
        Event::new(&order, "ItemAdded", json!({ "sku": "GADGET-001", "quantity": 1 })),
    ];
    let appended = store.append(&mut tx, ExpectedVersion::Exact(1), &items).await?;
    tx.commit().await?;
    println!("appended to {order} in one transaction: versions 1..={}", appended.to_version);

    // Rolled back: nothing of it is stored.
    let mut tx = store.begin().await?;
    let cancelled = Event::new(&order, "OrderCancelled", json!({}));
    store.append(&mut tx, ExpectedVersion::Exact(appended.to_version), &[cancelled]).await?;
    tx.rollback().await?;
    let version = store.read_stream(&order, ..).await?.version();
    println!("rolled back an append: {order} is still at version {version}");

    let stale = Event::new(&order, "OrderCancelled", json!({}));
    match store.append_and_commit(ExpectedVersion::Exact(1), &[stale]).await {
        Err(pupsource::Error::Concurrency { expected, actual, .. }) => {
            println!(
                "refused a stale writer: it expected {expected}, the stream is at version {actual}"
            );
        }
        other => return Err(format!("expected a concurrency conflict, got {other:?}").into()),
    }

    let stream = store.read_stream(&order, ..).await?;
    println!("stream {order} is at version {} with {} events:", stream.version(), stream.len());
    for event in &stream.events {
        // A position is `global_position@transaction_id`: the log is in transaction order.
        println!(
            "  v{} {} at position {}: {}",
            event.aggregate_version, event.event_type, event.position, event.payload
        );
    }

    // The read fence. `first` is appended in a transaction that stays open while `second` is
    // appended and committed. A reader that took `second` now and moved its checkpoint past
    // it would skip `first` for good; so readers see neither until `first`'s transaction ends.
    let since = stream.events.last().map_or(Position::START, |e| e.position);
    let (first, second) = (new_order(), new_order());
    let mut older = store.begin().await?;
    let event = Event::new(&first, "OrderPlaced", json!({ "customer": "first" }));
    store.append(&mut older, ExpectedVersion::NoStream, &[event]).await?;
    let event = Event::new(&second, "OrderPlaced", json!({ "customer": "second" }));
    store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
    let held = visible(&store, since, &[&first, &second]).await?;
    println!(
        "while the first order's transaction is open, readers see {} of the 2 new orders",
        held.len()
    );
    older.commit().await?;
    let seen = wait_until_visible(&store, since, &[&first, &second], 2).await?;
    let order_of = |e: &PersistedEvent| if e.stream == first { "first" } else { "second" };
    let names: Vec<String> =
        seen.iter().map(|e| format!("{} at {}", order_of(e), e.position)).collect();
    println!("once it committed, readers see: {}", names.join(", "));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
        _ => {
            eprintln!(
                "error: postgres_basic needs DATABASE_URL=postgres://user@host:port/database, \
                 e.g. postgres://postgres@127.0.0.1:5432/test"
            );
            return ExitCode::from(2);
        }
    };
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
