//! Scoped projections next to a global one: what each projection receives is decided by its
//! declaration, and filtered in SQL rather than in the handler.
//!
//! - `user_read_model` and `order_read_model` are typed: `events(...)` is their scope, so they
//!   never see `UserDeactivated` or a product, and each event arrives decoded.
//! - `commerce_audit` is raw and scoped by bounded context: `contexts("Sales", "Catalog")`.
//! - `integration_publisher` is raw and unscoped, the pattern of a bridge to a message broker:
//!   it receives every event of the log, undecoded, with an idempotency key for the broker to
//!   deduplicate redeliveries.
//!
//! The example appends users, orders and products to an in-memory SQLite database (or
//! `DATABASE_URL`), runs the four projections until they have caught up, and prints, for
//! each, how many events of each type it received.
//!
//! ```text
//! cargo run --example scoped_projections
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pupsource::runner::Runner;
use pupsource::{
    Context, DomainEvent, Envelope, ExpectedVersion, Handle, HandleRaw, HandlerResult,
    PersistedEvent, Store,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserCreated {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserDeactivated {}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order")]
struct OrderPlaced {
    user_id: String,
    amount_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Catalog", aggregate = "Product")]
struct ProductAdded {
    sku: String,
}

/// Events received, by type: what the summary prints for every projection.
#[derive(Default)]
struct Received(Mutex<BTreeMap<String, u64>>);

impl Received {
    fn add(&self, event_type: &str) {
        let mut seen = self.0.lock().expect("no handler panicked");
        *seen.entry(event_type.to_owned()).or_default() += 1;
    }

    fn print(&self, projection: &str) {
        let seen = self.0.lock().expect("no handler panicked");
        let total: u64 = seen.values().sum();
        let by_type: Vec<String> = seen.iter().map(|(t, n)| format!("{t}={n}")).collect();
        println!("{projection}: {total} events: {}", by_type.join(" "));
    }
}

#[pupsource::projection(events(UserCreated))]
#[derive(Default)]
struct UserReadModel {
    received: Received,
}

impl Handle<UserCreated> for UserReadModel {
    async fn handle(&self, _: Envelope<UserCreated>, _: &mut Context<'_>) -> HandlerResult {
        self.received.add(UserCreated::NAME);
        Ok(())
    }
}

#[pupsource::projection(events(OrderPlaced))]
#[derive(Default)]
struct OrderReadModel {
    received: Received,
}

impl Handle<OrderPlaced> for OrderReadModel {
    async fn handle(&self, _: Envelope<OrderPlaced>, _: &mut Context<'_>) -> HandlerResult {
        self.received.add(OrderPlaced::NAME);
        Ok(())
    }
}

#[pupsource::projection(contexts("Sales", "Catalog"))]
#[derive(Default)]
struct CommerceAudit {
    received: Received,
}

impl HandleRaw for CommerceAudit {
    async fn handle(&self, event: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        self.received.add(&event.event_type);
        Ok(())
    }
}

/// No scope at all: every event, whatever its context, aggregate or type.
#[pupsource::projection]
#[derive(Default)]
struct IntegrationPublisher {
    received: Received,
}

impl HandleRaw for IntegrationPublisher {
    async fn handle(&self, event: &PersistedEvent, cx: &mut Context<'_>) -> HandlerResult {
        // A real bridge would send the payload to its broker here, keyed for deduplication:
        // the delivery is at-least-once, as the broker is outside the database.
        println!("publish {} of {} (key {})", event.event_type, event.stream, cx.idempotency_key());
        self.received.add(&event.event_type);
        Ok(())
    }
}

/// Appends the sample events; returns how many of each type.
async fn append_samples(store: &Store) -> pupsource::Result<Received> {
    let appended = Received::default();
    let mut user_ids = Vec::new();
    for name in ["Alice", "Bob", "Carol", "Dave"] {
        let id = uuid::Uuid::now_v7().to_string();
        let mut events = vec![UserCreated { name: name.into() }.to_event(&id)?];
        if name == "Dave" {
            events.push(UserDeactivated {}.to_event(&id)?);
        }
        store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
        events.iter().for_each(|e| appended.add(&e.event_type));
        user_ids.push(id);
    }
    for (user, amount_cents) in [(0, 9_999), (1, 14_999), (0, 4_999)] {
        let order = OrderPlaced { user_id: user_ids[user].clone(), amount_cents };
        let event = order.to_event(uuid::Uuid::now_v7().to_string())?;
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
        appended.add(OrderPlaced::NAME);
    }
    for sku in ["WIDGET-001", "GADGET-001"] {
        let event = ProductAdded { sku: sku.into() }.to_event(sku)?;
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
        appended.add(ProductAdded::NAME);
    }
    Ok(appended)
}

#[tokio::main]
async fn main() -> pupsource::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    let appended = append_samples(&store).await?;
    let users = Arc::new(UserReadModel::default());
    let orders = Arc::new(OrderReadModel::default());
    let audit = Arc::new(CommerceAudit::default());
    let publisher = Arc::new(IntegrationPublisher::default());
    Runner::new(store)
        .projection(users.clone())
        .projection(orders.clone())
        .projection(audit.clone())
        .projection(publisher.clone())
        .until_caught_up()
        .run()
        .await?;

    appended.print("appended");
    users.received.print("user_read_model");
    orders.received.print("order_read_model");
    audit.received.print("commerce_audit");
    publisher.received.print("integration_publisher");
    Ok(())
}
