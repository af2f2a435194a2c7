//! Logging: pupsource reports through `tracing`, so any `tracing` subscriber shows what the
//! runner does; this example installs `tracing_subscriber`'s formatter.
//!
//! The runner wraps each batch in a `projection.batch` span (fields `projection`, `partition`,
//! `position`, `events`), printed here when the batch ends; whatever a handler logs carries
//! that span as context. The `welcome_emails` projection (2 partitions) fails twice on one
//! event, as a busy mail server would: the log shows the rolled back batch (debug), the
//! failed attempt when the event is retried alone (warn), and its success after a backoff.
//!
//! Logs go to stderr, the summary to stdout. The filter is `RUST_LOG`, by default
//! `info,pupsource=debug`. The database is an in-memory SQLite one, or `DATABASE_URL`.
//!
//! ```text
//! cargo run --example with_logging
//! RUST_LOG=pupsource=debug cargo run --example with_logging
//! RUST_LOG=warn cargo run --example with_logging
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pupsource::runner::{RetryPolicy, Runner};
use pupsource::{Context, DomainEvent, Envelope, ExpectedVersion, Handle, HandlerResult, Store};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRegistered {
    email: String,
}

/// The user whose welcome email fails at first: in the batch, then alone on its first attempt.
const UNLUCKY: &str = "user3@example.com";
const FAILURES: u32 = 2;

#[pupsource::projection(partitions = 2, events(UserRegistered))]
#[derive(Default)]
struct WelcomeEmails {
    /// Recipients: a set, as a batch that is rolled back and redone sends its emails again
    /// (effects outside the database are at-least-once).
    recipients: Mutex<HashSet<String>>,
    failures: AtomicU32,
}

impl Handle<UserRegistered> for WelcomeEmails {
    async fn handle(&self, event: Envelope<UserRegistered>, _: &mut Context<'_>) -> HandlerResult {
        if event.email == UNLUCKY && self.failures.fetch_add(1, Ordering::Relaxed) < FAILURES {
            return Err("mail server busy".into());
        }
        tracing::info!(email = %event.email, "welcome email sent");
        self.recipients.lock().expect("no handler panicked").insert(event.data.email);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,pupsource=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Log each span when it closes, with its fields and timings: one line per batch.
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();

    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    let users: u64 = 8;
    for u in 1..=users {
        let event = UserRegistered { email: format!("user{u}@example.com") }
            .to_event(uuid::Uuid::now_v7().to_string())?;
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
    }
    tracing::info!(users, "users registered");

    let emails = Arc::new(WelcomeEmails::default());
    let runner = Runner::new(store)
        .projection(emails.clone())
        // Small batches, so that eight events make several of them.
        .batch_size(3)
        // The default first backoff (100 ms) is meant for real outages, not for a demo.
        .retry(RetryPolicy { initial_backoff: Duration::from_millis(10), ..RetryPolicy::default() })
        .until_caught_up();
    runner.run().await?;

    let metrics = runner.metrics();
    println!("users registered: {users}");
    println!(
        "welcome emails delivered: {}",
        emails.recipients.lock().expect("no handler panicked").len()
    );
    println!("events handled: {} in {} batches", metrics.events_handled(), metrics.batches());
    Ok(())
}
