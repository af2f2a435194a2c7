//! Attacks on the guarantees, the way production attacks them: poison events, a leaked
//! transaction holding the read fence, processes killed with SIGKILL at random moments, and
//! several processes sharing one SQLite file.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pupsource::runner::{ErrorPolicy, RetryPolicy, Runner};
use pupsource::{
    Context, Envelope, Error, Event, EventStore, ExpectedVersion, Handle, HandlerResult, Position,
    Scope, Store, StreamId,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use common::example_binary;

on_backends!([postgres, sqlite_file, mysql], {
    poison_event_stops_the_projection_naming_position_and_type,
    poison_event_is_parked_with_its_aggregate_under_the_park_policy,
});

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Bank", aggregate = "Account")]
struct Deposited {
    amount: i64,
}

/// Remembers which streams' events it handled, in memory. In-memory effects are
/// at-least-once: after a failed batch, the events before the failure are handled again in a
/// new transaction (a SQL read model written through the batch transaction is exactly-once).
#[derive(Default)]
struct Ledger {
    handled: Mutex<Vec<String>>,
}

impl Ledger {
    fn handled(&self) -> Vec<String> {
        self.handled.lock().expect("lock").clone()
    }

    /// What it handled, each once, sorted.
    fn distinct(&self) -> Vec<String> {
        let mut distinct = self.handled();
        distinct.sort();
        distinct.dedup();
        distinct
    }
}

impl pupsource::Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    fn scope(&self) -> pupsource::Scope {
        pupsource::Scope::all().event_types(["Deposited"])
    }

    fn handle<'a>(
        &'a self,
        event: &'a pupsource::LogEvent,
        cx: &'a mut Context<'_>,
    ) -> pupsource::projection::HandleFuture<'a> {
        Box::pin(async move {
            let decoded = event.decode::<Deposited>()?;
            <Self as Handle<Deposited>>::handle(self, decoded, cx).await
        })
    }
}

impl Handle<Deposited> for Ledger {
    async fn handle(&self, event: Envelope<Deposited>, _: &mut Context<'_>) -> HandlerResult {
        self.handled
            .lock()
            .expect("lock")
            .push(format!("{}:{}", event.stream.aggregate_id, event.amount));
        Ok(())
    }
}

/// `a:1`, then a drifted `a` payload that no longer decodes, then `a:3` and `b:10`.
async fn append_with_poison<S: EventStore>(store: &S) -> pupsource::Position {
    let (a, b) = (StreamId::new("Bank", "Account", "a"), StreamId::new("Bank", "Account", "b"));
    let ok = |s: &StreamId, amount: i64| Event::new(s, "Deposited", json!({ "amount": amount }));
    store.append_and_commit(ExpectedVersion::NoStream, &[ok(&a, 1)]).await.expect("a1");
    let poison = Event::new(&a, "Deposited", json!({ "amount": "a great deal" }));
    let poisoned =
        store.append_and_commit(ExpectedVersion::Exact(1), &[poison]).await.expect("poison");
    store.append_and_commit(ExpectedVersion::Exact(2), &[ok(&a, 3)]).await.expect("a3");
    store.append_and_commit(ExpectedVersion::NoStream, &[ok(&b, 10)]).await.expect("b10");
    poisoned.positions[0]
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    }
}

/// A payload that does not decode into its type fails the same way every time: the partition
/// stops at the first attempt, without retries.
async fn poison_event_stops_the_projection_naming_position_and_type<S: EventStore + Into<Store>>(
    store: S,
) {
    let poisoned = append_with_poison(&store).await;
    let ledger = Arc::new(Ledger::default());
    let err = Runner::new(store)
        .projection(ledger.clone())
        .retry(quick_retry())
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect_err("the poison event stops the projection");
    match &err {
        Error::Handler { projection, position, event_type, attempts, .. } => {
            assert_eq!(
                (projection.as_str(), *position, event_type.as_str(), *attempts),
                ("ledger", poisoned, "Deposited", 1)
            );
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("at position {poisoned}"))
            && message.contains("payload of `Deposited` v1 does not match its type"),
        "{message}"
    );
    assert_eq!(ledger.distinct(), ["a:1"], "nothing after the poison event is handled");
}

