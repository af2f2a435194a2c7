//! What is particular to MySQL / MariaDB, proven on a real server: appends take their
//! positions in commit order (an append waits for an older open one), so a reader never
//! skips an event that commits late; and partition leases hold across processes, through a
//! SIGKILL and a SIGSTOP, exactly as on PostgreSQL.

mod common;

use std::time::Duration;

use pupsource::{Event, EventStore, ExpectedVersion, MySqlStore, Position, Scope, StreamId};
use serde_json::json;

use common::{MySqlDatabase, Worker, eventually};

/// Sessions of this test's database running the statement that takes log positions (they
/// stay in it while they wait for its row lock).
async fn waiting_for_positions(store: &MySqlStore) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE DB = DATABASE() AND INFO LIKE 'UPDATE `events_log` SET position%'",
    )
    .fetch_one(store.pool())
    .await
    .expect("sessions")
}

/// Other sessions of this test's database in the middle of a statement (waiting for a lock).
async fn statements_in_flight(store: &MySqlStore) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE DB = DATABASE() AND COMMAND = 'Execute' AND ID <> CONNECTION_ID()",
    )
    .fetch_one(store.pool())
    .await
    .expect("sessions")
}

fn positions_of(log: &[pupsource::PersistedEvent], stream: &StreamId) -> Vec<i64> {
    log.iter().filter(|e| e.stream == *stream).map(|e| e.position.global_position).collect()
}

/// A later append to another stream waits for an older open append: while the older is
/// open, readers see neither; once it commits, the later one follows it in the log. With
/// positions handed out at insert time (`AUTO_INCREMENT`), the later append would commit
/// first, at a higher position, and a reader that took it would move past the older one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_append_waits_for_an_older_open_one_so_readers_never_skip() {
    let db = common::mysql().await;
    let store = db.store.clone();
    let (older_stream, later_stream) =
        (StreamId::new("T", "Order", "older"), StreamId::new("T", "Order", "later"));

    let mut older = store.begin().await.expect("begin");
    let event = Event::new(&older_stream, "Placed", json!({ "n": 1 }));
    let taken =
        store.append(&mut older, ExpectedVersion::NoStream, &[event]).await.expect("append");
    assert_eq!(taken.positions, [Position { transaction_id: 0, global_position: 1 }]);

    let writer = store.clone();
    let stream = later_stream.clone();
    let later = tokio::spawn(async move {
        let event = Event::new(&stream, "Placed", json!({ "n": 2 }));
        writer.append_and_commit(ExpectedVersion::NoStream, &[event]).await
    });
    eventually("the later append waits for the older one", Duration::from_secs(10), || async {
        (waiting_for_positions(&store).await == 1).then_some(())
    })
    .await;
    let log = store.read_all(Position::START, 100, &Scope::all()).await.expect("read");
    assert!(log.is_empty(), "nothing is readable while the older append is open: {log:?}");
    assert!(!later.is_finished(), "the later append cannot commit before the older one");

    older.commit().await.expect("commit the older append");
    let appended = later.await.expect("task").expect("the later append");
    assert_eq!(appended.positions, [Position { transaction_id: 0, global_position: 2 }]);
    let log = store.read_all(Position::START, 100, &Scope::all()).await.expect("read");
    assert_eq!(positions_of(&log, &older_stream), [1]);
    assert_eq!(positions_of(&log, &later_stream), [2]);
}

/// Three appends creating one stream at once (`Any`), two of them waiting for the first to
/// commit, all succeed one after the other, at consecutive versions: no deadlock, no
/// conflict error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_creating_one_stream_at_once_all_succeed_without_deadlock() {
    let db = common::mysql().await;
    let store = db.store.clone();
    let stream = StreamId::new("T", "Counter", "c");
    let mut first = store.begin().await.expect("begin");
    let event = Event::new(&stream, "Ticked", json!({}));
    store.append(&mut first, ExpectedVersion::Any, &[event]).await.expect("first append");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (store, stream) = (store.clone(), stream.clone());
            tokio::spawn(async move {
                let event = Event::new(&stream, "Ticked", json!({}));
                store.append_and_commit(ExpectedVersion::Any, &[event]).await
            })
        })
        .collect();
    eventually("both later appends wait", Duration::from_secs(10), || async {
        (statements_in_flight(&store).await == 2).then_some(())
    })
    .await;
    first.commit().await.expect("commit the first append");
    let mut versions = Vec::new();
    for task in waiting {
        versions.push(task.await.expect("task").expect("no deadlock").to_version);
    }
    versions.sort_unstable();
    assert_eq!(versions, [2, 3]);
    assert_eq!(store.read_stream(&stream, ..).await.expect("read").version(), 3);
}

