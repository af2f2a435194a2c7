//! The projection engine's guarantees, proven on PostgreSQL, a SQLite file and MySQL: exactly-once
//! SQL read models under cancellation and crashes, concurrent writers, partition-count
//! changes, retries, parking, shutdown, wake-ups, status.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pupsource::partition::Partition;
use pupsource::projection::{Context, HandleFuture, Projection};
use pupsource::runner::{ErrorPolicy, RetryPolicy, Runner};
use pupsource::{
    Error, Event, EventStore, ExpectedVersion, LogEvent, Position, Scope, Store, StreamId,
};
use serde_json::json;
use tokio::sync::Notify;

on_backends!([postgres, sqlite_file, mysql], {
    exactly_once_under_random_cancellation_and_crashes,
    concurrent_writers_with_open_and_rolled_back_transactions_lose_nothing,
    partition_count_changes_4_8_3_handle_every_event_once,
    one_reader_per_projection_reads_the_log_once,
    batches_grow_with_the_backlog_unless_handlers_write_through_the_transaction,
    retries_exhausted_stop_the_projection_with_full_context,
    transient_handler_failure_is_retried_and_applied_once,
    exhausted_event_is_parked_with_its_aggregate_and_replayed,
    shutdown_during_a_batch_keeps_checkpoints_consistent,
    idle_runner_does_not_busy_loop,
    append_in_this_process_wakes_the_runner_at_once,
    status_reports_checkpoints_lag_and_errors,
    failing_partition_halts_alone_and_the_run_reports_it,
    a_reader_whose_workers_fall_behind_reads_on_from_where_it_was,
});

/// A SQL read model: events per stream, the last version seen per stream (an event out of
/// order is a handler error), and every handled event id (a second delivery violates the
/// primary key).
struct Tally {
    name: &'static str,
    partitions: u32,
    /// (aggregate id, version) → how many more times the handler fails on it.
    failures: Mutex<HashMap<(String, u64), u32>>,
    /// Successful handler calls (in memory: includes rolled-back ones).
    calls: AtomicU64,
    /// Notified when `calls` reaches the number.
    stop_at: Mutex<Option<(u64, Arc<Notify>)>>,
}

impl Tally {
    fn new(name: &'static str, partitions: u32) -> Arc<Self> {
        Arc::new(Tally {
            name,
            partitions,
            failures: Mutex::new(HashMap::new()),
            calls: AtomicU64::new(0),
            stop_at: Mutex::new(None),
        })
    }

    fn fail(&self, aggregate_id: &str, version: u64, times: u32) {
        self.failures.lock().expect("lock").insert((aggregate_id.to_owned(), version), times);
    }

    /// A future that completes once `more` further successful calls happened.
    fn after_calls(&self, more: u64) -> impl std::future::Future<Output = ()> + Send + 'static {
        let notify = Arc::new(Notify::new());
        let target = self.calls.load(Ordering::SeqCst) + more;
        *self.stop_at.lock().expect("lock") = Some((target, Arc::clone(&notify)));
        async move { notify.notified().await }
    }

    async fn apply(
        &self,
        event: &LogEvent,
        cx: &mut Context<'_>,
    ) -> Result<(), pupsource::projection::HandlerError> {
        let key = (event.stream.aggregate_id.clone(), event.aggregate_version);
        if let Some(left) = self.failures.lock().expect("lock").get_mut(&key)
            && *left > 0
        {
            *left -= 1;
            return Err(format!("injected failure on {}/v{}", key.0, key.1).into());
        }
        let stream = event.stream.aggregate_id.as_str();
        let version = i64::try_from(event.aggregate_version)?;
        let mysql = cx.mysql().is_some();
        let select = common::placeholders(
            mysql,
            "SELECT last_version FROM counts WHERE projection = $1 AND stream = $2",
        );
        let last: Option<i64> = pupsource::with_transaction!(cx.transaction(), |c| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(select.clone()))
                .bind(self.name)
                .bind(stream)
                .fetch_optional(c)
                .await?
        });
        if last.unwrap_or(0) != version - 1 {
            return Err(format!("{stream}: version {version} handled after {last:?}").into());
        }
        let upsert = if mysql {
            "INSERT INTO counts (projection, stream, n, last_version) VALUES (?, ?, 1, ?) \
             ON DUPLICATE KEY UPDATE n = n + 1, last_version = VALUES(last_version)"
        } else {
            "INSERT INTO counts (projection, stream, n, last_version) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (projection, stream) DO UPDATE SET n = counts.n + 1, \
             last_version = excluded.last_version"
        };
        let insert = common::placeholders(
            mysql,
            "INSERT INTO handled (projection, event_id) VALUES ($1, $2)",
        );
        pupsource::with_transaction!(cx.transaction(), |c| {
            sqlx::query(upsert)
                .bind(self.name)
                .bind(stream)
                .bind(version)
                .execute(c)
                .await?
                .rows_affected()
        });
        pupsource::with_transaction!(cx.transaction(), |c| {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(self.name)
                .bind(event.event_id.to_string())
                .execute(c)
                .await?
                .rows_affected()
        });
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((target, notify)) = &*self.stop_at.lock().expect("lock")
            && calls >= *target
        {
            notify.notify_one();
        }
        Ok(())
    }
}

