//! The essentials in one run: typed events appended with optimistic concurrency, their stream
//! read back, and a projection run in-process until it has caught up with the log.
//!
//! Opens (or creates) `pupsource-basic.db` in the working directory, or the database
//! `DATABASE_URL` names (PostgreSQL too), and appends a new user's history. The
//! `user_directory` projection then handles what it has not handled yet and prints it: its
//! checkpoint is stored in the database, so a second run handles only the second run's user.
//!
//! ```text
//! cargo run --example basic
//! DATABASE_URL=sqlite::memory: cargo run --example basic
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example basic
//! ```

use std::sync::{Arc, Mutex};

use pupsource::runner::Runner;
use pupsource::{Context, DomainEvent, Envelope, ExpectedVersion, Handle, HandlerResult, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRegistered {
    email: String,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRenamed {
    name: String,
}

/// Remembers what it handled, to print it after the run. One partition: the events arrive in
/// log order.
#[pupsource::projection(events(UserRegistered, UserRenamed))]
#[derive(Default)]
struct UserDirectory {
    handled: Mutex<Vec<String>>,
}

impl UserDirectory {
    fn record(&self, what: String, cx: &Context<'_>) {
        let line = format!("position {}: {what}", cx.position());
        self.handled.lock().expect("no handler panicked").push(line);
    }
}

impl Handle<UserRegistered> for UserDirectory {
    async fn handle(&self, event: Envelope<UserRegistered>, cx: &mut Context<'_>) -> HandlerResult {
        self.record(format!("{} registered with {}", event.stream, event.email), cx);
        Ok(())
    }
}

impl Handle<UserRenamed> for UserDirectory {
    async fn handle(&self, event: Envelope<UserRenamed>, cx: &mut Context<'_>) -> HandlerResult {
        self.record(format!("{} renamed to {}", event.stream, event.name), cx);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> pupsource::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite:pupsource-basic.db".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    // A new user on every run, so that the example can run again on the same database.
    let id = uuid::Uuid::now_v7().to_string();
    let stream = UserRegistered::stream(&id);
    let history = [
        UserRegistered { email: "ada@example.com".into() }.to_event(&id)?,
        UserRenamed { name: "Ada Lovelace".into() }.to_event(&id)?,
    ];
    // `NoStream`: refused, with nothing written, if this user had a history already.
    let appended = store.append_and_commit(ExpectedVersion::NoStream, &history).await?;
    println!(
        "appended {} events to {stream}: versions {}..={}",
        history.len(),
        appended.from_version,
        appended.to_version
    );

    let read = store.read_stream(&stream, ..).await?;
    println!("read back {} events, stream version {}", read.len(), read.version());
    for event in &read.events {
        println!("  v{} {} {}", event.aggregate_version, event.event_type, event.payload);
    }

    let directory = Arc::new(UserDirectory::default());
    Runner::new(store).projection(directory.clone()).until_caught_up().run().await?;
    let handled = directory.handled.lock().expect("no handler panicked");
    println!("projection user_directory handled {} events:", handled.len());
    for line in handled.iter() {
        println!("  {line}");
    }
    Ok(())
}
