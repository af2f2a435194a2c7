//! PostgreSQL-specific guarantees: gap-free reads across out-of-order commits, the
//! per-aggregate order guard, typed errors for every database failure, custom table names.

mod common;

use pupsource::store::Tables;
use pupsource::{
    ConstraintKind, Error, Event, EventStore, ExpectedVersion, Position, PostgresStore, Scope,
    StreamId,
};
use serde_json::json;

use common::log_of_at_least;

fn stream(id: &str) -> StreamId {
    StreamId::new("Sales", "Order", id)
}

/// Transaction A appends and stays open; transaction B appends and commits. A reader sees
/// nothing of B while A is open (A's event would land before B's), then A commits and the
/// reader, continuing from its checkpoint, sees A's event and B's event, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_commit_is_delivered_exactly_once() {
    let db = common::postgres().await;
    let store = &db.store;

    let mut tx_a = store.begin().await.expect("begin A");
    let a = store
        .append(
            &mut tx_a,
            ExpectedVersion::NoStream,
            &[Event::new(&stream("a"), "Placed", json!({}))],
        )
        .await
        .expect("append A");
    let mut tx_b = store.begin().await.expect("begin B");
    let b = store
        .append(
            &mut tx_b,
            ExpectedVersion::NoStream,
            &[Event::new(&stream("b"), "Placed", json!({}))],
        )
        .await
        .expect("append B");
    tx_b.commit().await.expect("commit B");
    assert!(a.positions[0].global_position < b.positions[0].global_position);
    assert!(a.positions[0].transaction_id < b.positions[0].transaction_id);

    // B is committed, but A (older) is still in flight: the fence holds B back.
    let mut checkpoint = Position::START;
    let mut seen = Vec::new();
    let visible = store.read_all(checkpoint, 100, &Scope::all()).await.expect("read");
    assert!(
        visible.is_empty(),
        "nothing may be delivered past an open older transaction: {visible:?}"
    );

    tx_a.commit().await.expect("commit A");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        let page = store.read_all(checkpoint, 100, &Scope::all()).await.expect("read");
        if let Some(last) = page.last() {
            checkpoint = last.position;
        }
        seen.extend(page.into_iter().map(|e| e.stream.aggregate_id.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["a", "b"]);
    assert!(store.read_all(checkpoint, 100, &Scope::all()).await.expect("read").is_empty());
}

/// A transaction that started writing before another one appended version v may not append
/// v + 1 afterwards: in (transaction, position) order its event would come before v.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_transaction_cannot_append_after_a_younger_one() {
    let db = common::postgres().await;
    let store = &db.store;
    let order = stream("o1");
    store
        .append_and_commit(ExpectedVersion::NoStream, &[Event::new(&order, "Placed", json!({}))])
        .await
        .expect("v1");

    let mut old = store.begin().await.expect("begin old");
    store
        .append(
            &mut old,
            ExpectedVersion::NoStream,
            &[Event::new(&stream("elsewhere"), "Placed", json!({}))],
        )
        .await
        .expect("old writes elsewhere");

    let young = store
        .append_and_commit(ExpectedVersion::Exact(1), &[Event::new(&order, "Paid", json!({}))])
        .await
        .expect("young appends v2");
    assert_eq!(young.to_version, 2);

    for expected in [ExpectedVersion::Exact(2), ExpectedVersion::Any] {
        let mut savepoint = sqlx::Acquire::begin(&mut *old).await.expect("savepoint");
        let err = store
            .append(&mut savepoint, expected, &[Event::new(&order, "Shipped", json!({}))])
            .await
            .expect_err("the older transaction must be refused");
        assert!(matches!(&err, Error::Concurrency { actual: 2, .. }), "{expected:?}: {err:?}");
        assert!(err.is_retryable());
        savepoint.rollback().await.expect("rollback savepoint");
    }
    old.rollback().await.expect("rollback");

    // A retry in a new transaction succeeds, and the log holds the stream in version order.
    store
        .append_and_commit(ExpectedVersion::Exact(2), &[Event::new(&order, "Shipped", json!({}))])
        .await
        .expect("retry");
    let log = log_of_at_least(store, 3).await;
    let versions: Vec<_> =
        log.iter().filter(|e| e.stream == order).map(|e| e.aggregate_version).collect();
    assert_eq!(versions, [1, 2, 3]);
}