impl Projection for Tally {
    fn name(&self) -> &str {
        self.name
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, cx: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(self.apply(event, cx))
    }
}

async fn create_read_model(store: &Store) {
    let ddl = "CREATE TABLE counts (projection VARCHAR(100) NOT NULL, \
               stream VARCHAR(200) NOT NULL, n BIGINT NOT NULL, \
               last_version BIGINT NOT NULL, PRIMARY KEY (projection, stream)); \
               CREATE TABLE handled (projection VARCHAR(100) NOT NULL, \
               event_id VARCHAR(36) NOT NULL, PRIMARY KEY (projection, event_id));";
    on_pool!(store, |pool| sqlx::raw_sql(ddl)
        .execute(pool)
        .await
        .expect("create read model")
        .rows_affected());
}

/// Events per stream in the read model.
async fn counts(store: &Store, projection: &str) -> BTreeMap<String, i64> {
    let sql = common::placeholders(
        common::is_mysql(store),
        "SELECT stream, n FROM counts WHERE projection = $1",
    );
    let rows: Vec<(String, i64)> =
        on_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(projection)
            .fetch_all(pool)
            .await
            .expect("counts"));
    rows.into_iter().collect()
}

async fn handled_ids(store: &Store, projection: &str) -> HashSet<String> {
    let sql = common::placeholders(
        common::is_mysql(store),
        "SELECT event_id FROM handled WHERE projection = $1",
    );
    let rows: Vec<String> =
        on_pool!(store, |pool| sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(projection)
            .fetch_all(pool)
            .await
            .expect("handled"));
    rows.into_iter().collect()
}

/// Appends `per_stream` events to each of `streams` streams, `per_append` at a time, streams
/// interleaved. Returns the true count per stream and every event id.
async fn append_workload<S: EventStore>(
    store: &S,
    prefix: &str,
    streams: usize,
    per_stream: usize,
    per_append: usize,
) -> (BTreeMap<String, i64>, HashSet<String>) {
    let mut truth = BTreeMap::new();
    let mut ids = HashSet::new();
    for round in 0..per_stream.div_ceil(per_append) {
        for s in 0..streams {
            let stream = StreamId::new("Test", "Thing", format!("{prefix}{s}"));
            let n = per_append.min(per_stream - round * per_append);
            let events: Vec<_> =
                (0..n).map(|i| Event::new(&stream, "Step", json!({ "i": i }))).collect();
            store.append_and_commit(ExpectedVersion::Any, &events).await.expect("append");
            *truth.entry(stream.aggregate_id.clone()).or_insert(0) +=
                i64::try_from(n).expect("small");
            ids.extend(events.iter().map(|e| e.event_id.to_string()));
        }
    }
    (truth, ids)
}

/// A small deterministic random number generator (the seed is printed on failure).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// 20,000 events, a SQL read model, and a runner that is shut down or aborted (as a crash
/// would) at random moments, over and over: the read model ends exactly right.
async fn exactly_once_under_random_cancellation_and_crashes<S: EventStore + Into<Store>>(store: S) {
    let (truth, ids) = append_workload(&store, "s", 200, 100, 10).await;
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("tally", 4);
    let seed = 0x5eed_u64 ^ u64::from(std::process::id());
    let mut rng = Lcg(seed);
    for round in 0..16 {
        let runner = Runner::new(store.clone())
            .projection(tally.clone())
            .batch_size(1 + usize::try_from(rng.below(150)).expect("small"))
            .until_caught_up();
        let after = Duration::from_millis(20 + rng.below(150));
        if round % 2 == 0 {
            runner
                .run_until(tokio::time::sleep(after))
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        } else {
            let task = tokio::spawn(async move { runner.run_until(std::future::pending()).await });
            tokio::time::sleep(after).await;
            task.abort();
            if let Ok(result) = task.await {
                result.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            }
        }
    }
    Runner::new(store.clone())
        .projection(tally.clone())
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert_eq!(counts(&store, "tally").await, truth, "seed {seed}");
    assert_eq!(handled_ids(&store, "tally").await, ids, "seed {seed}");
}