async fn poison_event_is_parked_with_its_aggregate_under_the_park_policy<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let poisoned = append_with_poison(&store).await;
    let ledger = Arc::new(Ledger::default());
    let runner = Runner::new(store)
        .projection(ledger.clone())
        .retry(quick_retry())
        .on_error(ErrorPolicy::Park)
        .until_caught_up();
    runner.run_until(std::future::pending()).await.expect("parking goes on");
    assert_eq!(
        ledger.distinct(),
        ["a:1", "b:10"],
        "a:3 waits behind the poison event of its aggregate"
    );
    let parked = runner.parked("ledger").await.expect("parked");
    assert_eq!(parked.len(), 2);
    assert_eq!((parked[0].position, parked[0].attempts), (poisoned, 1), "parked at once");
    assert!(
        parked[0].error.as_deref().is_some_and(|e| e.contains("does not match its type")),
        "{parked:?}"
    );
    assert_eq!((parked[1].stream.aggregate_id.as_str(), parked[1].error.as_deref()), ("a", None));
}

/// A session left idle in a transaction that holds an id: projections stop advancing (the
/// events committed after it stay behind the fence) but skip nothing; status names the
/// blocking backend and its age grows; once it ends, everything is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_transaction_stalls_projections_without_skipping_and_status_names_it() {
    // A database of its own: the leak holds the read fence of everything in its database.
    let database = common::PgDatabase::create().await;
    let store = pupsource::PostgresStore::new(database.pool(20).await);
    store.migrate().await.expect("migrate");
    let leak_pool = database.pool(1).await;
    let mut leak = leak_pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *leak).await.expect("take an xid");
    let leak_pid: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *leak).await.expect("pid");

    for i in 0..10 {
        let s = StreamId::new("Bank", "Account", format!("acct-{i}"));
        let e = Event::new(&s, "Deposited", json!({ "amount": i }));
        store.append_and_commit(ExpectedVersion::NoStream, &[e]).await.expect("append");
    }
    let ledger = Arc::new(Ledger::default());
    let runner = Runner::new(store.clone())
        .projection(ledger.clone())
        .poll_interval(Duration::from_millis(50));
    let running = common::Running::start(&runner);

    // The fence names the leaked session, and grows older.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first_age = None;
    loop {
        let fence = runner.status().await.expect("status").fence;
        if let Some(f) = fence.filter(|f| f.blocking_pid == Some(leak_pid)) {
            let f_age = f.age.expect("the age of a session of the same role is known");
            match first_age {
                None => first_age = Some(f_age),
                Some(age) if f_age > age + Duration::from_millis(200) => break,
                Some(_) => {}
            }
        }
        assert!(Instant::now() < deadline, "status never named the leaked session {leak_pid}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(runner.metrics().log_reads() > 0, "the runner is polling");
    assert!(
        ledger.handled().is_empty(),
        "nothing behind the fence is delivered: {:?}",
        ledger.handled()
    );

    leak.rollback().await.expect("end the leaked transaction");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.handled().len() < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await.expect("run");
    let handled: HashSet<String> = ledger.handled().into_iter().collect();
    let expected: HashSet<String> = (0..10).map(|i| format!("acct-{i}:{i}")).collect();
    assert_eq!(handled, expected);
    assert_eq!(ledger.handled().len(), 10, "each exactly once");
}

/// The counter example's SQL read model and the log: (events in the log, events counted).
async fn counter_totals(store: &Store) -> (i64, i64) {
    let log = "SELECT count(*) FROM events";
    let counted = "SELECT CAST(COALESCE(SUM(events), 0) AS BIGINT) FROM counter_events";
    match store {
        Store::Postgres(s) => (
            sqlx::query_scalar(log).fetch_one(s.pool()).await.expect("log"),
            sqlx::query_scalar(counted).fetch_one(s.pool()).await.expect("counted"),
        ),
        Store::Sqlite(s) => (
            sqlx::query_scalar(log).fetch_one(s.pool()).await.expect("log"),
            sqlx::query_scalar(counted).fetch_one(s.pool()).await.expect("counted"),
        ),
        _ => unreachable!("every backend is listed"),
    }
}

/// Runs the counter example with SIGKILL at 20 random moments (while it seeds, catches up, or
/// idles; with new events appended between rounds), then once to the end: the SQL read model
/// counts every event of the log exactly once.
async fn sigkill_rounds(dir: &Path, url: &str, store: Store) {
    let binary = example_binary("counter");
    let mut seed = u64::from(std::process::id()) | 1;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let appended = AtomicU64::new(0);
    for round in 0..20 {
        let workers = (1 + next(8)).to_string();
        let mut child = Command::new(&binary)
            .current_dir(dir)
            // One worker id for every round, as a restarted service would keep: on PostgreSQL
            // each round takes its predecessor's leases back at once (with a new epoch).
            .args(["--workers", &workers, "--worker-id", "chaos"])
            .env("DATABASE_URL", url)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the counter example");
        tokio::time::sleep(Duration::from_millis(50 + next(700))).await;
        child.kill().expect("SIGKILL");
        let output = child.wait_with_output().expect("reap");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
        // The log only: a process killed early may not have created the read model yet.
        let log = store.read_all(Position::START, 1, &Scope::all()).await.expect("read the log");
        if !log.is_empty() {
            let user = StreamId::new("Identity", "User", format!("late-{round}"));
            let event = Event::new(&user, "UserRegistered", json!({ "email": "late@example.com" }));
            store
                .append_and_commit(ExpectedVersion::NoStream, &[event])
                .await
                .expect("append between rounds");
            appended.fetch_add(1, Ordering::Relaxed);
        }
    }
    let output = Command::new(&binary)
        .current_dir(dir)
        .args(["--workers", "3", "--until-caught-up", "--worker-id", "chaos"])
        .env("DATABASE_URL", url)
        .output()
        .expect("final run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (log, counted) = counter_totals(&store).await;
    assert!(
        log >= 3_500 + i64::try_from(appended.load(Ordering::Relaxed)).expect("small"),
        "the demo workload and the late events are in the log"
    );
    assert_eq!(counted, log, "after 20 SIGKILLs every event is counted exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_loses_or_repeats_an_event_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("chaos.db").display());
    let store: Store = pupsource::SqliteStore::connect(&url).await.expect("open").into();
    store.migrate().await.expect("migrate");
    sigkill_rounds(dir.path(), &url, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_never_loses_or_repeats_an_event_on_postgres() {
    let db = common::postgres().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), db.schema.name);
    let dir = tempfile::tempdir().expect("temp dir");
    sigkill_rounds(dir.path(), &url, db.store.clone().into()).await;
}

/// Three processes append to one SQLite file while a fourth projects from it: SQLite's single
/// writer lock is waited for (busy timeout), never reported; nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_processes_appending_and_projecting_at_once_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = example_binary("stop_resume");
    let spawn = |args: &[&str]| {
        Command::new(&binary)
            .current_dir(dir.path())
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stop_resume")
    };
    // Create the database first, so the processes race on data, not on the schema.
    let created = spawn(&["append", "1"]).wait_with_output().expect("first append");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let children = vec![
        spawn(&["append", "150"]),
        spawn(&["append", "150"]),
        spawn(&["append", "150"]),
        spawn(&["process"]),
    ];
    let mut processed = 0;
    for child in children {
        let output = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "a process failed: {stderr}");
        assert!(!stderr.contains("database is locked"), "{stderr}");
        processed += String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| l.starts_with("processed #"))
            .count();
    }
    let last = spawn(&["process"]).wait_with_output().expect("final process");
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    processed += String::from_utf8_lossy(&last.stdout)
        .lines()
        .filter(|l| l.starts_with("processed #"))
        .count();
    assert_eq!(processed, 451, "every appended event processed exactly once across the runs");
}