/// A `NOT NULL` violation is reported as such, not as a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_null_violation_is_a_typed_constraint_error() {
    let db = common::postgres().await;
    sqlx::query("ALTER TABLE events ADD COLUMN tenant TEXT NOT NULL")
        .execute(db.store.pool())
        .await
        .expect("alter");
    let err = db
        .store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&stream("o1"), "Placed", json!({}))],
        )
        .await
        .expect_err("the new column has no value");
    assert!(matches!(&err, Error::Constraint { kind: ConstraintKind::NotNull, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(db.store.read_stream(&stream("o1"), ..).await.expect("read").is_empty());
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error() {
    // Port 1 on loopback: nothing listens there.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .expect("lazy pool");
    let store = PostgresStore::new(pool);
    let err = store
        .append_and_commit(ExpectedVersion::Any, &[Event::new(&stream("o1"), "Placed", json!({}))])
        .await
        .expect_err("no server");
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.is_retryable());

    let err = PostgresStore::connect("postgres://[not-a-host").await.expect_err("malformed URL");
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_table_names_are_used_and_validated() {
    let db = common::postgres().await;
    let tables = Tables::default()
        .with_events("billing_events")
        .and_then(|t| t.with_aggregate_heads("billing_heads"))
        .expect("valid names");
    let billing = PostgresStore::with_tables(db.schema.pool(2).await, tables);
    billing.migrate().await.expect("migrate");
    billing
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&stream("o1"), "Placed", json!({}))],
        )
        .await
        .expect("append");

    let count = |table: &'static str| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(count("billing_events").await, 1);
    assert_eq!(count("billing_heads").await, 1);
    assert_eq!(count("events").await, 0);

    // A set that shares the events table but not the checkpoints table gets its own tables:
    // the schema version is recorded per set, not per events table.
    let shared = Tables::default()
        .with_events("billing_events")
        .and_then(|t| t.with_aggregate_heads("billing_heads"))
        .and_then(|t| t.with_checkpoints("billing_checkpoints"))
        .expect("valid names");
    PostgresStore::with_tables(db.schema.pool(2).await, shared).migrate().await.expect("migrate");
    assert_eq!(count("billing_checkpoints").await, 0);

    let err = Tables::default().with_events("events; DROP TABLE events").expect_err("injection");
    assert_eq!(
        err.to_string(),
        "invalid table name `events; DROP TABLE events`: ';' is not allowed; use ASCII letters, digits and `_`"
    );
}

/// A process starting on an up-to-date schema must not queue for table locks: re-running the
/// DDL took `ShareLock` on the events table and `AccessExclusiveLock` on the checkpoints and
/// workers tables, so it waited for every open append and batch, blocked every later one, and
/// deadlocked with running heartbeats (a fourth process failed to start that way in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_a_current_schema_waits_for_no_open_transaction() {
    let db = common::postgres().await;
    let store = &db.store;

    // An append and a checkpoint/worker write, left open: row-exclusive locks on each table.
    let mut open = store.begin().await.expect("begin");
    store
        .append(
            &mut open,
            ExpectedVersion::NoStream,
            &[Event::new(&stream("o1"), "Placed", json!({}))],
        )
        .await
        .expect("append");
    sqlx::query("LOCK TABLE checkpoints, projection_workers, dead_letters IN ROW EXCLUSIVE MODE")
        .execute(&mut *open)
        .await
        .expect("lock");

    // A second process starts. The bound only turns a hang into a failure.
    let starting = PostgresStore::new(db.schema.pool(2).await);
    tokio::time::timeout(std::time::Duration::from_secs(60), starting.migrate())
        .await
        .expect("migrate must not wait for the open transaction")
        .expect("migrate");

    open.commit().await.expect("commit");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(starting.pool())
        .await
        .expect("count");
    assert_eq!(events, 1);
}

/// Event rows are decoded without sqlx's type check per value; each column's type is checked
/// once per query instead. A text column changed behind the store's back to `bytea` (whose
/// bytes are the same text) fails the read and names the column, rather than being read as
/// text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_column_changed_to_another_type_fails_the_read_and_names_it() {
    let db = common::postgres().await;
    let event = Event::new(&stream("t"), "Placed", json!({})).with_trace_id("trace-1");
    db.store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
    let pool = db.schema.pool(1).await;
    sqlx::query(
        "ALTER TABLE events ALTER COLUMN trace_id TYPE bytea USING convert_to(trace_id, 'UTF8')",
    )
    .execute(&pool)
    .await
    .expect("alter");
    // A store of its own: the test's store holds the statement prepared for the old type.
    let store = PostgresStore::new(pool);
    let err = store.read_all(Position::START, 10, &Scope::all()).await.expect_err("bytea");
    assert_eq!(
        err.to_string(),
        "database error: error occurred while decoding column trace_id: expected a text type \
         (TEXT, VARCHAR), found BYTEA"
    );
}
