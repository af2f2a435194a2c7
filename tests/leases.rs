//! Partition leases with real processes on a real PostgreSQL: several processes of the
//! `scaling` example share one projection's 8 partitions. Each applied event is recorded in
//! the read model with the worker and the lease epoch it was applied under, in the batch's
//! transaction, so the tests can check after the fact that every event was applied once and
//! that each partition had exactly one owner at every commit.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pupsource::{Event, EventStore, ExpectedVersion, PostgresStore, StreamId};
use serde_json::json;

use common::{PgDatabase, PgSchema, Worker, eventually, example_binary};

/// A fresh migrated schema (or database), its URL for the example processes, a pool and a
/// store on it, and a working directory for the processes.
struct Setup {
    _place: Box<dyn std::any::Any>,
    url: String,
    pool: sqlx::PgPool,
    store: PostgresStore,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let schema = PgSchema::create().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), schema.name);
    let pool = schema.pool(4).await;
    setup_on(Box::new(schema), url, pool).await
}

/// In a database of its own: for tests that keep transactions open for seconds, which would
/// hold the read fence of every other test in a shared database.
async fn setup_in_a_database() -> Setup {
    let database = PgDatabase::create().await;
    let (url, pool) = (database.url(), database.pool(4).await);
    setup_on(Box::new(database), url, pool).await
}

async fn setup_on(place: Box<dyn std::any::Any>, url: String, pool: sqlx::PgPool) -> Setup {
    let store = PostgresStore::new(pool.clone());
    store.migrate().await.expect("migrate");
    let dir = tempfile::tempdir().expect("temp dir");
    Setup { _place: place, url, pool, store, dir }
}

/// Appends `events` readings over 200 meters, 50 per append.
async fn append_readings(store: &PostgresStore, from: u64, events: u64) {
    let mut n = from;
    while n < from + events {
        let meter = StreamId::new("Metering", "Meter", format!("meter-{}", (n / 50) % 200));
        let batch: Vec<Event> =
            (0..50).map(|i| Event::new(&meter, "MeterRead", json!({ "value": n + i }))).collect();
        store.append_and_commit(ExpectedVersion::Any, &batch).await.expect("append");
        n += 50;
    }
}

