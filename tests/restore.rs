//! A PostgreSQL database restored from another cluster (`pg_dump` / `pg_restore`, or a move by
//! logical replication) into one whose transaction counter is lower. The restore is simulated
//! as its effect on the stored rows: every stored transaction id is shifted up by the same
//! large amount, as the ids of a busier cluster would be. `migrate` and `run` must refuse the
//! database with one line naming the fix, and the repair must give back the exact log order,
//! checkpoints that resume with nothing skipped or repeated, and appendable streams.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use pupsource::projection::{Context, HandleFuture, Projection};
use pupsource::runner::{ErrorPolicy, RetryPolicy};
use pupsource::store::RestoreRepair;
use pupsource::{
    Error, Event, EventStore, ExpectedVersion, LogEvent, PersistedEvent, Position, PostgresStore,
    Runner, Scope, StreamId,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use common::{example_binary, log_of_at_least};

/// How far the simulated restore moves every stored id: a cluster 2^40 transactions busier.
const SHIFT: i64 = 1 << 40;

/// The first id the repair gives out (PostgreSQL's `FirstNormalTransactionId`).
const FIRST_ID: i64 = 3;

/// What a restore from a busier cluster leaves in the tables: every stored id, higher by
/// `SHIFT` (the start position `(0, 0)` of a checkpoint stays).
async fn shift_ids(pool: &PgPool) {
    for sql in [
        "UPDATE events SET transaction_id = (transaction_id::text::bigint + $1)::text::xid8",
        "UPDATE aggregate_heads SET transaction_id = (transaction_id::text::bigint + $1)::text::xid8",
        "UPDATE checkpoints SET transaction_id = transaction_id + $1 WHERE transaction_id <> 0",
        "UPDATE dead_letters SET transaction_id = transaction_id + $1",
    ] {
        sqlx::query(sql).bind(SHIFT).execute(pool).await.expect("shift stored ids");
    }
}

/// The one-line message of [`Error::RestoredDatabase`].
fn restored_message(stored: u64, current: u64) -> String {
    format!(
        "stored transaction id {stored} is ahead of this PostgreSQL cluster (next id {current}): \
         the database was restored or moved from another cluster; run the `repair-restore` \
         command (`PostgresStore::repair_restore`) before anything appends"
    )
}

/// Asserts `err` is the refusal of a restored database whose largest stored id is `stored`,
/// with its exact message; returns the cluster's next id it reported.
fn assert_refused(err: &Error, stored: i64) -> u64 {
    let Error::RestoredDatabase { stored: reported, current } = *err else {
        panic!("expected Error::RestoredDatabase, got {err:?}");
    };
    assert_eq!(reported, stored.unsigned_abs());
    assert!(current > 0 && current < reported, "{err:?}");
    assert_eq!(err.to_string(), restored_message(reported, current));
    current
}

/// Every checkpoint row: (projection, partition count, partition) and its position.
async fn checkpoint_rows(pool: &PgPool) -> Vec<(String, i32, i32, Position)> {
    let rows: Vec<(String, i32, i32, i64, i64)> = sqlx::query_as(
        "SELECT projection, partition_count, partition, transaction_id, global_position \
         FROM checkpoints ORDER BY projection, partition_count, partition",
    )
    .fetch_all(pool)
    .await
    .expect("checkpoints");
    rows.into_iter()
        .map(|(name, count, partition, transaction_id, global_position)| {
            (name, count, partition, Position { transaction_id, global_position })
        })
        .collect()
}

/// The next id of the cluster and the oldest transaction in flight.
async fn horizon(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT pg_snapshot_xmax(s)::text::bigint, pg_snapshot_xmin(s)::text::bigint \
         FROM pg_current_snapshot() AS s",
    )
    .fetch_one(pool)
    .await
    .expect("snapshot")
}

/// A SQL read model: one row per handled event, with the run that handled it. The primary
/// key makes a repeated event a handler error, which stops the run.
struct ReadModel {
    run: AtomicI32,
}

impl Projection for ReadModel {
    fn name(&self) -> &str {
        "read_model"
    }

    fn partitions(&self) -> u32 {
        2
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, cx: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(async move {
            let run = self.run.load(Ordering::SeqCst);
            pupsource::with_transaction!(cx.transaction(), |c| {
                sqlx::query("INSERT INTO handled (event_id, run) VALUES ($1, $2)")
                    .bind(event.event_id)
                    .bind(run)
                    .execute(c)
                    .await?
                    .rows_affected()
            });
            Ok(())
        })
    }
}

