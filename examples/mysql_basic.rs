//! The event store on MySQL or MariaDB: appends in the caller's transaction (committed or
//! rolled back), optimistic concurrency, stream reads, and commit order: an append waits for
//! an older open append to end, so log positions are in commit order and a reader never
//! skips an event that commits late.
//!
//! Needs `DATABASE_URL=mysql://…` (it creates the tables if they do not exist); each run
//! writes new orders, so it can run again on the same database.
//!
//! ```text
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo run --example mysql_basic
//! ```

use std::process::ExitCode;

use pupsource::{Event, EventStore, ExpectedVersion, MySqlStore, Position, Scope, StreamId};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn new_order() -> StreamId {
    StreamId::new("Sales", "Order", uuid::Uuid::now_v7().to_string())
}

async fn run(url: &str) -> Result<(), BoxError> {
    let store = MySqlStore::connect(url).await?;
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
        println!(
            "  v{} {} at position {}: {}",
            event.aggregate_version, event.event_type, event.position, event.payload
        );
    }

    // Commit order. `first` is appended in a transaction that stays open while `second` is
    // appended by another task: that append waits for the first transaction to end, so the
    // second order can never be visible (and be read past) before the first.
    let since = stream.events.last().map_or(Position::START, |e| e.position);
    let (first, second) = (new_order(), new_order());
    let mut older = store.begin().await?;
    let event = Event::new(&first, "OrderPlaced", json!({ "customer": "first" }));
    store.append(&mut older, ExpectedVersion::NoStream, &[event]).await?;
    let writer = store.clone();
    let later = second.clone();
    let waiting = tokio::spawn(async move {
        let event = Event::new(&later, "OrderPlaced", json!({ "customer": "second" }));
        writer.append_and_commit(ExpectedVersion::NoStream, &[event]).await
    });
    let scope = Scope::all().aggregate_types(["Order"]);
    let visible = |log: Vec<pupsource::PersistedEvent>| {
        log.into_iter().filter(|e| e.stream == first || e.stream == second).collect::<Vec<_>>()
    };
    let held = visible(store.read_all(since, 1_000, &scope).await?);
    println!(
        "while the first order's transaction is open, readers see {} of the 2 new orders",
        held.len()
    );
    older.commit().await?;
    waiting.await??;
    let seen = visible(store.read_all(since, 1_000, &scope).await?);
    let order_of =
        |e: &pupsource::PersistedEvent| if e.stream == first { "first" } else { "second" };
    let names: Vec<String> =
        seen.iter().map(|e| format!("{} at {}", order_of(e), e.position)).collect();
    println!("once it committed, readers see: {}", names.join(", "));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("mysql://") || url.starts_with("mariadb://") => url,
        _ => {
            eprintln!(
                "error: mysql_basic needs DATABASE_URL=mysql://user:password@host:port/database, \
                 e.g. mysql://root@127.0.0.1:3306/test"
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