/// A rolled-back append gives its positions back: the log has no holes a reader could
/// mistake for events still to come, and the next append takes the same positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_append_gives_its_positions_back() {
    let db = common::mysql().await;
    let store = db.store.clone();
    let stream = StreamId::new("T", "Order", "o");
    let events: Vec<Event> =
        (0..3).map(|n| Event::new(&stream, "Line", json!({ "n": n }))).collect();
    let mut tx = store.begin().await.expect("begin");
    store.append(&mut tx, ExpectedVersion::NoStream, &events).await.expect("append");
    tx.rollback().await.expect("rollback");
    let appended =
        store.append_and_commit(ExpectedVersion::NoStream, &events[..2]).await.expect("append");
    let positions: Vec<i64> = appended.positions.iter().map(|p| p.global_position).collect();
    assert_eq!(positions, [1, 2]);
    let counter: i64 = sqlx::query_scalar("SELECT position FROM events_log WHERE id = 1")
        .fetch_one(store.pool())
        .await
        .expect("counter");
    assert_eq!(counter, 2);
}

/// Appends `events` readings over 200 meters, 50 per append.
async fn append_readings(store: &MySqlStore, events: u64) {
    for n in (0..events).step_by(50) {
        let meter = StreamId::new("Metering", "Meter", format!("meter-{}", (n / 50) % 200));
        let batch: Vec<Event> =
            (0..50).map(|i| Event::new(&meter, "MeterRead", json!({ "value": n + i }))).collect();
        store.append_and_commit(ExpectedVersion::Any, &batch).await.expect("append");
    }
}

/// Events applied (by `owner`, or by anyone).
async fn applied(store: &MySqlStore, owner: Option<&str>) -> i64 {
    // The read model table appears once a worker prepared it.
    sqlx::query_scalar("SELECT COUNT(*) FROM scaling_applied WHERE ? IS NULL OR owner = ?")
        .bind(owner)
        .bind(owner)
        .fetch_one(store.pool())
        .await
        .unwrap_or(0)
}

/// The unexpired holder of each partition of the 8-partition layout: (owner, epoch).
async fn holders(store: &MySqlStore) -> Vec<(i32, Option<String>, i64)> {
    sqlx::query_as(
        "SELECT `partition`, CONVERT(owner USING utf8mb4), epoch FROM checkpoints \
         WHERE projection = 'scaling' AND partition_count = 8 \
           AND (lease_until IS NULL OR lease_until > UTC_TIMESTAMP(6)) ORDER BY `partition`",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default()
}

/// Every event of the log applied exactly once, each (partition, epoch) by one owner, and
/// per partition no older epoch applied after a newer one.
async fn assert_applied_exactly_once_under_one_owner(store: &MySqlStore, log: i64) {
    let pool = store.pool();
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(DISTINCT global_position) FROM scaling_applied")
            .fetch_one(pool)
            .await
            .expect("totals");
    assert_eq!((rows, distinct), (log, log), "every event applied exactly once");
    let shared: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT `partition`, epoch FROM scaling_applied \
         GROUP BY `partition`, epoch HAVING COUNT(DISTINCT owner) > 1) AS x",
    )
    .fetch_one(pool)
    .await
    .expect("owners");
    assert_eq!(shared, 0, "one owner per (partition, epoch)");
    let regressions: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT epoch, \
           LAG(epoch) OVER (PARTITION BY `partition` ORDER BY global_position) AS previous \
         FROM scaling_applied) AS x WHERE epoch < previous",
    )
    .fetch_one(pool)
    .await
    .expect("epoch order");
    assert_eq!(regressions, 0, "an older epoch applied after a newer one");
}

