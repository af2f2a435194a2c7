//! Several projections in one binary, each with its own events and partition count, run
//! together by one runner.
//!
//! - `user_directory`, 1 partition: every user's current email.
//! - `sales_report`, 4 partitions sharing one instance: orders, shipments and revenue.
//! - `shipping_board`, 2 partitions: shipments only; it shares `OrderShipped` with
//!   `sales_report`, and each keeps its own checkpoints.
//!
//! Each projection reads the log once, with its events pushed down into SQL, and fans them out
//! to its partitions; events of one aggregate always go to the same partition, in order. The
//! example appends a small workload to an in-memory SQLite database (or `DATABASE_URL`), runs
//! the three until they have caught up, and prints what each one handled, per partition.
//! `pupsource::main!()` would run the same projections from the command line instead.
//!
//! ```text
//! cargo run --example multiple_projections
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run --example multiple_projections
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pupsource::partition::Partition;
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
struct UserEmailChanged {
    email: String,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order")]
struct OrderPlaced {
    user_id: String,
    total_cents: u64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Sales", aggregate = "Order")]
struct OrderShipped {}

/// Events handled by each partition: shows how a projection's work was split.
#[derive(Default)]
struct PartitionTally(Mutex<BTreeMap<Partition, u64>>);

impl PartitionTally {
    fn count(&self, cx: &Context<'_>) {
        *self.0.lock().expect("no handler panicked").entry(cx.partition()).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.lock().expect("no handler panicked").values().sum()
    }

    fn print(&self) {
        for (partition, events) in self.0.lock().expect("no handler panicked").iter() {
            println!("  partition {partition}: {events} events");
        }
    }
}

#[pupsource::projection(partitions = 1, events(UserRegistered, UserEmailChanged))]
#[derive(Default)]
struct UserDirectory {
    emails: Mutex<HashMap<String, String>>,
    changes: AtomicU64,
    partitions: PartitionTally,
}

impl Handle<UserRegistered> for UserDirectory {
    async fn handle(&self, event: Envelope<UserRegistered>, cx: &mut Context<'_>) -> HandlerResult {
        let id = event.stream.aggregate_id.clone();
        self.emails.lock().expect("no handler panicked").insert(id, event.data.email);
        self.partitions.count(cx);
        Ok(())
    }
}

impl Handle<UserEmailChanged> for UserDirectory {
    async fn handle(
        &self,
        event: Envelope<UserEmailChanged>,
        cx: &mut Context<'_>,
    ) -> HandlerResult {
        let mut emails = self.emails.lock().expect("no handler panicked");
        // Events of one aggregate arrive in version order: the user is known already.
        let email =
            emails.get_mut(&event.stream.aggregate_id).ok_or("change before registration")?;
        *email = event.data.email;
        self.changes.fetch_add(1, Ordering::Relaxed);
        self.partitions.count(cx);
        Ok(())
    }
}

/// One instance serves all four partitions, hence atomics rather than `&mut self`.
#[pupsource::projection(partitions = 4, events(OrderPlaced, OrderShipped))]
#[derive(Default)]
struct SalesReport {
    orders: AtomicU64,
    shipped: AtomicU64,
    revenue_cents: AtomicU64,
    partitions: PartitionTally,
}

impl Handle<OrderPlaced> for SalesReport {
    async fn handle(&self, event: Envelope<OrderPlaced>, cx: &mut Context<'_>) -> HandlerResult {
        self.orders.fetch_add(1, Ordering::Relaxed);
        self.revenue_cents.fetch_add(event.total_cents, Ordering::Relaxed);
        self.partitions.count(cx);
        Ok(())
    }
}

impl Handle<OrderShipped> for SalesReport {
    async fn handle(&self, _: Envelope<OrderShipped>, cx: &mut Context<'_>) -> HandlerResult {
        self.shipped.fetch_add(1, Ordering::Relaxed);
        self.partitions.count(cx);
        Ok(())
    }
}

#[pupsource::projection(partitions = 2, events(OrderShipped))]
#[derive(Default)]
struct ShippingBoard {
    partitions: PartitionTally,
}

impl Handle<OrderShipped> for ShippingBoard {
    async fn handle(&self, _: Envelope<OrderShipped>, cx: &mut Context<'_>) -> HandlerResult {
        self.partitions.count(cx);
        Ok(())
    }
}

/// What the workload appended, to compare with what the projections saw.
#[derive(Default)]
struct Workload {
    users: u64,
    email_changes: u64,
    orders: u64,
    shipped: u64,
    revenue_cents: u64,
}

/// Appends a small, varied workload: 12 users, some changing their email, some ordering.
async fn append_workload(store: &Store) -> pupsource::Result<Workload> {
    let mut workload = Workload::default();
    for u in 0..12u64 {
        let user = uuid::Uuid::now_v7().to_string();
        let mut events =
            vec![UserRegistered { email: format!("user{u}@example.com") }.to_event(&user)?];
        if u % 3 == 0 {
            events
                .push(UserEmailChanged { email: format!("user{u}@example.org") }.to_event(&user)?);
            workload.email_changes += 1;
        }
        store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
        workload.users += 1;

        for o in 0..u % 4 {
            let order = uuid::Uuid::now_v7().to_string();
            let total_cents = 1_000 * (o + 1) + u;
            let mut events =
                vec![OrderPlaced { user_id: user.clone(), total_cents }.to_event(&order)?];
            if o % 2 == 0 {
                events.push(OrderShipped {}.to_event(&order)?);
                workload.shipped += 1;
            }
            store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
            workload.orders += 1;
            workload.revenue_cents += total_cents;
        }
    }
    Ok(workload)
}

#[tokio::main]
async fn main() -> pupsource::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let store = Store::connect(&url).await?;
    store.migrate().await?;

    let w = append_workload(&store).await?;
    println!(
        "appended {} events: {} users registered, {} email changes, {} orders placed, {} orders \
         shipped, revenue {} cents",
        w.users + w.email_changes + w.orders + w.shipped,
        w.users,
        w.email_changes,
        w.orders,
        w.shipped,
        w.revenue_cents
    );

    let users = Arc::new(UserDirectory::default());
    let sales = Arc::new(SalesReport::default());
    let shipping = Arc::new(ShippingBoard::default());
    Runner::new(store)
        .projection(users.clone())
        .projection(sales.clone())
        .projection(shipping.clone())
        .until_caught_up()
        .run()
        .await?;

    let known = users.emails.lock().expect("no handler panicked").len();
    println!(
        "user_directory (1 partition): {known} users, {} email changes",
        users.changes.load(Ordering::Relaxed)
    );
    users.partitions.print();
    println!(
        "sales_report (4 partitions): {} orders placed, {} orders shipped, revenue {} cents",
        sales.orders.load(Ordering::Relaxed),
        sales.shipped.load(Ordering::Relaxed),
        sales.revenue_cents.load(Ordering::Relaxed)
    );
    sales.partitions.print();
    println!("shipping_board (2 partitions): {} orders shipped", shipping.partitions.total());
    shipping.partitions.print();
    Ok(())
}