async fn applied(pool: &sqlx::PgPool, owner: Option<&str>) -> i64 {
    // The read model table appears once a worker prepared it.
    sqlx::query_scalar("SELECT count(*) FROM scaling_applied WHERE $1::text IS NULL OR owner = $1")
        .bind(owner)
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// The holder of each partition of the 8-partition layout: (owner, epoch).
async fn holders(pool: &sqlx::PgPool) -> BTreeMap<i32, (Option<String>, i64)> {
    let rows: Vec<(i32, Option<String>, i64)> = sqlx::query_as(
        "SELECT partition, owner, epoch FROM checkpoints \
         WHERE projection = 'scaling' AND partition_count = 8 \
           AND (lease_until IS NULL OR lease_until > now()) ORDER BY partition",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    rows.into_iter().map(|(p, owner, epoch)| (p, (owner, epoch))).collect()
}

/// Partitions held per owner.
fn per_owner(held: &BTreeMap<i32, (Option<String>, i64)>) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for (owner, _) in held.values() {
        if let Some(owner) = owner {
            *per.entry(owner.clone()).or_default() += 1;
        }
    }
    per
}

/// The checks every test ends with: each event of the log applied exactly once; each
/// (partition, epoch) applied by one worker only; per partition, epochs never go back, in
/// log order nor in the order the rows were written; each meter's readings in version order.
async fn assert_applied_exactly_once_under_one_owner(pool: &sqlx::PgPool, log: i64) {
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT global_position) FROM scaling_applied")
            .fetch_one(pool)
            .await
            .expect("totals");
    assert_eq!((rows, distinct), (log, log), "every event applied exactly once");
    let missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e WHERE NOT EXISTS \
         (SELECT 1 FROM scaling_applied a WHERE a.global_position = e.global_position)",
    )
    .fetch_one(pool)
    .await
    .expect("missing");
    assert_eq!(missing, 0, "no event of the log is missing");
    let shared: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT partition, epoch, count(DISTINCT owner) FROM scaling_applied \
         GROUP BY partition, epoch HAVING count(DISTINCT owner) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("owners");
    assert!(shared.is_empty(), "one owner per (partition, epoch): {shared:?}");
    for order in ["e.transaction_id, e.global_position", "a.seq"] {
        let regressions: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT a.epoch, \
               lag(a.epoch) OVER (PARTITION BY a.partition ORDER BY {order}) AS previous \
             FROM scaling_applied a JOIN events e USING (global_position)) x \
             WHERE epoch < previous"
        )))
        .fetch_one(pool)
        .await
        .expect("epoch order");
        assert_eq!(regressions, 0, "an older epoch applied after a newer one (by {order})");
    }
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_version, \
           lag(aggregate_version) OVER (PARTITION BY aggregate_id ORDER BY seq) AS previous \
         FROM scaling_applied) x WHERE aggregate_version <= previous",
    )
    .fetch_one(pool)
    .await
    .expect("version order");
    assert_eq!(out_of_order, 0, "each meter's readings applied in version order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_a_sigkill_and_a_fourth_apply_every_event_once() {
    let Setup { _place, url, pool, store, dir } = setup().await;

    let p1 = Worker::start(dir.path(), &url, "p1", "300ms", 2);
    let p2 = Worker::start(dir.path(), &url, "p2", "300ms", 2);
    let p3 = Worker::start(dir.path(), &url, "p3", "300ms", 2);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { append_readings(&store, 0, 50_000).await })
    };

    // Kill p2 in the middle of its work (it is busy: each batch takes ~100 events × 2 ms).
    eventually("p2 applied 500 events", Duration::from_secs(120), || async {
        (applied(&pool, Some("p2")).await >= 500).then_some(())
    })
    .await;
    p2.crash();
    let p4 = Worker::start(dir.path(), &url, "p4", "300ms", 2);
    writer.await.expect("writer");

    eventually("every event is applied", Duration::from_secs(240), || async {
        (applied(&pool, None).await >= 50_000).then_some(())
    })
    .await;
    for worker in [p1, p3, p4] {
        let id = worker.id.clone();
        let (status, stdout, stderr) = worker.stop();
        assert!(status.success(), "{id} exits cleanly: {stderr}");
        assert!(stdout.contains("applied twice 0"), "{id}: {stdout}");
        assert!(!stderr.contains("panicked"), "{id}: {stderr}");
    }
    assert_applied_exactly_once_under_one_owner(&pool, 50_000).await;
    for (owner, at_least) in [("p1", 1), ("p2", 500), ("p3", 1), ("p4", 1)] {
        let n = applied(&pool, Some(owner)).await;
        assert!(n >= at_least, "{owner} applied {n} events");
    }
    pool.close().await;
}

/// Waits until `owner` holds all 8 partitions.
async fn until_holding_all(pool: &sqlx::PgPool, owner: &str) {
    eventually(&format!("{owner} holds every partition"), Duration::from_secs(60), || async {
        let held = holders(pool).await;
        (held.len() == 8 && held.values().all(|(o, _)| o.as_deref() == Some(owner))).then_some(())
    })
    .await;
}