/// Fails on every `Poison` event, which the runner parks.
struct Picky;

impl Projection for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    fn partitions(&self) -> u32 {
        1
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(async move {
            if event.event_type == "Poison" {
                return Err("poison".into());
            }
            Ok(())
        })
    }
}

fn runner(store: &PostgresStore, model: &Arc<ReadModel>) -> Runner {
    Runner::new(store.clone())
        .projection(Arc::clone(model) as Arc<dyn Projection>)
        .projection(Arc::new(Picky))
        .on_error(ErrorPolicy::Park)
        .retry(RetryPolicy {
            max_attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        })
        .until_caught_up()
}

/// The events the read model handled in `run`.
async fn handled_in(pool: &PgPool, run: i32) -> HashSet<Uuid> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM handled WHERE run = $1")
        .bind(run)
        .fetch_all(pool)
        .await
        .expect("handled");
    ids.into_iter().collect()
}

fn stream(id: &str) -> StreamId {
    StreamId::new("Sales", "Order", id)
}

/// Appends one event to `older`'s stream in a transaction that took its id before `younger`'s
/// append committed: the log then holds a later position under an earlier id.
async fn out_of_order_pair(store: &PostgresStore, older: &str, younger: &str) {
    let mut tx = store.begin().await.expect("begin the older transaction");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *tx).await.expect("take an id");
    store
        .append_and_commit(ExpectedVersion::Any, &[Event::new(&stream(younger), "Step", json!({}))])
        .await
        .expect("the younger transaction appends");
    store
        .append(&mut tx, ExpectedVersion::Any, &[Event::new(&stream(older), "Step", json!({}))])
        .await
        .expect("the older transaction appends after it");
    tx.commit().await.expect("commit the older transaction");
}

/// The run index of each event of `log` (maximal runs of increasing positions).
fn run_indexes(log: &[PersistedEvent]) -> Vec<i64> {
    let mut run = 0;
    let mut previous = i64::MIN;
    log.iter()
        .map(|e| {
            if e.position.global_position < previous {
                run += 1;
            }
            previous = e.position.global_position;
            run
        })
        .collect()
}

