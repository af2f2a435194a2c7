//! The event store in five steps, on the embedded SQLite default.
//!
//! Opens (or creates) `pupsource-basic.db` in the working directory, appends a user's history
//! with optimistic concurrency, shows a conflicting writer being refused, and reads the
//! stream and the global log back.
//!
//! ```text
//! cargo run --example basic
//! DATABASE_URL=sqlite::memory: cargo run --example basic
//! ```

use pupsource::{Event, EventStore, ExpectedVersion, Position, Scope, SqliteStore, StreamId};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), pupsource::Error> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite:pupsource-basic.db".into());
    let store = SqliteStore::connect(&url).await?;
    store.migrate().await?;

    // Each run creates a new user, so the example can run again on the same file.
    let user = StreamId::new("Identity", "User", uuid::Uuid::now_v7().to_string());
    let created = Event::new(&user, "UserCreated", json!({ "email": "ada@example.com" }));
    let appended = store.append_and_commit(ExpectedVersion::NoStream, &[created]).await?;
    println!("appended {user} at version {}", appended.to_version);

    let renamed = Event::new(&user, "UserRenamed", json!({ "name": "Ada" }));
    store.append_and_commit(ExpectedVersion::Exact(appended.to_version), &[renamed]).await?;

    // A writer that still believes the user is new is refused, and writes nothing.
    let stale = Event::new(&user, "UserCreated", json!({ "email": "bob@example.com" }));
    match store.append_and_commit(ExpectedVersion::NoStream, &[stale]).await {
        Err(pupsource::Error::Concurrency { expected, actual, .. }) => {
            println!("stale writer refused: expected {expected}, stream is at version {actual}");
        }
        other => println!("unexpected: {other:?}"),
    }

    let stream = store.read_stream(&user, ..).await?;
    println!("stream {user} is at version {} with {} events:", stream.version(), stream.len());
    for event in &stream.events {
        println!("  v{} {} {}", event.aggregate_version, event.event_type, event.payload);
    }

    let log = store.read_all(Position::START, 1_000, &Scope::all()).await?;
    println!("the log holds {} events", log.len());
    Ok(())
}