/// Records each handled event id in a SQL table (primary key: a second delivery fails).
struct Recorder;

impl pupsource::Projection for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn handle<'a>(
        &'a self,
        event: &'a pupsource::LogEvent,
        cx: &'a mut Context<'_>,
    ) -> pupsource::projection::HandleFuture<'a> {
        Box::pin(async move {
            let id = event.event_id.to_string();
            pupsource::with_transaction!(cx.transaction(), |tx| {
                sqlx::query("INSERT INTO recorded (event_id) VALUES ($1)")
                    .bind(&id)
                    .execute(tx)
                    .await
                    .map(|done| done.rows_affected())
            })?;
            Ok(())
        })
    }
}

/// `pg_ctlcluster` for the local server (the first cluster under /etc/postgresql).
fn pg_ctlcluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a local PostgreSQL cluster")
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .max()
        .expect("a cluster version");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action, "-m", "fast"])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

/// PostgreSQL is stopped for two seconds and started again while an appender and a projection
/// run: appends wait or fail with `Connection` meanwhile, the runner keeps retrying with
/// backoff (a handful of log reads, no busy loop) instead of failing, and afterwards every
/// committed event is in the read model exactly once.
///
/// It restarts the shared server, so it is ignored by default and run alone:
/// `cargo nextest run --test chaos --run-ignored only` (`.ci/run` does, after the suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the local PostgreSQL server; run alone with --run-ignored only"]
async fn database_restart_is_survived_without_loss_or_spinning() {
    let db = common::postgres().await;
    sqlx::query("CREATE TABLE recorded (event_id TEXT PRIMARY KEY)")
        .execute(db.store.pool())
        .await
        .expect("read model");
    let runner = Runner::new(db.store.clone())
        .projection(Arc::new(Recorder))
        .poll_interval(Duration::from_millis(200));
    let running = common::Running::start(&runner);
    let appender = {
        let store = db.store.clone();
        tokio::spawn(async move {
            let (mut committed, mut refused) = (HashSet::new(), 0u32);
            let until = Instant::now() + Duration::from_secs(6);
            let mut i = 0;
            while Instant::now() < until {
                let s = StreamId::new("Bank", "Account", format!("acct-{i}"));
                let e = Event::new(&s, "Deposited", json!({ "amount": i }));
                match store
                    .append_and_commit(ExpectedVersion::NoStream, std::slice::from_ref(&e))
                    .await
                {
                    Ok(_) => {
                        committed.insert(e.event_id.to_string());
                    }
                    Err(Error::Connection(_)) => refused += 1,
                    Err(other) => panic!("append during the outage: {other}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (committed, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg_ctlcluster("stop");
    let down = <sqlx::PgConnection as sqlx::Connection>::connect(&common::postgres_url()).await;
    assert!(down.is_err(), "the server is down during the outage");
    let reads_before = runner.metrics().log_reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads_during_outage = runner.metrics().log_reads() - reads_before;
    pg_ctlcluster("start");
    // Appends during the outage either waited for a connection or failed with `Connection`
    // (nothing else: see the appender); only the committed ones must be in the read model.
    let (committed, refused) = appender.await.expect("appender");
    eprintln!("{} appends committed, {refused} refused during the outage", committed.len());
    assert!(
        reads_during_outage <= 20,
        "{reads_during_outage} log reads in a 2 s outage: a busy loop"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let recorded = loop {
        // While the server restarts the read may fail: count it as nothing recorded yet.
        let rows: Vec<String> = sqlx::query_scalar("SELECT event_id FROM recorded")
            .fetch_all(db.store.pool())
            .await
            .unwrap_or_default();
        if rows.len() >= committed.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    running.stop().await.expect("the runner survived the outage");
    assert_eq!(recorded.len(), committed.len(), "each committed event recorded once");
    assert_eq!(recorded.into_iter().collect::<HashSet<_>>(), committed);
}