/// After a SIGKILL, the restarted process sees that the holder of every lease was a process of
/// its own host that is gone, and takes the partitions over at once: with a heartbeat of 10
/// minutes, the dead process's leases would last another 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_after_a_sigkill_takes_over_at_once_not_after_the_lease() {
    let Setup { _place, url, pool, store, dir } = setup().await;
    append_readings(&store, 0, 2_000).await;
    let p1 = Worker::start(dir.path(), &url, "p1", "10m", 2);
    until_holding_all(&pool, "p1").await;
    eventually("p1 applied events", Duration::from_secs(60), || async {
        (applied(&pool, Some("p1")).await > 0).then_some(())
    })
    .await;
    let pid = p1.pid();
    p1.crash();

    let p2 = Worker::start(dir.path(), &url, "p2", "10m", 2);
    until_holding_all(&pool, "p2").await;
    eventually("every event is applied", Duration::from_secs(120), || async {
        (applied(&pool, None).await >= 2_000).then_some(())
    })
    .await;
    let (status, stdout, stderr) = p2.stop();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("applied twice 0"), "{stdout}");
    let said: Vec<&str> =
        stderr.lines().filter(|l| l.contains("taking its partitions over at once")).collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].ends_with(&format!(
            "the holder was a process of this host that is gone: taking its partitions over at \
             once projection=scaling holder=p1 pid={pid} partitions=[0, 1, 2, 3, 4, 5, 6, 7]"
        )),
        "{}",
        said[0]
    );
    assert!(!stderr.contains("waiting until it gives them back"), "{stderr}");
    assert_applied_exactly_once_under_one_owner(&pool, 2_000).await;
    pool.close().await;
}