/// 8 writers append while the projection runs; some keep their transaction open for a while
/// (so later transactions commit first), some roll back. Every committed event is handled
/// exactly once, each stream in version order (the handler checks it).
async fn concurrent_writers_with_open_and_rolled_back_transactions_lose_nothing<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let runner_store: Store = store.clone().into();
    create_read_model(&runner_store).await;
    let tally = Tally::new("writers", 3);
    let running = common::Running::start(
        &Runner::new(runner_store.clone()).projection(tally.clone()).batch_size(20),
    );

    let mut writers = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(w + 1);
            let mut committed = Vec::new();
            for _ in 0..40 {
                let stream = StreamId::new("Test", "Thing", format!("w{}", rng.below(12)));
                let n = 1 + rng.below(3);
                let events: Vec<_> =
                    (0..n).map(|_| Event::new(&stream, "Step", json!({}))).collect();
                let mut tx = store.begin().await.expect("begin");
                match store.append(&mut tx, ExpectedVersion::Any, &events).await {
                    Ok(_) => {}
                    Err(Error::Concurrency { .. }) => {
                        tx.rollback().await.expect("rollback");
                        continue;
                    }
                    Err(other) => panic!("writer {w}: {other}"),
                }
                tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
                if rng.below(5) == 0 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    committed.extend(
                        events
                            .iter()
                            .map(|e| (e.stream.aggregate_id.clone(), e.event_id.to_string())),
                    );
                }
            }
            committed
        }));
    }
    let mut truth: BTreeMap<String, i64> = BTreeMap::new();
    let mut ids = HashSet::new();
    for writer in writers {
        for (stream, id) in writer.await.expect("writer") {
            *truth.entry(stream).or_insert(0) += 1;
            ids.insert(id);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handled_ids(&runner_store, "writers").await.len() < ids.len() && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await.expect("runner");
    assert_eq!(handled_ids(&runner_store, "writers").await, ids);
    assert_eq!(counts(&runner_store, "writers").await, truth);
}

/// Run with 4 partitions (stopped part-way), more events, 8 partitions (stopped part-way),
/// then 3 until caught up: every event handled exactly once, old layouts retired.
async fn partition_count_changes_4_8_3_handle_every_event_once<S: EventStore + Into<Store>>(
    store: S,
) {
    let (mut truth, mut ids) = append_workload(&store, "a", 60, 50, 5).await;
    let runner_store: Store = store.clone().into();
    create_read_model(&runner_store).await;
    let tally = Tally::new("layouts", 4);
    let run = |partitions: u32, stop: Option<u64>| {
        let runner = Runner::new(runner_store.clone())
            .projection(tally.clone())
            .partitions(partitions)
            .batch_size(25)
            .until_caught_up();
        let shutdown = stop.map(|n| tally.after_calls(n));
        async move {
            match shutdown {
                Some(shutdown) => runner.run_until(shutdown).await,
                None => runner.run_until(std::future::pending()).await,
            }
            .expect("run");
        }
    };
    run(4, Some(1_000)).await;
    let (more, more_ids) = append_workload(&store, "b", 40, 25, 5).await;
    truth.extend(more);
    ids.extend(more_ids);
    run(8, Some(1_200)).await;
    let handled_so_far = handled_ids(&runner_store, "layouts").await.len();
    assert!(
        handled_so_far < ids.len(),
        "the 8-partition run must stop part-way ({handled_so_far})"
    );
    run(3, None).await;

    assert_eq!(counts(&runner_store, "layouts").await, truth);
    assert_eq!(handled_ids(&runner_store, "layouts").await, ids);
    let layouts: Vec<u32> = Runner::new(runner_store.clone())
        .projection(tally.clone())
        .status()
        .await
        .expect("status")
        .projections[0]
        .partitions
        .iter()
        .map(|p| p.partition.count)
        .collect();
    assert_eq!(layouts, [3, 3, 3], "older layouts are retired once passed");
}

/// 8 partitions, 2,000 events: every event is read from the log once, not once per partition.
async fn one_reader_per_projection_reads_the_log_once<S: EventStore + Into<Store>>(store: S) {
    let (truth, _) = append_workload(&store, "r", 40, 50, 10).await;
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("reads", 8);
    let runner =
        Runner::new(store.clone()).projection(tally.clone()).batch_size(100).until_caught_up();
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(counts(&store, "reads").await, truth);
    // Each event was read from the log once, not once per partition.
    assert_eq!(runner.metrics().events_read(), 2_000);
    assert_eq!(runner.metrics().events_handled(), 2_000);
}

/// Handles every event of the log in memory, recording its position; its first event waits
/// until `gate` is opened.
#[derive(Default)]
struct Gated {
    gate: Notify,
    handled: Mutex<Vec<Position>>,
}

impl Projection for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(async move {
            if self.handled.lock().expect("lock").is_empty() {
                self.gate.notified().await;
            }
            self.handled.lock().expect("lock").push(event.position);
            Ok(())
        })
    }
}

/// Catches up with 5,000 events (in pages of at most 1,000), checks that every event was
/// handled once, and returns how many queries the reader sent.
async fn catch_up_queries<S: EventStore + Into<Store>>(store: S) -> u64 {
    append_workload(&store, "q", 50, 100, 100).await;
    let in_memory = Arc::new(InMemory::default());
    let runner =
        Runner::new(store.into()).projection(in_memory.clone()).partitions(8).until_caught_up();
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(in_memory.0.load(Ordering::Relaxed), 5_000);
    assert_eq!(runner.metrics().events_read(), 5_000);
    runner.metrics().log_reads()
}

/// On a server, one query serves up to ten of the reader's pages: a catch-up of 5,000 events
/// sends about two (the first page is small until the reader knows the events' size), where a
/// query per page sends six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_serves_several_pages_on_postgresql() {
    let db = common::postgres().await;
    let queries = catch_up_queries(db.store.clone()).await;
    assert!(queries <= 3, "{queries} queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_query_serves_several_pages_on_mysql() {
    let db = common::mysql().await;
    let queries = catch_up_queries(db.store.clone()).await;
    assert!(queries <= 3, "{queries} queries");
}