/// A database of its own, migrated, and a working directory for the processes.
async fn setup() -> (MySqlDatabase, MySqlStore, tempfile::TempDir) {
    let database = MySqlDatabase::create().await;
    let store = MySqlStore::connect(&database.url()).await.expect("connect");
    store.migrate().await.expect("migrate");
    (database, store, tempfile::tempdir().expect("temp dir"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_a_sigkill_and_a_fourth_apply_every_event_once() {
    let (database, store, dir) = setup().await;
    let url = database.url();
    let p1 = Worker::start(dir.path(), &url, "p1", "300ms", 2);
    let p2 = Worker::start(dir.path(), &url, "p2", "300ms", 2);
    let p3 = Worker::start(dir.path(), &url, "p3", "300ms", 2);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { append_readings(&store, 20_000).await })
    };
    eventually("p2 applied 300 events", Duration::from_secs(120), || async {
        (applied(&store, Some("p2")).await >= 300).then_some(())
    })
    .await;
    p2.crash();
    let p4 = Worker::start(dir.path(), &url, "p4", "300ms", 2);
    writer.await.expect("writer");
    eventually("every event is applied", Duration::from_secs(240), || async {
        (applied(&store, None).await >= 20_000).then_some(())
    })
    .await;
    for worker in [p1, p3, p4] {
        let id = worker.id.clone();
        let (status, stdout, stderr) = worker.stop();
        assert!(status.success(), "{id} exits cleanly: {stderr}");
        assert!(stdout.contains("applied twice 0"), "{id}: {stdout}");
    }
    assert_applied_exactly_once_under_one_owner(&store, 20_000).await;
}

/// A worker paused (SIGSTOP) mid-batch loses its leases; the server closes its idle
/// connection, so its open batch holds nothing past the lease; resumed, it commits nothing of
/// what the other worker took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_lease_and_cannot_commit_after_resuming() {
    let (database, store, dir) = setup().await;
    let url = database.url();
    append_readings(&store, 6_000).await;
    let p1 = Worker::start(dir.path(), &url, "p1", "200ms", 5);
    let p2 = Worker::start(dir.path(), &url, "p2", "200ms", 5);
    let before =
        eventually("both hold 4 partitions, p1 applying", Duration::from_secs(60), || async {
            let held = holders(&store).await;
            let count =
                |who: &str| held.iter().filter(|(_, o, _)| o.as_deref() == Some(who)).count();
            (count("p1") == 4 && count("p2") == 4 && applied(&store, Some("p1")).await > 0)
                .then_some(held)
        })
        .await;
    p1.signal("-STOP");
    let taken = eventually("p2 took every partition over", Duration::from_secs(60), || async {
        let held = holders(&store).await;
        (held.len() == 8 && held.iter().all(|(_, o, _)| o.as_deref() == Some("p2"))).then_some(held)
    })
    .await;
    p1.signal("-CONT");
    eventually("every event is applied", Duration::from_secs(120), || async {
        (applied(&store, None).await >= 6_000).then_some(())
    })
    .await;
    let (p1_status, _, p1_stderr) = p1.stop();
    let (p2_status, p2_stdout, _) = p2.stop();
    assert!(p1_status.success() && p2_status.success(), "{p1_stderr}");
    assert!(p2_stdout.contains("applied twice 0"), "{p2_stdout}");
    assert_applied_exactly_once_under_one_owner(&store, 6_000).await;
    for ((partition, owner, epoch), (_, _, new_epoch)) in before.iter().zip(&taken) {
        if owner.as_deref() == Some("p1") {
            assert!(new_epoch > epoch, "partition {partition}: {before:?} then {taken:?}");
        }
    }
}

/// Every table's name can be configured: a store with other names creates and uses its own
/// tables (log counter, epochs and locks included) beside the default ones in one database,
/// and a projection runs on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_table_names_are_used_for_every_table() {
    let db = common::mysql().await;
    let tables = pupsource::store::Tables::default()
        .with_events("billing_events")
        .and_then(|t| t.with_aggregate_heads("billing_heads"))
        .and_then(|t| t.with_checkpoints("billing_checkpoints"))
        .and_then(|t| t.with_dead_letters("billing_parked"))
        .and_then(|t| t.with_workers("billing_workers"))
        .and_then(|t| t.with_snapshots("billing_snapshots"))
        .expect("valid names");
    let billing = MySqlStore::with_tables(db.store.pool().clone(), tables);
    billing.migrate().await.expect("migrate");
    let order = StreamId::new("Billing", "Invoice", "i1");
    billing
        .append_and_commit(ExpectedVersion::NoStream, &[Event::new(&order, "Issued", json!({}))])
        .await
        .expect("append");
    let counted = std::sync::Arc::new(Counted::default());
    pupsource::Runner::new(billing.clone())
        .projection(counted.clone())
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("run");
    assert_eq!(counted.handled.load(std::sync::atomic::Ordering::SeqCst), 1);

    let count = |table: &'static str| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(count("billing_events").await, 1);
    assert_eq!(count("billing_heads").await, 1);
    assert_eq!(count("billing_checkpoints").await, 1, "one partition's checkpoint");
    assert_eq!(count("billing_events_log").await, 1);
    assert_eq!(count("billing_checkpoints_epoch").await, 1);
    assert_eq!(count("events").await, 0);
    assert_eq!(count("checkpoints").await, 0);
}

/// A projection that counts what it handles.
#[derive(Default)]
struct Counted {
    handled: std::sync::atomic::AtomicU64,
}

impl pupsource::Projection for Counted {
    fn name(&self) -> &str {
        "counted"
    }

    fn handle<'a>(
        &'a self,
        _: &'a pupsource::LogEvent,
        _: &'a mut pupsource::Context<'_>,
    ) -> pupsource::projection::HandleFuture<'a> {
        self.handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

/// Pages of the log stop at their byte budget (4 MiB) in the middle of a query's rows: 100
/// events of 100 kB are read over several pages, the rest of each query's rows dropped unread,
/// and every event is handled once, the connections reused after each dropped query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_are_read_in_pages_bounded_in_bytes() {
    let db = common::mysql().await;
    let blob = "x".repeat(100_000);
    for n in 0..10 {
        let stream = StreamId::new("T", "Blob", format!("b{n}"));
        let events: Vec<Event> =
            (0..10).map(|_| Event::new(&stream, "Big", json!({ "blob": blob }))).collect();
        db.store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    }
    let counted = std::sync::Arc::new(Counted::default());
    pupsource::Runner::new(db.store.clone())
        .projection(counted.clone())
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("run");
    assert_eq!(counted.handled.load(std::sync::atomic::Ordering::SeqCst), 100);
    let log = db.store.read_all(Position::START, 1_000, &Scope::all()).await.expect("read");
    assert_eq!(log.len(), 100, "the pool's connections still answer");
}