/// A process that waits for partitions a live worker holds says so once: who holds them, and
/// until when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_waiting_for_a_live_workers_partitions_says_who_holds_them_until_when() {
    let Setup { _place, url, pool, store: _, dir } = setup().await;
    let p1 = Worker::start(dir.path(), &url, "p1", "10m", 2);
    until_holding_all(&pool, "p1").await;

    let p2 = Worker::start(dir.path(), &url, "p2", "10m", 2);
    let stderr = p2.stderr.clone();
    let said = eventually("p2 says what it waits for", Duration::from_secs(30), || {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        let line = log.lines().find(|l| l.contains("held by another worker")).map(str::to_owned);
        async move { line }
    })
    .await;
    // Read once p2 has spoken: p1's first heartbeats may still have renewed its leases after
    // it held every partition (its next one is 10 minutes away).
    let until: time::OffsetDateTime = sqlx::query_scalar(
        "SELECT max(lease_until) FROM checkpoints WHERE projection = 'scaling' AND owner = 'p1'",
    )
    .fetch_one(&pool)
    .await
    .expect("p1's leases");
    assert!(
        said.ends_with(&format!(
            "partitions held by another worker: waiting until it gives them back or its lease \
             expires projection=scaling holder=p1 lease_until={until} partitions=[0, 1, 2, 3, 4, \
             5, 6, 7]"
        )),
        "{said}"
    );
    let (p2_status, _, p2_stderr) = p2.stop();
    let (p1_status, _, p1_stderr) = p1.stop();
    assert!(p1_status.success() && p2_status.success(), "{p1_stderr}\n{p2_stderr}");
    let times = p2_stderr.lines().filter(|l| l.contains("held by another worker")).count();
    assert_eq!(times, 1, "said once: {p2_stderr}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_loses_its_lease_and_cannot_commit_after_resuming() {
    let Setup { _place, url, pool, store, dir } = setup().await;
    append_readings(&store, 0, 12_000).await;

    // Lease 600 ms; a batch of 100 events takes at least 500 ms, so p1 is paused mid-batch.
    let p1 = Worker::start(dir.path(), &url, "p1", "200ms", 5);
    let p2 = Worker::start(dir.path(), &url, "p2", "200ms", 5);
    let before =
        eventually("both hold 4 partitions, p1 applying", Duration::from_secs(60), || async {
            let held = holders(&pool).await;
            let p1_held = held.values().filter(|(o, _)| o.as_deref() == Some("p1")).count();
            let p2_held = held.values().filter(|(o, _)| o.as_deref() == Some("p2")).count();
            (p1_held == 4 && p2_held == 4 && applied(&pool, Some("p1")).await > 0).then_some(held)
        })
        .await;

    p1.signal("-STOP");
    let paused_at = applied(&pool, Some("p1")).await;
    let taken = eventually("p2 took every partition over", Duration::from_secs(60), || async {
        let held = holders(&pool).await;
        (held.len() == 8 && held.values().all(|(o, _)| o.as_deref() == Some("p2"))).then_some(held)
    })
    .await;
    p1.signal("-CONT");

    eventually("every event is applied", Duration::from_secs(120), || async {
        (applied(&pool, None).await >= 12_000).then_some(())
    })
    .await;
    let (p1_status, _, p1_stderr) = p1.stop();
    let (p2_status, p2_stdout, _) = p2.stop();
    assert!(p1_status.success() && p2_status.success(), "{p1_stderr}");
    assert!(p2_stdout.contains("applied twice 0"), "{p2_stdout}");
    // p1 was paused mid-batch (its partitions had thousands of events to go). Resumed, each
    // batch in flight either lost its connection (the server closes a transaction idle for
    // longer than a lease) or reached its checkpoint write and failed the epoch check; the
    // checks below show that none committed.
    assert!(
        p1_stderr.contains("lease lost") || p1_stderr.contains("lease taken over"),
        "the resumed worker noticed it lost its leases:\n{p1_stderr}"
    );
    assert_applied_exactly_once_under_one_owner(&pool, 12_000).await;
    // p2 took p1's partitions under new epochs; by the epoch-order check above, nothing p1
    // had in flight under the epochs it lost was committed after p2's first commit.
    for (partition, (owner, epoch)) in &before {
        if owner.as_deref() == Some("p1") {
            assert!(
                taken[partition].1 > *epoch,
                "partition {partition}: {before:?} then {taken:?}"
            );
        }
    }
    assert!(applied(&pool, Some("p1")).await >= paused_at);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_settle_at_two_partitions_each_and_stay() {
    const HEARTBEAT: Duration = Duration::from_millis(500);
    let Setup { _place, url, pool, dir, .. } = setup().await;

    // 1, then 2, then 4 processes: each step moves partitions by releases and claims.
    // Every assignment seen is logged (shown if the test fails).
    let started_at = Instant::now();
    let seen = std::sync::Mutex::new(String::new());
    let observe = |held: &BTreeMap<i32, (Option<String>, i64)>| {
        let line = format!("{:?}", held.values().collect::<Vec<_>>());
        let mut last = seen.lock().expect("lock");
        if *last != line {
            eprintln!("{:>6} ms: {line}", started_at.elapsed().as_millis());
            *last = line;
        }
    };
    let mut workers = vec![Worker::start(dir.path(), &url, "w1", "500ms", 0)];
    let mut started = Instant::now();
    for ids in [&["w2"][..], &["w3", "w4"]] {
        eventually("the running workers split the partitions", HEARTBEAT * 40, || async {
            let n = workers.len();
            let held = holders(&pool).await;
            observe(&held);
            let per = per_owner(&held);
            (per.len() == n && per.values().all(|&held| held == 8 / n)).then_some(())
        })
        .await;
        started = Instant::now();
        workers.extend(ids.iter().map(|id| Worker::start(dir.path(), &url, id, "500ms", 0)));
    }
    let settled = eventually("each of 4 workers holds 2 partitions", HEARTBEAT * 40, || async {
        let held = holders(&pool).await;
        observe(&held);
        let per = per_owner(&held);
        let ids: Vec<&str> = per.keys().map(String::as_str).collect();
        (ids == ["w1", "w2", "w3", "w4"] && per.values().all(|&n| n == 2)).then_some(held)
    })
    .await;
    let intervals = started.elapsed().as_secs_f64() / HEARTBEAT.as_secs_f64();
    eprintln!("2 → 4 workers settled after {intervals:.1} heartbeat intervals (start included)");
    assert!(intervals <= 20.0, "settling took {intervals:.1} heartbeat intervals");

    // No oscillation: the same owners and epochs for 10 more heartbeat intervals.
    let watch_until = Instant::now() + HEARTBEAT * 10;
    while Instant::now() < watch_until {
        assert_eq!(holders(&pool).await, settled, "assignments changed after settling");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = std::process::Command::new(example_binary("scaling"))
        .current_dir(dir.path())
        .arg("status")
        .env("DATABASE_URL", &url)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    for id in ["w1", "w2", "w3", "w4"] {
        assert_eq!(text.matches(&format!("owner {id} epoch")).count(), 2, "{text}");
        assert_eq!(text.matches(&format!("worker {id} (8 partitions)")).count(), 1, "{text}");
    }
    for worker in workers {
        let id = worker.id.clone();
        let (exit, _, stderr) = worker.stop();
        assert!(exit.success(), "{id}: {stderr}");
    }
    // Stopped workers give their leases back and deregister.
    assert!(holders(&pool).await.values().all(|(owner, _)| owner.is_none()));
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_workers")
        .fetch_one(&pool)
        .await
        .expect("workers");
    assert_eq!(live, 0);
    pool.close().await;
}

/// A projection that does nothing: these tests look at leases, not at a read model.
struct Idle(u32);

impl pupsource::Projection for Idle {
    fn name(&self) -> &str {
        "idle"
    }

    fn partitions(&self) -> u32 {
        self.0
    }

    fn handle<'a>(
        &'a self,
        _: &'a pupsource::LogEvent,
        _: &'a mut pupsource::Context<'_>,
    ) -> pupsource::projection::HandleFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_partition_count_is_refused_while_live_workers_run_the_old_one() {
    let db = common::postgres().await;
    let store: pupsource::Store = db.store.clone().into();
    let four = pupsource::Runner::new(store.clone())
        .projection(std::sync::Arc::new(Idle(4)))
        .worker_id("four")
        .heartbeat(Duration::from_millis(100));
    let running = common::Running::start(&four);
    eventually("`four` holds its partitions", Duration::from_secs(30), || async {
        let owners: Vec<Option<String>> = sqlx::query_scalar(
            "SELECT owner FROM checkpoints WHERE projection = 'idle' AND partition_count = 4",
        )
        .fetch_all(db.store.pool())
        .await
        .unwrap_or_default();
        (owners.len() == 4 && owners.iter().all(|o| o.as_deref() == Some("four"))).then_some(())
    })
    .await;

    let eight = pupsource::Runner::new(store.clone())
        .projection(std::sync::Arc::new(Idle(8)))
        .worker_id("eight")
        .until_caught_up();
    let err = eight.run_until(std::future::pending()).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "projection `idle` runs with 4 partitions in live worker `four`; stop it before running with 8"
    );
    let layouts: Vec<i32> = sqlx::query_scalar(
        "SELECT DISTINCT partition_count FROM checkpoints WHERE projection = 'idle'",
    )
    .fetch_all(db.store.pool())
    .await
    .expect("layouts");
    assert_eq!(layouts, [4], "the refused run created no checkpoint rows");

    running.stop().await.expect("four stops");
    eight.run_until(std::future::pending()).await.expect("8 partitions once `four` stopped");
}

#[tokio::test]
async fn bad_assignments_and_worker_ids_are_refused_before_anything_runs() {
    let store = pupsource::SqliteStore::connect("sqlite::memory:").await.expect("open");
    let runner = pupsource::Runner::new(store).projection(std::sync::Arc::new(Idle(2)));
    let cases = [
        (
            runner.clone().assign(3, 3),
            "invalid partition key 3: with 3 partitions the keys are 0 to 2",
        ),
        (runner.clone().worker_id(""), "invalid worker id \"\": is empty"),
        (runner.clone().worker_id("a\0b"), "invalid worker id \"a\\0b\": contains a NUL character"),
    ];
    for (runner, expected) in cases {
        let err = runner.check().expect_err("refused");
        assert_eq!(err.to_string(), expected);
    }
    assert_eq!(runner.clone().assign(1, 3).assignment().map(|p| (p.index, p.count)), Some((1, 3)));
    assert!(runner.id().contains(&std::process::id().to_string()), "{}", runner.id());
}

/// The scaling example's read model (as it creates it), plus a trigger that makes every
/// insert of worker `p1` wait for advisory lock `{gate}` (advisory locks are shared by the
/// whole database: each test takes its own): a handler blocked in a statement.
const READ_MODEL_WITH_A_GATE: &str = "CREATE TABLE scaling_applied (
    seq BIGSERIAL PRIMARY KEY, global_position BIGINT NOT NULL, aggregate_id TEXT NOT NULL,
    aggregate_version BIGINT NOT NULL, partition BIGINT NOT NULL, owner TEXT NOT NULL,
    epoch BIGINT NOT NULL);
    CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN IF NEW.owner = 'p1' THEN PERFORM pg_advisory_xact_lock_shared({gate}); END IF;
      RETURN NEW; END $$;
    CREATE TRIGGER gate BEFORE INSERT ON scaling_applied FOR EACH ROW EXECUTE FUNCTION gate();";