/// SQLite reads in the process: the reader queries the log for each page (the sixth finds the
/// rest of the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queries_the_log_for_each_page() {
    let (store, _dir) = common::sqlite_file().await;
    assert_eq!(catch_up_queries(store).await, 6);
}

/// 5,000 events, one partition, and a handler that holds its first event: the reader fills
/// the partition's queue and waits for room. On a server, a query kept open from page to page
/// is closed once a page has waited with it open for a second; once the handler goes on, the
/// reader reads on from the last event it handed out, with a new query. Every event is
/// handled once, in log order.
async fn a_reader_whose_workers_fall_behind_reads_on_from_where_it_was<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    append_workload(&store, "b", 50, 100, 100).await;
    let gated = Arc::new(Gated::default());
    let runner = Runner::new(store.into()).projection(gated.clone()).until_caught_up();
    let metrics = runner.metrics();
    let run = tokio::spawn(async move { runner.run_until(std::future::pending()).await });
    // The first pages hold 64 and 576 events (the first asks for what 4 MiB holds at 64 KiB
    // an event, and is its query's whole limit of 640), then 1,000 from a second query: once
    // 1,640 events were read, the queue of 1,000 is full (or, if the handler took the first
    // two pages at once, fills with the next page).
    common::eventually("the reader waits for room", Duration::from_secs(30), || async {
        (metrics.events_read() >= 1_640).then_some(())
    })
    .await;
    // What is tested is the reader's time limit: the handler holds on past it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    gated.gate.notify_one();
    run.await.expect("run task").expect("run");
    let handled = gated.handled.lock().expect("lock").clone();
    assert_eq!(handled.len(), 5_000);
    assert!(handled.windows(2).all(|w| w[0] < w[1]), "in log order, each once");
    // Two queries for 5,000 events, unless the second was closed while it waited.
    assert!(metrics.log_reads() >= 3, "{} queries", metrics.log_reads());
}

/// Counts its events in memory: never asks for the transaction.
#[derive(Default)]
struct InMemory(AtomicU64);

impl Projection for InMemory {
    fn name(&self) -> &str {
        "in_memory"
    }

    fn handle<'a>(&'a self, _: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// 2,000 events: a SQL read model commits every 100 events at most (every 10 with a batch
/// size of 10), while a projection that writes nothing through the transaction catches up in
/// a few transactions, unless a batch size caps every transaction.
async fn batches_grow_with_the_backlog_unless_handlers_write_through_the_transaction<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let (truth, _) = append_workload(&store, "g", 40, 50, 50).await;
    let store: Store = store.into();
    create_read_model(&store).await;
    let transactions = |runner: &Runner| runner.metrics().batches();
    for (name, batch_size, at_least) in [("sql_adaptive", None, 20), ("sql_of_10", Some(10), 200)] {
        let tally = Tally::new(name, 1);
        let mut runner = Runner::new(store.clone()).projection(tally.clone()).until_caught_up();
        if let Some(batch_size) = batch_size {
            runner = runner.batch_size(batch_size);
        }
        runner.run_until(std::future::pending()).await.expect("run");
        assert_eq!(counts(&store, name).await, truth);
        assert_eq!(runner.metrics().events_handled(), 2_000);
        assert!(
            transactions(&runner) >= at_least,
            "{name}: {} transactions",
            transactions(&runner)
        );
    }

    let in_memory = Arc::new(InMemory::default());
    let runner = Runner::new(store.clone()).projection(in_memory.clone()).until_caught_up();
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(in_memory.0.load(Ordering::Relaxed), 2_000);
    assert_eq!(runner.metrics().events_handled(), 2_000);
    assert!(transactions(&runner) <= 10, "{} transactions", transactions(&runner));

    let in_memory = Arc::new(InMemory::default());
    let runner =
        Runner::new(store.clone()).projection(in_memory.clone()).batch_size(10).until_caught_up();
    runner.rebuild("in_memory").await.expect("rebuild");
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(in_memory.0.load(Ordering::Relaxed), 2_000);
    assert!(transactions(&runner) >= 200, "{} transactions", transactions(&runner));
}

async fn retries_exhausted_stop_the_projection_with_full_context<S: EventStore + Into<Store>>(
    store: S,
) {
    let b = StreamId::new("Test", "Thing", "b");
    let a = StreamId::new("Test", "Thing", "a");
    store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&b, "Step", json!({})), Event::new(&b, "Step", json!({}))],
        )
        .await
        .expect("b");
    let appended = store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[
                Event::new(&a, "Step", json!({})),
                Event::new(&a, "Broken", json!({})),
                Event::new(&a, "Step", json!({})),
            ],
        )
        .await
        .expect("a");
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("stopper", 1);
    tally.fail("a", 2, u32::MAX);
    let runner = Runner::new(store.clone())
        .projection(tally.clone())
        .retry(quick_retry(3))
        .until_caught_up();
    let err = runner.run_until(std::future::pending()).await.expect_err("must stop");
    match &err {
        Error::Handler { projection, partition, position, event_type, attempts, source } => {
            assert_eq!(projection, "stopper");
            assert_eq!(*partition, Partition { index: 0, count: 1 });
            assert_eq!(*position, appended.positions[1]);
            assert_eq!(event_type, "Broken");
            assert_eq!(*attempts, 3);
            assert_eq!(source.to_string(), "injected failure on a/v2");
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "projection `stopper` partition 0/1 failed on event `Broken` at position {} after 3 attempts: injected failure on a/v2",
            appended.positions[1]
        )
    );
    assert_eq!(
        counts(&store, "stopper").await,
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)])
    );
    let status = runner.status().await.expect("status");
    let partition = &status.projections[0].partitions[0];
    assert_eq!(partition.checkpoint, appended.positions[0]);
    assert_eq!(partition.lag, 2);
    assert_eq!(partition.last_error.as_deref(), Some("injected failure on a/v2"));
}