/// The whole story on one store: a log with out-of-order commits, several streams, a
/// projection checkpoint in the middle, a parked event and checkpoint rows at every position;
/// then the restore, the refusal, the repair, and everything working again exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_database_is_refused_then_repaired_in_exact_log_order() {
    let db = common::postgres().await;
    let store = &db.store;
    let pool = db.schema.pool(2).await;
    sqlx::query("CREATE TABLE handled (event_id UUID PRIMARY KEY, run INT NOT NULL)")
        .execute(&pool)
        .await
        .expect("create the read model");

    // Before the projection runs: four streams, an out-of-order pair, a poison event.
    for s in 0..4 {
        let events: Vec<_> = (0..2)
            .map(|i| Event::new(&stream(&format!("s{s}")), "Step", json!({ "i": i })))
            .collect();
        store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    }
    out_of_order_pair(store, "late-a", "late-b").await;
    store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&stream("p"), "Poison", json!({}))],
        )
        .await
        .expect("append poison");
    let first_part = log_of_at_least(store, 11).await;
    assert_eq!(first_part.len(), 11);

    let model = Arc::new(ReadModel { run: AtomicI32::new(1) });
    runner(store, &model).run_until(std::future::pending()).await.expect("first run");
    let first_ids: HashSet<Uuid> = first_part.iter().map(|e| e.event_id).collect();
    assert_eq!(handled_in(&pool, 1).await, first_ids);

    // After the projection's checkpoint: more of the same, and a second out-of-order pair.
    for s in 0..4 {
        let event = Event::new(&stream(&format!("s{s}")), "Step", json!({ "i": 2 }));
        store.append_and_commit(ExpectedVersion::Exact(2), &[event]).await.expect("append");
    }
    out_of_order_pair(store, "late-c", "late-d").await;
    let before = log_of_at_least(store, 17).await;
    assert_eq!(before.len(), 17);
    let runs = run_indexes(&before);
    assert_eq!(runs.last(), Some(&2), "the log holds two out-of-order commits: {before:?}");
    let second_part: HashSet<Uuid> =
        before.iter().map(|e| e.event_id).filter(|id| !first_ids.contains(id)).collect();

    // Checkpoint rows at every event, after the last event of every transaction, and at the
    // start: the repair must map each to the same place in the log.
    for (k, event) in before.iter().enumerate() {
        let probes = [
            (format!("probe-at-{k}"), event.position),
            (format!("probe-after-{k}"), Position { global_position: i64::MAX, ..event.position }),
        ];
        for (name, position) in probes {
            sqlx::query(
                "INSERT INTO checkpoints (projection, partition_count, partition, transaction_id, \
                 global_position) VALUES ($1, 1, 0, $2, $3)",
            )
            .bind(name)
            .bind(position.transaction_id)
            .bind(position.global_position)
            .execute(&pool)
            .await
            .expect("insert a probe checkpoint");
        }
    }
    sqlx::query("INSERT INTO checkpoints (projection, partition_count, partition) VALUES ('probe-start', 1, 0)")
        .execute(&pool)
        .await
        .expect("insert the start probe");
    let parked = runner(store, &model).parked("picky").await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].stream, stream("p"));

    // On a database that was not restored the repair changes nothing.
    let checkpoints_before = checkpoint_rows(&pool).await;
    let untouched = store.repair_restore().await.expect("repair of a healthy store");
    assert_eq!(untouched, RestoreRepair::default());
    assert_eq!(
        untouched.to_string(),
        "nothing to repair: no stored transaction id is ahead of this database"
    );
    assert_eq!(log_of_at_least(store, 17).await, before);
    assert_eq!(checkpoint_rows(&pool).await, checkpoints_before);

    // The restore.
    shift_ids(&pool).await;
    let stored = before.iter().map(|e| e.position.transaction_id).max().expect("a log") + SHIFT;
    let shifted_checkpoints =
        checkpoint_rows(&pool).await.iter().filter(|c| c.3 != Position::START).count();

    // What goes wrong without the repair: catch-up sees nothing, appends conflict.
    assert!(store.read_all(Position::START, 100, &Scope::all()).await.expect("read").is_empty());
    let conflict = store
        .append_and_commit(
            ExpectedVersion::Exact(3),
            &[Event::new(&stream("s0"), "Step", json!({}))],
        )
        .await
        .expect_err("the head's id is ahead of every new transaction");
    assert!(matches!(conflict, Error::Concurrency { actual: 3, .. }), "{conflict:?}");

    // Both entry points refuse, with one line naming the fix.
    assert_refused(&store.migrate().await.expect_err("migrate must refuse"), stored);
    let refused = runner(store, &model).run_until(std::future::pending()).await;
    assert_refused(&refused.expect_err("run must refuse"), stored);
    assert!(handled_in(&pool, 2).await.is_empty());

    // The repair.
    let repair = store.repair_restore().await.expect("repair");
    // The same events in the same order; each run of increasing positions has one new id.
    let after = log_of_at_least(store, 17).await;
    assert_eq!(after.len(), 17);
    for ((old, new), run) in before.iter().zip(&after).zip(&runs) {
        assert_eq!(new.event, old.event);
        assert_eq!(new.aggregate_version, old.aggregate_version);
        assert_eq!(new.position.global_position, old.position.global_position);
        assert_eq!(new.position.transaction_id, FIRST_ID + run);
    }

    // Every checkpoint row names the same place in the log as before.
    let mut expected = Vec::new();
    for (k, event) in before.iter().enumerate() {
        let last_of_its_transaction = before
            .iter()
            .rposition(|e| e.position.transaction_id == event.position.transaction_id)
            .expect("itself");
        expected.push((format!("probe-after-{k}"), after[last_of_its_transaction].position));
        expected.push((format!("probe-at-{k}"), after[k].position));
    }
    expected.push(("probe-start".to_owned(), Position::START));
    expected.sort();
    let mut probes: Vec<(String, Position)> = checkpoint_rows(&pool)
        .await
        .into_iter()
        .filter(|c| c.0.starts_with("probe-"))
        .map(|(name, _, _, position)| (name, position))
        .collect();
    probes.sort();
    assert_eq!(probes, expected);
    let poison = after.iter().find(|e| e.event_type == "Poison").expect("the poison event");
    let parked = runner(store, &model).parked("picky").await.expect("parked");
    assert_eq!(parked.iter().map(|p| p.position).collect::<Vec<_>>(), [poison.position]);

    // Migrate and run start again; the projection resumes at its checkpoint.
    store.migrate().await.expect("migrate after the repair");
    model.run.store(2, Ordering::SeqCst);
    runner(store, &model).run_until(std::future::pending()).await.expect("second run");
    assert_eq!(handled_in(&pool, 2).await, second_part);

    // Appends to existing streams succeed, and sort after the repaired log.
    let appended = store
        .append_and_commit(
            ExpectedVersion::Exact(3),
            &[Event::new(&stream("s0"), "Step", json!({}))],
        )
        .await
        .expect("append to an existing stream");
    assert_eq!(appended.to_version, 4);
    assert!(appended.positions[0] > after[16].position);

    // The per-aggregate guard still refuses an older transaction's append.
    let mut older = store.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *older).await.expect("take an id");
    store
        .append_and_commit(
            ExpectedVersion::Exact(3),
            &[Event::new(&stream("s1"), "Step", json!({}))],
        )
        .await
        .expect("a younger transaction appends");
    let err = store
        .append(&mut older, ExpectedVersion::Any, &[Event::new(&stream("s1"), "Step", json!({}))])
        .await
        .expect_err("the older transaction must be refused");
    assert!(matches!(err, Error::Concurrency { actual: 4, .. }), "{err:?}");
    older.rollback().await.expect("rollback");

    let log = log_of_at_least(store, 19).await;
    assert_eq!(log[..17], after[..]);
    assert_eq!(
        log[17..]
            .iter()
            .map(|e| (e.stream.aggregate_id.as_str(), e.aggregate_version))
            .collect::<Vec<_>>(),
        [("s0", 4), ("s1", 4)]
    );
    model.run.store(3, Ordering::SeqCst);
    runner(store, &model).run_until(std::future::pending()).await.expect("third run");
    assert_eq!(handled_in(&pool, 3).await, log[17..].iter().map(|e| e.event_id).collect());
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM handled").fetch_one(&pool).await.expect("count");
    assert_eq!(total, 19);

    // What the repair reports.
    assert_eq!(
        (repair.repaired, repair.events, repair.transaction_ids, repair.heads),
        (true, 17, 3, 9)
    );
    assert_eq!(
        (repair.checkpoints, repair.parked, repair.counter_advanced_by),
        (u64::try_from(shifted_checkpoints).expect("count"), 1, 0)
    );
    assert_eq!(
        repair.to_string(),
        format!(
            "repaired the stored transaction ids, keeping the log order: 17 events (now 3 \
             transaction ids), 9 aggregate heads, {shifted_checkpoints} checkpoints, 1 parked event"
        )
    );

    // A second repair has nothing to do and changes nothing.
    let checkpoints = checkpoint_rows(&pool).await;
    let again = store.repair_restore().await.expect("second repair");
    assert!(!again.repaired, "{again:?}");
    assert_eq!(log_of_at_least(store, 19).await, log);
    assert_eq!(checkpoint_rows(&pool).await, checkpoints);
}