/// The positions of the log's events in `partition` of `count`.
async fn positions_in(pool: &sqlx::PgPool, count: u32, partition: u32) -> Vec<i64> {
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT global_position, partition_hash FROM events ORDER BY 1")
            .fetch_all(pool)
            .await
            .expect("log");
    rows.into_iter()
        .filter(|&(_, hash)| {
            let hash = u64::from_ne_bytes(hash.to_ne_bytes());
            pupsource::partition::partition_of(hash, count) == partition
        })
        .map(|(position, _)| position)
        .collect()
}

/// p1 runs the projection with 4 partitions and commits some batches; then its handlers are
/// blocked in a statement (waiting for a lock the test holds) and it is paused with SIGSTOP
/// past its lease; p2 starts the projection with 3 partitions and makes progress; p1 resumes
/// and its statements complete. p1 must commit nothing once p2 has started: it stops with the
/// partition-count refusal, and every event of p2's partitions is applied exactly once.
async fn paused_process_of_an_old_count_commits_nothing(p1_args: &[&str], p2_args: &[&str]) {
    let Setup { _place, url, pool, store, dir } = setup_in_a_database().await;
    let key = i64::from(uuid::Uuid::new_v4().as_fields().0 & 0x7fff_ffff);
    let ddl = READ_MODEL_WITH_A_GATE.replace("{gate}", &key.to_string());
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&pool).await.expect("read model");
    append_readings(&store, 0, 12_000).await;

    let p1 = Worker::start_with(dir.path(), &url, "p1", "200ms", 1, p1_args, 0);
    eventually("p1 commits batches", Duration::from_secs(60), || async {
        (applied(&pool, Some("p1")).await >= 200).then_some(())
    })
    .await;
    // Closing the gate waits for p1's batches in flight; its next ones block inside.
    let mut gate = pool.acquire().await.expect("connection");
    let lock = sqlx::query("SELECT pg_advisory_lock($1)").bind(key);
    lock.execute(&mut *gate).await.expect("close the gate");
    eventually("p1 is blocked inside a batch", Duration::from_secs(60), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 \
             AND NOT granted",
        )
        .bind(key)
        .fetch_one(&pool)
        .await
        .ok()?;
        (waiting > 0).then_some(())
    })
    .await;
    p1.signal("-STOP");
    let p1_applied = applied(&pool, Some("p1")).await;
    eventually("p1's registration expired", Duration::from_secs(30), || async {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_workers WHERE worker_id = 'p1' AND expires_at > now()",
        )
        .fetch_one(&pool)
        .await
        .ok()?;
        (live == 0).then_some(())
    })
    .await;
    // A slow handler: p2 is still far from retiring p1's layout when p1 resumes.
    let p2 = Worker::start_with(dir.path(), &url, "p2", "200ms", 5, p2_args, 0);
    eventually("p2 applies events", Duration::from_secs(60), || async {
        (applied(&pool, Some("p2")).await > 0).then_some(())
    })
    .await;

    // p1 resumes; its statements complete; its batches in flight try to commit.
    p1.signal("-CONT");
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key);
    unlock.execute(&mut *gate).await.expect("open the gate");
    drop(gate);
    let (p1_status, _, p1_stderr) = p1.exit().await;
    assert!(!p1_status.success(), "{p1_stderr}");
    assert!(
        p1_stderr.contains(
            "error: projection `scaling` runs with 3 partitions in live worker `p2`; \
             stop it before running with 4"
        ),
        "{p1_stderr}"
    );
    assert_eq!(applied(&pool, Some("p1")).await, p1_applied, "p1 committed nothing more");

    let partition = p2_args.iter().position(|a| *a == "--partition-key").map(|i| p2_args[i + 1]);
    let wanted = match partition {
        Some(key) => positions_in(&pool, 3, key.parse().expect("key")).await,
        None => positions_in(&pool, 1, 0).await,
    };
    eventually("p2 applied its partitions' events", Duration::from_secs(120), || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT global_position) FROM scaling_applied \
             WHERE global_position = ANY($1)",
        )
        .bind(&wanted)
        .fetch_one(&pool)
        .await
        .ok()?;
        (usize::try_from(done).ok()? == wanted.len()).then_some(())
    })
    .await;
    let (p2_status, p2_stdout, p2_stderr) = p2.stop();
    assert!(p2_status.success(), "{p2_stderr}");
    assert!(p2_stdout.contains("applied twice 0"), "{p2_stdout}");
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT global_position) FROM scaling_applied")
            .fetch_one(&pool)
            .await
            .expect("totals");
    assert_eq!(rows, distinct, "no event applied twice");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_commits_nothing_once_another_partition_count_started() {
    paused_process_of_an_old_count_commits_nothing(&["--workers", "4"], &["--workers", "3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_static_partition_commits_nothing_once_another_count_started() {
    paused_process_of_an_old_count_commits_nothing(
        &["--partition-key", "1", "--total-partitions", "4"],
        &["--partition-key", "1", "--total-partitions", "3"],
    )
    .await;
}

/// Two processes of one projection on one SQLite file, started together on a fresh file,
/// each with 4 partitions until caught up: one seeds, they share the partitions through
/// leases in the file, both exit cleanly, and every event is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_apply_every_event_once() {
    const EVENTS: u64 = 20_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("shared.db");
    let url = format!("sqlite://{}", file.display());
    let args = ["--workers", "4", "--until-caught-up"];
    let p1 = Worker::start_with(dir.path(), &url, "p1", "200ms", 0, &args, EVENTS);
    let p2 = Worker::start_with(dir.path(), &url, "p2", "200ms", 0, &args, EVENTS);
    let mut outputs = Vec::new();
    for worker in [p1, p2] {
        let (status, stdout, stderr) = worker.exit().await;
        assert!(status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!("log {EVENTS}, applied {EVENTS}, applied twice 0")),
            "{stdout}"
        );
        outputs.push(stdout);
    }
    let seeded = outputs.iter().filter(|out| out.contains("appended")).count();
    assert_eq!(seeded, 1, "exactly one process seeded: {outputs:?}");

    let store = pupsource::SqliteStore::connect(&url).await.expect("open");
    let (rows, distinct, log): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT global_position), (SELECT count(*) FROM events) \
         FROM scaling_applied",
    )
    .fetch_one(store.pool())
    .await
    .expect("totals");
    let events = i64::try_from(EVENTS).expect("small");
    assert_eq!((rows, distinct, log), (events, events, events));
}

/// The takeover after a SIGKILL on SQLite: two processes of one machine sharing a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_process_restarted_after_a_sigkill_takes_over_at_once() {
    const EVENTS: u64 = 2_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let p1 = Worker::start_with(dir.path(), &url, "p1", "10m", 2, &[], EVENTS);
    let store = pupsource::SqliteStore::connect(&url).await.expect("open");
    eventually("p1 holds every partition", Duration::from_secs(60), || async {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM checkpoints \
             WHERE projection = 'scaling' AND partition_count = 8 AND owner = 'p1'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or(0);
        (held == 8).then_some(())
    })
    .await;
    let pid = p1.pid();
    p1.crash();

    // Its leases would last 30 minutes: this run ends only if it takes them over.
    let p2 = Worker::start_with(dir.path(), &url, "p2", "10m", 2, &["--until-caught-up"], EVENTS);
    let (status, stdout, stderr) = p2.exit().await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("log {EVENTS}, applied {EVENTS}, applied twice 0")),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "taking its partitions over at once projection=scaling holder=p1 pid={pid} \
             partitions=[0, 1, 2, 3, 4, 5, 6, 7]"
        )),
        "{stderr}"
    );
}