async fn transient_handler_failure_is_retried_and_applied_once<S: EventStore + Into<Store>>(
    store: S,
) {
    let (truth, ids) = append_workload(&store, "t", 5, 6, 3).await;
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("transient", 2);
    tally.fail("t3", 4, 2);
    Runner::new(store.clone())
        .projection(tally.clone())
        .retry(quick_retry(5))
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("retries succeed");
    assert_eq!(counts(&store, "transient").await, truth);
    assert_eq!(handled_ids(&store, "transient").await, ids);
}

async fn exhausted_event_is_parked_with_its_aggregate_and_replayed<S: EventStore + Into<Store>>(
    store: S,
) {
    let (a, b) = (StreamId::new("Test", "Thing", "a"), StreamId::new("Test", "Thing", "b"));
    let mut positions = HashMap::new();
    for i in 1..=4u64 {
        for stream in [&a, &b] {
            let r = store
                .append_and_commit(
                    ExpectedVersion::Any,
                    &[Event::new(stream, "Step", json!({ "i": i }))],
                )
                .await
                .expect("append");
            positions.insert((stream.aggregate_id.clone(), i), r.positions[0]);
        }
    }
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("parker", 1);
    tally.fail("a", 2, u32::MAX);
    let runner = Runner::new(store.clone())
        .projection(tally.clone())
        .retry(quick_retry(2))
        .on_error(ErrorPolicy::Park)
        .until_caught_up();
    runner.run_until(std::future::pending()).await.expect("parking keeps the projection going");
    assert_eq!(
        counts(&store, "parker").await,
        BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 4)])
    );

    let parked = runner.parked("parker").await.expect("parked");
    let summary: Vec<_> = parked
        .iter()
        .map(|p| (p.stream.aggregate_id.as_str(), p.position, p.error.clone(), p.attempts))
        .collect();
    assert_eq!(
        summary,
        [
            ("a", positions[&("a".to_owned(), 2)], Some("injected failure on a/v2".to_owned()), 2),
            ("a", positions[&("a".to_owned(), 3)], None, 0),
            ("a", positions[&("a".to_owned(), 4)], None, 0),
        ]
    );
    assert_eq!(runner.status().await.expect("status").projections[0].parked, 3);

    // Still failing: replay stops at the first event and keeps it parked.
    let err = runner.replay_parked("parker").await.expect_err("still broken");
    assert!(matches!(err, Error::Handler { .. }), "{err:?}");
    assert_eq!(runner.parked("parker").await.expect("parked").len(), 3);

    tally.fail("a", 2, 0);
    assert_eq!(runner.replay_parked("parker").await.expect("replay"), 3);
    assert!(runner.parked("parker").await.expect("parked").is_empty());
    assert_eq!(
        counts(&store, "parker").await,
        BTreeMap::from([("a".to_owned(), 4), ("b".to_owned(), 4)])
    );

    // The aggregate flows normally again.
    store
        .append_and_commit(ExpectedVersion::Exact(4), &[Event::new(&a, "Step", json!({}))])
        .await
        .expect("append");
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(counts(&store, "parker").await["a"], 5);
}

/// On `sqlite::memory:`, whose pool has one connection, a parked event is replayed at once
/// (not after waiting for a second connection): the handler sees it once, and its parked row
/// is removed in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_event_is_replayed_on_sqlite_memory() {
    let store: Store = common::sqlite_memory().await.into();
    let stream = StreamId::new("Test", "Thing", "m");
    let event = Event::new(&stream, "Step", json!({}));
    let event_id = event.event_id.to_string();
    let appended =
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
    create_read_model(&store).await;
    let tally = Tally::new("memory", 1);
    tally.fail("m", 1, u32::MAX);
    let runner = Runner::new(store.clone())
        .projection(tally.clone())
        .retry(quick_retry(1))
        .on_error(ErrorPolicy::Park)
        .until_caught_up();
    runner.run_until(std::future::pending()).await.expect("parking keeps the projection going");
    let parked = runner.parked("memory").await.expect("parked");
    assert_eq!(parked.iter().map(|p| p.position).collect::<Vec<_>>(), appended.positions);

    tally.fail("m", 1, 0);
    let replayed = tokio::time::timeout(Duration::from_secs(5), runner.replay_parked("memory"))
        .await
        .expect("the replay does not wait for a second connection")
        .expect("replay");
    assert_eq!(replayed, 1);
    assert!(runner.parked("memory").await.expect("parked").is_empty());
    assert_eq!(tally.calls.load(Ordering::SeqCst), 1, "the handler saw the event once");
    assert_eq!(counts(&store, "memory").await, BTreeMap::from([("m".to_owned(), 1)]));
    assert_eq!(handled_ids(&store, "memory").await, HashSet::from([event_id]));
}

