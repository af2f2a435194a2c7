//! The event store on a SQLite file you choose: appends with optimistic concurrency, a stream
//! read whole and by version range, the global log read page by page, a stale writer
//! refused, and the file reopened.
//!
//! With a path, the file is created if missing and kept: each run appends a new order, so the
//! log grows from run to run. Without one, the file lives in a temporary directory that is
//! deleted at exit. No server is needed; SQLite is compiled in.
//!
//! ```text
//! cargo run --example sqlite_basic -- orders.db
//! cargo run --example sqlite_basic
//! ```

use std::path::PathBuf;

use pupsource::{Event, EventStore, ExpectedVersion, Position, Scope, SqliteStore, StreamId};
use serde_json::json;

/// Reads the whole log in `scope` page by page, as a reader catching up would; returns the
/// number of events and of pages.
async fn count(store: &SqliteStore, scope: &Scope) -> pupsource::Result<(usize, usize)> {
    const PAGE: usize = 2;
    let (mut after, mut events, mut pages) = (Position::START, 0, 0);
    loop {
        let page = store.read_all(after, PAGE, scope).await?;
        // Each page starts after the last position of the previous one.
        let Some(last) = page.last() else { return Ok((events, pages)) };
        after = last.position;
        events += page.len();
        pages += 1;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Dropping the temporary directory deletes it: it lives as long as `main`.
    let mut temporary = None;
    let path = match std::env::args_os().nth(1) {
        Some(path) => PathBuf::from(path),
        None => temporary.insert(tempfile::tempdir()?).path().join("events.db"),
    };
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url).await?;
    store.migrate().await?;
    println!("event store: {}", path.display());

    let order = StreamId::new("Sales", "Order", uuid::Uuid::now_v7().to_string());
    // The caller owns the transaction: whatever else the application writes in it commits
    // (or rolls back) together with the events.
    let mut tx = store.begin().await?;
    let placed = Event::new(&order, "OrderPlaced", json!({ "customer": "ada" }));
    let first = store.append(&mut tx, ExpectedVersion::NoStream, &[placed]).await?;
    tx.commit().await?;
    // Two events in one append: one statement, both or neither.
    let items = [
        Event::new(&order, "ItemAdded", json!({ "sku": "WIDGET-001", "quantity": 2 })),
        Event::new(&order, "ItemAdded", json!({ "sku": "GADGET-001", "quantity": 1 })),
    ];
    let expected = ExpectedVersion::Exact(first.to_version);
    let second = store.append_and_commit(expected, &items).await?;
    println!("appended to {order}: versions {}..={}", first.from_version, second.to_version);

    // A writer that loaded the order before the items were added is refused, and writes
    // nothing: it must reload the order and decide again.
    let stale = Event::new(&order, "OrderCancelled", json!({}));
    match store.append_and_commit(ExpectedVersion::Exact(first.to_version), &[stale]).await {
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
    let range = store.read_stream(&order, 2..=3).await?;
    let types: Vec<&str> = range.events.iter().map(|e| e.event_type.as_str()).collect();
    println!("versions 2..=3: {}", types.join(", "));

    let (events, pages) = count(&store, &Scope::all()).await?;
    println!("the log holds {events} events (read in {pages} pages)");
    let (items, _) = count(&store, &Scope::all().event_types(["ItemAdded"])).await?;
    println!("ItemAdded events in the log: {items}");

    // The events are in the file: a new connection reads them back.
    store.pool().close().await;
    let reopened = SqliteStore::connect(&url).await?;
    let stream = reopened.read_stream(&order, ..).await?;
    println!("reopened the file: {order} is at version {}", stream.version());
    reopened.pool().close().await;
    Ok(())
}
