//! The PostgreSQL read fence counts only transactions that can write to the store's database:
//! a transaction left open in another database of the same server does not stall reads or
//! projections, while one of the store's own database still holds them back.
//!
//! Prepared transactions of the store's database hold the fence like any other of its
//! transactions (the fence keeps every id of the snapshot it cannot place in another
//! database). No test here proves it: the test server runs with `max_prepared_transactions =
//! 0`, where `PREPARE TRANSACTION` is refused, and the tests do not change its configuration.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pupsource::projection::{Context, HandleFuture, Projection};
use pupsource::{Event, EventStore, ExpectedVersion, LogEvent, Position, Runner, StreamId};
use serde_json::json;

/// Remembers the position of every event it handles.
#[derive(Default)]
struct Positions(Mutex<Vec<Position>>);

impl Positions {
    fn handled(&self) -> Vec<Position> {
        let mut positions = self.0.lock().expect("lock").clone();
        positions.sort();
        positions
    }
}

impl Projection for Positions {
    fn name(&self) -> &str {
        "positions"
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
        self.0.lock().expect("lock").push(event.position);
        Box::pin(async { Ok(()) })
    }
}

/// Appends one event to each of `n` new streams, each in a transaction of its own.
async fn append(store: &impl EventStore, prefix: &str, n: usize) -> Vec<Position> {
    let mut positions = Vec::new();
    for i in 0..n {
        let stream = StreamId::new("Fence", "Thing", format!("{prefix}-{i}"));
        let event = Event::new(&stream, "Happened", json!({ "i": i }));
        let appended =
            store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
        positions.extend(appended.positions);
    }
    positions
}

/// A transaction that took an id; returns the id.
async fn take_xid(tx: &mut sqlx::PgTransaction<'static>) -> i64 {
    sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut **tx)
        .await
        .expect("take a transaction id")
}

/// A write transaction open in another database of the server, older than every event of the
/// store: `read_all` returns the events and a projection catches up while it stays open, and
/// status does not name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_open_in_another_database_does_not_stall_projections() {
    let db = common::postgres().await;
    let other = common::PgDatabase::create().await;
    let other_pool = other.pool(1).await;
    let mut open = other_pool.begin().await.expect("begin in the other database");
    let xid = take_xid(&mut open).await;
    let pid: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *open).await.expect("pid");

    let appended = append(&db.store, "elsewhere", 5).await;
    assert!(appended.iter().all(|p| p.transaction_id > xid), "{appended:?} after {xid}");

    // Other tests may hold transactions in this database for a while: poll, with a deadline.
    let log = common::log_of_at_least(&db.store, appended.len()).await;
    let read: Vec<Position> = log.iter().map(|e| e.position).collect();
    assert_eq!(read, appended, "read_all returns the events past the other database's xid");

    let positions = Arc::new(Positions::default());
    let runner = Runner::new(db.store.clone()).projection(positions.clone()).until_caught_up();
    tokio::time::timeout(Duration::from_secs(60), runner.run_until(std::future::pending()))
        .await
        .expect("the projection catches up while the other transaction is open")
        .expect("run");
    assert_eq!(positions.handled(), appended, "each event once");

    let fence = runner.status().await.expect("status").fence;
    assert!(fence.as_ref().is_none_or(|f| f.blocking_pid != Some(pid)), "{fence:?} names {pid}");
    assert_eq!(take_xid(&mut open).await, xid, "the other transaction was open throughout");
    open.rollback().await.expect("rollback");
    other_pool.close().await;
}

/// A write transaction open in the store's own database still holds the fence: events
/// committed after it are not read until it ends, and status shows a fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_open_in_the_same_database_still_holds_reads() {
    let db = common::postgres().await;
    let pool = db.schema.pool(1).await;
    let mut open = pool.begin().await.expect("begin");
    take_xid(&mut open).await;

    let appended = append(&db.store, "here", 3).await;
    assert!(
        common::whole_log(&db.store).await.is_empty(),
        "nothing after the open transaction is read"
    );
    let runner = Runner::new(db.store.clone()).projection(Arc::new(Positions::default()));
    assert!(runner.status().await.expect("status").fence.is_some());

    open.rollback().await.expect("rollback");
    let log = common::log_of_at_least(&db.store, appended.len()).await;
    let read: Vec<Position> = log.iter().map(|e| e.position).collect();
    assert_eq!(read, appended);
    pool.close().await;
}