/// Shutdown requested in the middle of a batch: the batch in flight is finished (not half
/// applied), the checkpoint matches the read model exactly, and a restart completes the rest.
async fn shutdown_during_a_batch_keeps_checkpoints_consistent<S: EventStore + Into<Store>>(
    store: S,
) {
    let (truth, _) = append_workload(&store, "x", 10, 10, 10).await;
    let log = common::log_of_at_least(&store, 100).await;
    let store: Store = store.into();
    create_read_model(&store).await;
    let tally = Tally::new("shutdown", 1);
    let runner =
        Runner::new(store.clone()).projection(tally.clone()).batch_size(10).until_caught_up();
    runner.run_until(tally.after_calls(15)).await.expect("run");

    let checkpoint = runner.status().await.expect("status").projections[0].partitions[0].checkpoint;
    let handled: i64 = counts(&store, "shutdown").await.values().sum();
    let upto = log.iter().filter(|e| e.position <= checkpoint).count();
    assert_eq!(usize::try_from(handled).expect("count"), upto, "read model and checkpoint agree");
    assert!(upto >= 15, "the batch in flight was finished, not dropped ({upto})");
    assert!(upto < 100, "the runner stopped before the end ({upto})");

    runner.run_until(std::future::pending()).await.expect("resume");
    assert_eq!(counts(&store, "shutdown").await, truth);
}

/// An idle runner polls with backoff: over a second it issues a handful of queries.
async fn idle_runner_does_not_busy_loop<S: EventStore + Into<Store>>(store: S) {
    let store: Store = store.into();
    create_read_model(&store).await;
    let runner = Runner::new(store.clone())
        .projection(Tally::new("idle", 4))
        .poll_interval(Duration::from_millis(100));
    let metrics = runner.metrics();
    let running = common::Running::start(&runner);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = metrics.log_reads();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during_one_idle_second = metrics.log_reads() - before;
    running.stop().await.expect("run");
    assert!(before >= 1, "the runner polled");
    assert!(during_one_idle_second <= 12, "{during_one_idle_second} reads in one idle second");
}

/// With polling backed off to several seconds, an append of this process reaches the handler
/// without waiting for the next poll.
async fn append_in_this_process_wakes_the_runner_at_once<S: EventStore + Into<Store>>(store: S) {
    let runner_store: Store = store.clone().into();
    create_read_model(&runner_store).await;
    let tally = Tally::new("wake", 2);
    let runner = Runner::new(runner_store.clone())
        .projection(tally.clone())
        .poll_interval(Duration::from_secs(60));
    let metrics = runner.metrics();
    let running = common::Running::start(&runner);
    // 13 empty polls: the reader now waits 4 s or more before the next one.
    while metrics.log_reads() < 13 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handled = tally.after_calls(1);
    let appended_at = Instant::now();
    store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&StreamId::new("Test", "Thing", "w"), "Step", json!({}))],
        )
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(2), handled)
        .await
        .expect("woken without waiting for the poll");
    assert!(appended_at.elapsed() < Duration::from_secs(2));
    running.stop().await.expect("run");
}

async fn status_reports_checkpoints_lag_and_errors<S: EventStore + Into<Store>>(store: S) {
    let (_, _) = append_workload(&store, "st", 10, 2, 2).await;
    let runner_store: Store = store.clone().into();
    create_read_model(&runner_store).await;
    let tally = Tally::new("status", 2);
    let runner = Runner::new(runner_store.clone()).projection(tally.clone()).until_caught_up();
    assert!(
        runner.status().await.expect("status").projections[0].partitions.is_empty(),
        "no run yet"
    );
    runner.run_until(std::future::pending()).await.expect("run");
    let status = runner.status().await.expect("status");
    assert_eq!(status.projections[0].partitions.len(), 2);
    assert!(status.projections[0].partitions.iter().all(|p| p.lag == 0 && p.last_error.is_none()));

    let (more, _) = append_workload(&store, "late", 7, 1, 1).await;
    let mut expected_lag = [0u64; 2];
    for stream in more.keys() {
        expected_lag[pupsource::partition::partition_of(
            pupsource::partition::partition_hash(stream),
            2,
        ) as usize] += 1;
    }
    let status = runner.status().await.expect("status");
    let lag: Vec<u64> = status.projections[0].partitions.iter().map(|p| p.lag).collect();
    assert_eq!(lag, expected_lag);

    if let Store::Postgres(pg) = &runner_store {
        // A transaction holding an id is the fence; status shows it, at least as old as ours.
        let mut open = pg.pool().begin().await.expect("begin");
        sqlx::query("SELECT pg_current_xact_id()").execute(&mut *open).await.expect("xid");
        let opened = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fence =
            runner.status().await.expect("status").fence.expect("a transaction is in flight");
        let age = fence.age.expect("the age of a session of the same role is known");
        assert!(age >= opened.elapsed() - Duration::from_millis(5), "{fence:?}");
        open.rollback().await.expect("rollback");
    } else {
        assert!(status.fence.is_none());
    }
}

