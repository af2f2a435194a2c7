//! Typed domain events and schema versions: `#[derive(pupsource::DomainEvent)]`, and an event whose
//! payload changed shape while old versions stay in the log.
//!
//! `UserRegistered` version 1 stored a full `name`; version 2 splits it into first and last
//! names. The old shape stays as a type of its own (`UserRegisteredV1`, `version = 1`); the
//! current type declares `upcast_from = UserRegisteredV1` and converts with `From`. Decoding
//! a stored version 1 event as `UserRegistered` goes through that conversion, so code after
//! the decoder (command handlers, projections: `Handle<UserRegistered>` receives the same
//! `Envelope`) only ever sees the current shape.
//!
//! The example appends a version 1 event as raw JSON, as the old code wrote it, and a
//! version 2 event through the type, then reads both back and decodes them; it also shows
//! what decoding refuses. On an in-memory SQLite database by default, or `DATABASE_URL`.
//!
//! ```text
//! cargo run --example typed_events
//! ```

use pupsource::{DomainEvent, Envelope, Event, ExpectedVersion, PersistedEvent, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Schema version 1, as it was first stored.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", name = "UserRegistered", version = 1)]
struct UserRegisteredV1 {
    name: String,
    email: String,
}

/// Schema version 2, the current one.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User", version = 2, upcast_from = UserRegisteredV1)]
struct UserRegistered {
    first_name: String,
    last_name: String,
    email: String,
}

impl From<UserRegisteredV1> for UserRegistered {
    fn from(old: UserRegisteredV1) -> Self {
        let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
        UserRegistered { first_name: first.into(), last_name: last.into(), email: old.email }
    }
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRenamed {
    first_name: String,
    last_name: String,
}

fn describe(event: &PersistedEvent) -> String {
    match Envelope::<UserRegistered>::decode(event) {
        Ok(envelope) => {
            let upcast = if envelope.event_version < UserRegistered::VERSION {
                format!(" (upcast from v{})", envelope.event_version)
            } else {
                String::new()
            };
            // The envelope dereferences to the event.
            format!(
                "stored as v{}, decoded as {:?}{upcast}, correlation id {:?}",
                envelope.event_version, envelope.data, envelope.correlation_id
            )
        }
        Err(err) => format!("stored as v{}, refused: {err}", event.event_version),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    println!(
        "{}: context {}, aggregate {}, current schema version {}",
        UserRegistered::NAME,
        UserRegistered::CONTEXT,
        UserRegistered::AGGREGATE,
        UserRegistered::VERSION
    );

    // As the old code wrote it: raw JSON of the first schema, version 1 (the default).
    let ada = UserRegistered::stream(uuid::Uuid::now_v7().to_string());
    let payload = json!({ "name": "Ada Lovelace", "email": "ada@example.com" });
    let v1 = Event::new(&ada, UserRegistered::NAME, payload);
    println!("appending v1 as raw JSON: {}", v1.payload);
    store.append_and_commit(ExpectedVersion::NoStream, &[v1]).await?;

    // As the current code writes it: through the type, which sets name, version and stream.
    let grace_id = uuid::Uuid::now_v7().to_string();
    let v2 = UserRegistered {
        first_name: "Grace".into(),
        last_name: "Hopper".into(),
        email: "grace@example.com".into(),
    }
    .to_event(&grace_id)?
    .with_correlation_id("signup-42");
    println!("appending v{} through the type: {}", v2.event_version, v2.payload);
    store.append_and_commit(ExpectedVersion::NoStream, &[v2]).await?;
    let grace = UserRegistered::stream(grace_id);

    // What decoding refuses: a version no type knows, and a payload that does not match.
    let future = UserRegistered::stream(uuid::Uuid::now_v7().to_string());
    let drifted = UserRegistered::stream(uuid::Uuid::now_v7().to_string());
    let v3 = Event::new(&future, UserRegistered::NAME, json!({})).with_event_version(3);
    let bad =
        Event::new(&drifted, UserRegistered::NAME, json!({ "email": "x" })).with_event_version(2);
    store.append_and_commit(ExpectedVersion::NoStream, &[v3]).await?;
    store.append_and_commit(ExpectedVersion::NoStream, &[bad]).await?;

    for (label, stream) in
        [("ada", &ada), ("grace", &grace), ("future", &future), ("drifted", &drifted)]
    {
        for event in &store.read_stream(stream, ..).await?.events {
            println!("{label}: {}", describe(event));
        }
    }

    let stored = store.read_stream(&ada, ..).await?;
    let first = stored.events.first().ok_or("ada's stream is empty")?;
    // Typed decoding checks the event type too.
    match UserRenamed::decode(first) {
        Err(err) => println!("decoding ada's event as UserRenamed: refused: {err}"),
        Ok(renamed) => return Err(format!("decoded a registration as {renamed:?}").into()),
    }
    // The old type still reads the old payload as it was.
    let old = UserRegisteredV1::decode(first)?;
    println!("decoding ada's event as UserRegisteredV1: {old:?}");
    Ok(())
}