/// A log whose every event is a run of its own (positions always going backwards in log
/// order) needs more new ids than the cluster has given out: the repair first advances the
/// cluster's counter, says so, and keeps the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_advances_the_counter_when_the_log_needs_more_ids_than_it_has() {
    let db = common::postgres().await;
    let store = &db.store;
    let pool = db.schema.pool(1).await;
    let (next, _) = horizon(&pool).await;
    // More runs than ids below the counter, with a margin for the ids other tests take
    // meanwhile. Ids from a busier cluster, decreasing as positions increase.
    let count = next + 10_000;
    sqlx::query(
        "INSERT INTO events (transaction_id, bounded_context, aggregate_type, aggregate_id, \
           aggregate_version, event_id, event_type, event_version, payload, metadata, \
           partition_hash, created_at) \
         SELECT ($2 - g)::text::xid8, 'Sales', 'Order', 'o' || g, 1, gen_random_uuid(), 'Step', \
           1, '{}', '{}', g, now() \
         FROM generate_series(1, $1) AS g ORDER BY g",
    )
    .bind(count)
    .bind(SHIFT)
    .execute(&pool)
    .await
    .expect("insert events");
    sqlx::query(
        "INSERT INTO aggregate_heads SELECT 'Sales', 'Order', 'o' || g, 1, ($2 - g)::text::xid8 \
         FROM generate_series(1, $1) AS g",
    )
    .bind(count)
    .bind(SHIFT)
    .execute(&pool)
    .await
    .expect("insert heads");
    let order = "SELECT global_position FROM events ORDER BY transaction_id, global_position";
    let before: Vec<i64> = sqlx::query_scalar(order).fetch_all(&pool).await.expect("order");
    assert!(before.windows(2).all(|w| w[0] > w[1]));
    assert_refused(&store.migrate().await.expect_err("refused"), SHIFT - 1);

    let repair = store.repair_restore().await.expect("repair");
    let after: Vec<i64> = sqlx::query_scalar(order).fetch_all(&pool).await.expect("order");
    assert_eq!(after, before);
    let (next, _) = horizon(&pool).await;
    let last_id = FIRST_ID + count - 1;
    assert!(next > last_id, "the counter passed the new ids: {next} <= {last_id}");
    store.migrate().await.expect("migrate after the repair");
    let first = store.read_all(Position::START, 3, &Scope::all()).await.expect("read");
    assert_eq!(first.iter().map(|e| e.position.global_position).collect::<Vec<_>>(), before[..3]);

    let count = count.unsigned_abs();
    assert_eq!((repair.events, repair.transaction_ids, repair.heads), (count, count, count));
    assert!(repair.counter_advanced_by > 0, "{repair:?}");
    assert!(
        repair.to_string().ends_with(&format!(
            "; advanced the transaction counter by {} first",
            repair.counter_advanced_by
        )),
        "{repair}"
    );
}