/// A partition whose handler fails for good halts alone: the projection's other partition and
/// the other projection go on (also with events appended after the failure), status names
/// the error, and the run reports it when it stops.
async fn failing_partition_halts_alone_and_the_run_reports_it<S: EventStore + Into<Store>>(
    source: S,
) {
    // Streams f0..f7: with 2 partitions both get some (the hash is fixed, so this is too).
    let (_, first_ids) = append_workload(&source, "f", 8, 2, 1).await;
    let store: Store = source.clone().into();
    create_read_model(&store).await;
    let bad = Tally::new("bad", 2);
    bad.fail("f0", 1, u32::MAX);
    let poisoned =
        pupsource::partition::partition_of(pupsource::partition::partition_hash("f0"), 2);
    let healthy_streams: HashSet<String> = (0..8)
        .map(|s| format!("f{s}"))
        .filter(|s| {
            pupsource::partition::partition_of(pupsource::partition::partition_hash(s), 2)
                != poisoned
        })
        .collect();
    assert!(!healthy_streams.is_empty() && healthy_streams.len() < 8, "{healthy_streams:?}");
    let runner = Runner::new(store.clone())
        .projection(Tally::new("good", 2))
        .projection(bad)
        .retry(quick_retry(2))
        .poll_interval(Duration::from_millis(20));
    let running = common::Running::start(&runner);

    // The halt is recorded; the healthy partition of `bad` catches up meanwhile.
    let halted = common::eventually("the halt is recorded", Duration::from_secs(30), || async {
        let status = runner.status().await.expect("status");
        let bad = status.projections.iter().find(|p| p.name == "bad").expect("bad");
        let failing = bad.partitions.iter().find(|p| p.partition.index == poisoned)?;
        let healthy = bad.partitions.iter().find(|p| p.partition.index != poisoned)?;
        failing.last_error.clone().filter(|_| healthy.lag == 0)
    })
    .await;
    assert!(halted.contains("injected"), "status names the handler error");
    let bad_counts = counts(&store, "bad").await;
    assert_eq!(bad_counts.keys().cloned().collect::<HashSet<_>>(), healthy_streams);

    // The process goes on: new events reach `good`.
    let (_, more_ids) = append_workload(&source, "g", 4, 1, 1).await;
    let all: HashSet<String> = first_ids.union(&more_ids).cloned().collect();
    common::eventually(
        "the good projection handles events appended after the halt",
        Duration::from_secs(30),
        || async { (handled_ids(&store, "good").await == all).then_some(()) },
    )
    .await;

    let err = running.stop().await.expect_err("the halted partition is reported");
    assert!(
        matches!(&err, Error::Handler { projection, partition, .. }
            if projection == "bad" && partition.index == poisoned),
        "{err:?}"
    );
}

#[tokio::test]
async fn runner_rejects_empty_and_duplicate_projection_sets() {
    let store = common::sqlite_memory().await;
    let err =
        Runner::new(store.clone()).run_until(std::future::pending()).await.expect_err("empty");
    assert!(matches!(err, Error::NoProjections), "{err:?}");
    let err = Runner::new(store.clone())
        .projection(Tally::new("same", 1))
        .projection(Tally::new("same", 2))
        .run_until(std::future::pending())
        .await
        .expect_err("duplicate");
    assert_eq!(
        err.to_string(),
        "two projections are named `same`; projection names must be unique"
    );
    let err = Runner::new(store)
        .projection(Tally::new("zero", 1))
        .partitions(0)
        .run_until(std::future::pending())
        .await
        .expect_err("zero");
    assert!(
        matches!(
            err,
            Error::InvalidInput(pupsource::InvalidInput::PartitionCount { count: 0, .. })
        ),
        "{err:?}"
    );
}

/// Another process's append (here: a second store with its own pool and no shared memory)
/// reaches the runner through the coalesced PostgreSQL `NOTIFY` hint, not the next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_in_another_process_wakes_the_runner_through_notify() {
    let db = common::postgres().await;
    let runner_store: Store = db.store.clone().into();
    create_read_model(&runner_store).await;
    let tally = Tally::new("notify", 1);
    let runner =
        Runner::new(runner_store).projection(tally.clone()).poll_interval(Duration::from_secs(60));
    let metrics = runner.metrics();
    let running = common::Running::start(&runner);
    while metrics.log_reads() < 13 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let other_process = pupsource::PostgresStore::new(db.schema.pool(2).await);
    let handled = tally.after_calls(1);
    other_process
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&StreamId::new("Test", "Thing", "n"), "Step", json!({}))],
        )
        .await
        .expect("append");
    tokio::time::timeout(Duration::from_secs(2), handled)
        .await
        .expect("woken by NOTIFY, not by the poll");
    running.stop().await.expect("run");
}

