//! One projection, one worker, and nothing else: `pupsource::main!()` turns this file into a
//! CLI that runs every projection it declares.
//!
//! The projection sends (prints) a welcome email for each `UserRegistered` event in the log of
//! `pupsource.db` (or `DATABASE_URL`); the `counter` example fills that log, for instance.
//!
//! ```text
//! cargo run --example single_worker -- --until-caught-up
//! cargo run --example single_worker -- list
//! cargo run --example single_worker -- status
//! ```
//!
//! An address without `@` cannot be mailed: its event fails, is retried (`--retries N`), and
//! then halts the projection's partition, or is parked with `--on-error park` (and handed to
//! the handler again by `replay welcome_emails`).

use std::sync::atomic::{AtomicU64, Ordering};

use pupsource::{Context, Envelope, Handle, HandlerResult};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRegistered {
    email: String,
}

#[pupsource::projection(events(UserRegistered))]
#[derive(Default)]
struct WelcomeEmails {
    sent: AtomicU64,
}

impl Handle<UserRegistered> for WelcomeEmails {
    async fn handle(&self, event: Envelope<UserRegistered>, cx: &mut Context<'_>) -> HandlerResult {
        if !event.email.contains('@') {
            return Err(format!("`{}` is not an email address", event.email).into());
        }
        let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        // A real mailer would deduplicate on this key: a redelivery after a crash repeats it.
        println!("welcome email #{n} to {} (key {})", event.email, cx.idempotency_key());
        Ok(())
    }
}

pupsource::main!();