struct Output {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

/// Runs the `single_worker` example (a `pupsource::main!()` binary) on `url`.
fn single_worker(dir: &Path, url: &str, args: &[&str]) -> Output {
    let output = Command::new(example_binary("single_worker"))
        .current_dir(dir)
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the single_worker example");
    Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        code: output.status.code(),
    }
}

/// Appends a `UserRegistered` event for each email, one transaction each.
async fn register(store: &PostgresStore, emails: &[&str]) {
    for email in emails {
        let user = StreamId::new("Identity", "User", *email);
        let event = Event::new(&user, "UserRegistered", json!({ "email": email }));
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("register");
    }
}

/// The emails a `single_worker` run welcomed, in order.
fn welcomed(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|line| line.split_once(" to ").and_then(|(_, rest)| rest.split(' ').next()))
        .collect()
}

/// Through the CLI: `migrate` and `run` print the one-line refusal and exit 1;
/// `repair-restore` prints its summary; the projection then resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_a_restored_database_and_repair_restore_fixes_it() {
    let schema = common::PgSchema::create().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), schema.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = PostgresStore::new(schema.pool(2).await);
    store.migrate().await.expect("migrate");
    register(&store, &["a@example.com", "b@example.com"]).await;
    let first = single_worker(dir.path(), &url, &["--until-caught-up"]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(welcomed(&first.stdout), ["a@example.com", "b@example.com"]);

    let pool = schema.pool(1).await;
    shift_ids(&pool).await;
    let stored: i64 = sqlx::query_scalar("SELECT max(transaction_id::text::bigint) FROM events")
        .fetch_one(&pool)
        .await
        .expect("largest id");
    let current = assert_refused(&store.migrate().await.expect_err("refused"), stored);
    for args in [&["migrate"][..], &["--until-caught-up"]] {
        let out = single_worker(dir.path(), &url, args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        let line = out.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{args:?}: {}", out.stderr);
        // The cluster's next id moves with other tests: take it from the line.
        let next: u64 = line
            .split_once("(next id ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no next id in {line}"));
        assert!(next >= current);
        assert_eq!(line, format!("error: {}", restored_message(stored.unsigned_abs(), next)));
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }

    let repaired = single_worker(dir.path(), &url, &["repair-restore"]);
    assert_eq!(repaired.code, Some(0), "{}", repaired.stderr);
    assert_eq!(
        repaired.stdout,
        "repaired the stored transaction ids, keeping the log order: 2 events (now 1 \
         transaction id), 2 aggregate heads, 1 checkpoint, 0 parked events\n"
    );

    register(&store, &["c@example.com"]).await;
    let resumed = single_worker(dir.path(), &url, &["--until-caught-up"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.stderr);
    assert_eq!(welcomed(&resumed.stdout), ["c@example.com"]);

    let again = single_worker(dir.path(), &url, &["repair-restore"]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        again.stdout,
        "nothing to repair: no stored transaction id is ahead of this database\n"
    );
}

/// SQLite positions carry no transaction id: the command has nothing to do there.
#[test]
fn repair_restore_on_sqlite_has_nothing_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = single_worker(dir.path(), "sqlite:pupsource.db", &["repair-restore"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "nothing to repair: no stored transaction id is ahead of this database\n"
    );
}