/// PostgreSQL integers are decoded without sqlx's type check per value; the type of each
/// integer column is checked once per query instead. A column changed behind the store's back
/// to a type that is not an integer (here `attempts`, to text: `2` is stored as the byte
/// `'2'`) fails the read and names the column, rather than reading a wrong number (50).
#[tokio::test]
async fn an_integer_column_changed_to_another_type_fails_the_read_and_names_it() {
    let db = common::postgres().await;
    let store: Store = db.store.clone().into();
    create_read_model(&store).await;
    let stream = StreamId::new("Test", "Thing", "a");
    store
        .append_and_commit(ExpectedVersion::NoStream, &[Event::new(&stream, "Step", json!({}))])
        .await
        .expect("append");
    let tally = Tally::new("typed", 1);
    tally.fail("a", 1, u32::MAX);
    let runner = Runner::new(store)
        .projection(tally)
        .retry(quick_retry(2))
        .on_error(ErrorPolicy::Park)
        .until_caught_up();
    runner.run_until(std::future::pending()).await.expect("the event is parked");
    let attempts: Vec<u32> =
        runner.parked("typed").await.expect("parked").iter().map(|p| p.attempts).collect();
    assert_eq!(attempts, [2]);

    let pool = db.schema.pool(1).await;
    sqlx::query("ALTER TABLE dead_letters ALTER COLUMN attempts TYPE text")
        .execute(&pool)
        .await
        .expect("alter");
    // Read through connections of their own: the runner's hold the statement prepared for
    // the old type, which PostgreSQL refuses to run now ("cached plan must not change result
    // type").
    let fresh = Runner::new(pupsource::PostgresStore::new(pool)).projection(Tally::new("typed", 1));
    let err = fresh.parked("typed").await.expect_err("attempts is no integer column now");
    assert_eq!(
        err.to_string(),
        "database error: error occurred while decoding column attempts: expected an integer \
         type (INT2, INT4, INT8, XID8), found TEXT"
    );
}

/// Schema version 1 of `Renamed`, still in the log.
#[derive(serde::Serialize, serde::Deserialize, pupsource::DomainEvent)]
#[event(context = "Shop", aggregate = "Item", name = "Renamed")]
struct RenamedV1 {
    name: String,
}

/// The current version: a v1 payload is decoded as `RenamedV1` and upcast.
#[derive(serde::Serialize, serde::Deserialize, pupsource::DomainEvent)]
#[event(context = "Shop", aggregate = "Item", version = 2, upcast_from = RenamedV1)]
struct Renamed {
    first: String,
    last: String,
}

impl From<RenamedV1> for Renamed {
    fn from(old: RenamedV1) -> Self {
        let (first, last) = old.name.split_once(' ').unwrap_or((&old.name, ""));
        Renamed { first: first.to_owned(), last: last.to_owned() }
    }
}

/// Records each decoded event: its stored version, its fields, a metadata field.
#[pupsource::projection(events(Renamed))]
#[derive(Default)]
struct Names(Mutex<Vec<String>>);

impl pupsource::Handle<Renamed> for Names {
    async fn handle(
        &self,
        event: pupsource::Envelope<Renamed>,
        _: &mut Context<'_>,
    ) -> pupsource::HandlerResult {
        let line = format!(
            "v{} {}/{} by {}",
            event.event_version, event.first, event.last, event.metadata["by"]
        );
        self.0.lock().expect("lock").push(line);
        Ok(())
    }
}

/// A payload stored by another writer with a repeated key (PostgreSQL's `json` and SQLite keep
/// the text as written) decodes in a typed projection as it does from a stored value: the
/// last of the repeated keys wins, and the handler is not failed for it.
#[tokio::test]
async fn a_payload_with_a_repeated_key_decodes_as_its_stored_value_does() {
    use pupsource::DomainEvent as _;
    let store = common::sqlite_memory().await;
    let event =
        Renamed { first: "Grace".into(), last: "Hopper".into() }.to_event("i1").expect("v2");
    store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
    let repeated = r#"{"first":"Grace","last":"Jones","last":"Hopper"}"#;
    let updated = sqlx::query("UPDATE events SET payload = ?1")
        .bind(repeated)
        .execute(store.pool())
        .await
        .expect("rewrite the payload");
    assert_eq!(updated.rows_affected(), 1);
    let stored = store.read_all(Position::START, 10, &Scope::all()).await.expect("read");
    assert_eq!(Renamed::decode(&stored[0]).expect("decode the stored value").last, "Hopper");

    let names = Arc::new(Names::default());
    let runner = Runner::new(store).projection(names.clone()).until_caught_up();
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(*names.0.lock().expect("lock"), ["v2 Grace/Hopper by null"]);
}

/// A typed projection decodes each payload from the stored JSON text straight into its type,
/// upcasting an older schema version, with the metadata decoded beside it.
#[tokio::test]
async fn typed_projections_decode_stored_text_and_upcast_old_versions() {
    use pupsource::DomainEvent as _;
    let store = common::sqlite_memory().await;
    let old = RenamedV1 { name: "Ada Lovelace".into() }.to_event("i1").expect("v1");
    let new = Renamed { first: "Grace".into(), last: "Hopper".into() }.to_event("i1").expect("v2");
    let events = [old, new].map(|e| e.with_metadata(json!({ "by": "clerk" })));
    store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");

    let names = Arc::new(Names::default());
    let runner = Runner::new(store).projection(names.clone()).until_caught_up();
    runner.run_until(std::future::pending()).await.expect("run");
    assert_eq!(
        *names.0.lock().expect("lock"),
        ["v1 Ada/Lovelace by \"clerk\"", "v2 Grace/Hopper by \"clerk\""]
    );
}
