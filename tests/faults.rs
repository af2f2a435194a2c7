//! The faults users actually meet, injected for real: a connection cut by a TCP proxy while
//! `COMMIT` is on its way and a deferred trigger keeps the server committing, a connection
//! killed with `pg_terminate_backend` in the middle of the one-event-at-a-time path, a SQLite
//! file held locked by another writer past the busy timeout, panicking handlers, a projection
//! that halts beside healthy ones, one partition retrying while the others work, and
//! checkpoint rows deleted and created again under a fixed worker id.
//!
//! Each read model row records one application of an event, with no unique constraint: an
//! event applied twice shows up as two rows.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pupsource::partition::{partition_hash, partition_of};
use pupsource::projection::{Context, HandleFuture, HandlerPanic, Projection};
use pupsource::runner::{ErrorPolicy, RetryPolicy, Runner};
use pupsource::{
    Error, Event, EventStore, ExpectedVersion, LogEvent, SqliteStore, Store, StreamId,
};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use common::eventually;

on_backends!([postgres, sqlite_file, mysql], {
    panicking_handler_is_retried_like_a_failing_one_and_applied_once,
    handler_that_keeps_panicking_halts_its_partition_and_the_panic_is_named,
    handler_that_keeps_panicking_is_parked_with_the_panic_message,
    halted_projection_leaves_the_others_running_until_caught_up,
    halted_projection_leaves_the_others_running_until_shutdown,
    retrying_partition_does_not_hold_the_others_back,
    epochs_never_repeat_when_checkpoints_are_created_again,
});

/// What a handler does instead of its work, once.
#[derive(Debug, Clone)]
enum Fault {
    /// Return an error.
    Fail,
    /// Panic.
    Panic,
    /// Terminate its own database connection (PostgreSQL), then fail.
    KillOwnConnection,
    /// Tell the proxy to cut this connection's next `COMMIT` (PostgreSQL), and do the work.
    CutCommit(Arc<AtomicI32>),
}

/// Records every application of an event in the `applied` table, in the batch's
/// transaction, after any fault injected for that event.
struct Recorder {
    name: &'static str,
    partitions: u32,
    /// Each handler call takes its time.
    delay: Duration,
    /// (aggregate id, version) → the faults of the next calls on that event, in order.
    faults: Mutex<HashMap<(String, u64), VecDeque<Fault>>>,
    /// When each successful call returned, and for which partition.
    handled: Mutex<Vec<(Instant, u32)>>,
    /// When each injected failure happened.
    failed: Mutex<Vec<Instant>>,
}

impl Recorder {
    fn new(name: &'static str, partitions: u32) -> Self {
        Recorder {
            name,
            partitions,
            delay: Duration::ZERO,
            faults: Mutex::new(HashMap::new()),
            handled: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
        }
    }

    fn slow(self, delay: Duration) -> Self {
        Recorder { delay, ..self }
    }

    /// Injects `faults` into the next calls on version `version` of stream `aggregate_id`.
    fn inject(
        self,
        aggregate_id: &str,
        version: u64,
        faults: impl IntoIterator<Item = Fault>,
    ) -> Self {
        self.faults
            .lock()
            .expect("lock")
            .entry((aggregate_id.to_owned(), version))
            .or_default()
            .extend(faults);
        self
    }

    fn handled_count(&self) -> usize {
        self.handled.lock().expect("lock").len()
    }

    async fn record(&self, event: &LogEvent, cx: &mut Context<'_>) -> pupsource::HandlerResult {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let key = (event.stream.aggregate_id.clone(), event.aggregate_version);
        let fault = self.faults.lock().expect("lock").get_mut(&key).and_then(VecDeque::pop_front);
        match fault {
            None => {}
            Some(Fault::Fail) => {
                self.failed.lock().expect("lock").push(Instant::now());
                return Err(format!("injected failure on {}", event.stream).into());
            }
            Some(Fault::Panic) => panic!("boom on {}", event.stream.aggregate_id),
            Some(Fault::KillOwnConnection) => {
                let connection = cx.postgres().expect("PostgreSQL");
                let killed = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                    .execute(connection)
                    .await;
                return Err(format!("connection killed: {killed:?}").into());
            }
            Some(Fault::CutCommit(target)) => {
                let connection = cx.postgres().expect("PostgreSQL");
                let pid: i32 =
                    sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(connection).await?;
                target.store(pid, Ordering::SeqCst);
            }
        }
        let (position, partition) =
            (event.position.global_position, i64::from(cx.partition().index));
        let insert = common::placeholders(
            cx.mysql().is_some(),
            "INSERT INTO applied (projection, global_position, partition_index) \
             VALUES ($1, $2, $3)",
        );
        pupsource::with_transaction!(cx.transaction(), |tx| {
            sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                .bind(self.name)
                .bind(position)
                .bind(partition)
                .execute(tx)
                .await
                .map(|done| done.rows_affected())
        })?;
        self.handled.lock().expect("lock").push((Instant::now(), cx.partition().index));
        Ok(())
    }
}

impl Projection for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn handle<'a>(&'a self, event: &'a LogEvent, cx: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(self.record(event, cx))
    }
}

const APPLIED: &str = "CREATE TABLE applied (projection VARCHAR(100) NOT NULL, \
    global_position BIGINT NOT NULL, partition_index BIGINT NOT NULL)";

async fn create_applied(store: &Store) {
    on_pool!(store, |pool| sqlx::query(APPLIED).execute(pool).await.map(|d| d.rows_affected()))
        .expect("read model");
}

/// How often each position was applied by `projection`.
async fn applied(store: &Store, projection: &str) -> BTreeMap<i64, i64> {
    let sql = common::placeholders(
        common::is_mysql(store),
        "SELECT global_position, count(*) FROM applied WHERE projection = $1 \
         GROUP BY global_position",
    );
    let rows: Vec<(i64, i64)> =
        on_pool!(store, |pool| sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
            .bind(projection)
            .fetch_all(pool)
            .await)
        .expect("applied");
    rows.into_iter().collect()
}

/// Every position of the log (of `events` events), each applied once.
async fn each_once<S: EventStore>(store: &S, events: usize) -> BTreeMap<i64, i64> {
    let log = common::log_of_at_least(store, events).await;
    log.iter().map(|e| (e.position.global_position, 1)).collect()
}

/// `per_stream` events for each of `streams`, streams interleaved: one transaction per round,
/// one append per stream in it. Returns how many events the log holds now.
async fn append_streams<S: EventStore>(store: &S, streams: &[String], per_stream: usize) -> usize {
    for i in 0..per_stream {
        let mut tx = store.begin().await.expect("begin");
        for id in streams {
            let stream = StreamId::new("Test", "Thing", id.clone());
            let event = Event::new(&stream, "Step", json!({ "i": i }));
            store.append(&mut tx, ExpectedVersion::Any, &[event]).await.expect("append");
        }
        tx.commit().await.expect("commit");
    }
    let log = common::whole_log(store).await;
    log.len().max(streams.len() * per_stream)
}

/// The store (with the `applied` read model) after `per_stream` events of each of `streams`
/// streams `s0`, `s1`, …; and every position of the log, each applied once.
async fn with_log<S: EventStore + Into<Store>>(
    store: S,
    streams: usize,
    per_stream: usize,
) -> (Store, BTreeMap<i64, i64>) {
    let events = append_streams(&store, &names("s", streams), per_stream).await;
    let expected = each_once(&store, events).await;
    let store: Store = store.into();
    create_applied(&store).await;
    (store, expected)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn quick_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// A handler that panics twice on one event, then succeeds: retried like an error, and the
/// event applied once.
async fn panicking_handler_is_retried_like_a_failing_one_and_applied_once<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let (store, expected) = with_log(store, 4, 5).await;
    let recorder = Recorder::new("panicky", 2).inject("s1", 2, [Fault::Panic, Fault::Panic]);
    Runner::new(store.clone())
        .projection(Arc::new(recorder))
        .retry(quick_retry(5))
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("a panic is retried like an error");
    assert_eq!(applied(&store, "panicky").await, expected);
}

/// A handler that panics on every try halts its partition only: the other projection handles
/// every event, the run returns the handler error with the panic's message as its source, and
/// status shows it.
async fn handler_that_keeps_panicking_halts_its_partition_and_the_panic_is_named<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let (store, expected) = with_log(store, 4, 5).await;
    let panicky = Recorder::new("panicky", 1).inject("s1", 1, vec![Fault::Panic; 100]);
    let runner = Runner::new(store.clone())
        .projection(Arc::new(panicky))
        .projection(Arc::new(Recorder::new("healthy", 2)))
        .retry(quick_retry(3))
        .until_caught_up();
    let err = runner.run_until(std::future::pending()).await.expect_err("the partition halts");
    let Error::Handler { projection, attempts, source, .. } = &err else {
        panic!("expected a handler error, got {err:?}");
    };
    assert_eq!((projection.as_str(), *attempts), ("panicky", 3));
    let panic = source.downcast_ref::<HandlerPanic>().expect("the source is the caught panic");
    assert_eq!(panic.message, "boom on s1");
    assert!(
        err.to_string().ends_with("after 3 attempts: the handler panicked: boom on s1"),
        "{err}"
    );
    assert_eq!(applied(&store, "healthy").await, expected, "the other projection went on");
    let status = runner.status().await.expect("status");
    let last_error = status.projections[0].partitions[0].last_error.as_deref();
    assert_eq!(last_error, Some("the handler panicked: boom on s1"));
}

/// Under the park policy, an event whose handler keeps panicking is parked with the panic's
/// message, and the rest is handled.
async fn handler_that_keeps_panicking_is_parked_with_the_panic_message<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let (store, mut expected) = with_log(store, 4, 5).await;
    let panicky = Recorder::new("panicky", 1).inject("s1", 5, vec![Fault::Panic; 100]);
    let runner = Runner::new(store.clone())
        .projection(Arc::new(panicky))
        .retry(quick_retry(2))
        .on_error(ErrorPolicy::Park)
        .until_caught_up();
    runner.run_until(std::future::pending()).await.expect("parking goes on");
    let parked = runner.parked("panicky").await.expect("parked");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].error.as_deref(), Some("the handler panicked: boom on s1"));
    expected.remove(&parked[0].position.global_position);
    assert_eq!(applied(&store, "panicky").await, expected);
}

/// A projection whose only partition halts at once; a slower one beside it handles the
/// whole log before the run returns the halt.
async fn halted_projection_leaves_the_others_running_until_caught_up<
    S: EventStore + Into<Store>,
>(
    store: S,
) {
    let (store, expected) = with_log(store, 10, 20).await;
    let broken = Recorder::new("broken", 1).inject("s0", 1, vec![Fault::Fail; 100]);
    let healthy = Recorder::new("healthy", 2).slow(Duration::from_millis(2));
    let err = Runner::new(store.clone())
        .projection(Arc::new(broken))
        .projection(Arc::new(healthy))
        .retry(quick_retry(2))
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect_err("the broken projection's halt is returned");
    assert!(matches!(&err, Error::Handler { projection, .. } if projection == "broken"), "{err:?}");
    assert_eq!(applied(&store, "healthy").await, expected, "the other projection caught up");
}

/// Following the log: a projection that halted does not stop the others, which keep handling
/// new events until shutdown; then the run returns the halt.
async fn halted_projection_leaves_the_others_running_until_shutdown<S: EventStore + Into<Store>>(
    store: S,
) {
    append_streams(&store, &names("s", 4), 5).await;
    let runner_store: Store = store.clone().into();
    create_applied(&runner_store).await;
    let broken = Arc::new(Recorder::new("broken", 1).inject("s0", 1, vec![Fault::Fail; 100]));
    let healthy = Arc::new(Recorder::new("healthy", 2));
    let runner = Runner::new(runner_store.clone())
        .projection(broken.clone())
        .projection(healthy.clone())
        .retry(quick_retry(2))
        .poll_interval(Duration::from_millis(20));
    let running = common::Running::start(&runner);
    // A failure in the batch, then two attempts alone: it halted.
    eventually("the broken projection halted", Duration::from_secs(30), || async {
        (broken.failed.lock().expect("lock").len() >= 3).then_some(())
    })
    .await;
    eventually("the healthy one caught up", Duration::from_secs(30), || async {
        (healthy.handled_count() == 20).then_some(())
    })
    .await;
    // Appended after the halt: still handled.
    let events = append_streams(&store, &names("t", 4), 5).await;
    let expected = each_once(&store, events).await;
    eventually("the healthy one handled the new events", Duration::from_secs(30), || async {
        (applied(&runner_store, "healthy").await == expected).then_some(())
    })
    .await;
    let err = running.stop().await.expect_err("the halt is returned at the end");
    assert!(matches!(&err, Error::Handler { projection, .. } if projection == "broken"), "{err:?}");
}

/// One partition keeps failing on its first event, waiting out long backoffs before its event
/// is parked; meanwhile the other partitions handle all of their (many) events.
async fn retrying_partition_does_not_hold_the_others_back<S: EventStore + Into<Store>>(store: S) {
    const PARTITIONS: u32 = 4;
    let stuck = partition_of(partition_hash("bad"), PARTITIONS);
    let (behind, others): (Vec<String>, Vec<String>) = names("g", 400)
        .into_iter()
        .partition(|id| partition_of(partition_hash(id), PARTITIONS) == stuck);
    // The stuck partition has far more events queued behind its first one than it may hold.
    let (behind, others) = (&behind[..10], &others[..30]);
    append_streams(&store, &["bad".to_owned()], 1).await;
    let mut streams = behind.to_vec();
    streams.extend_from_slice(others);
    let events = append_streams(&store, &streams, 100).await;
    let mut expected = each_once(&store, events).await;
    let bad = common::whole_log(&store).await[0].position.global_position;
    let store: Store = store.into();
    create_applied(&store).await;
    let recorder =
        Arc::new(Recorder::new("retrying", PARTITIONS).inject("bad", 1, vec![Fault::Fail; 100]));
    let retry = RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(400),
        max_backoff: Duration::from_millis(400),
    };
    Runner::new(store.clone())
        .projection(recorder.clone())
        .retry(retry)
        .on_error(ErrorPolicy::Park)
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("the bad event is parked in the end");

    let handled = recorder.handled.lock().expect("lock").clone();
    let elsewhere: Vec<Instant> =
        handled.iter().filter(|(_, p)| *p != stuck).map(|(at, _)| *at).collect();
    assert_eq!(elsewhere.len(), others.len() * 100, "every event of the other partitions");
    let others_done = elsewhere.iter().max().copied().expect("handled");
    let last_failure = recorder.failed.lock().expect("lock").iter().max().copied().expect("failed");
    assert!(
        others_done < last_failure,
        "the other partitions finished {:?} after the stuck one gave up",
        others_done - last_failure
    );
    // The stuck partition read its backlog alone afterwards: nothing lost, nothing repeated.
    expected.remove(&bad);
    assert_eq!(applied(&store, "retrying").await, expected);
}

/// With a fixed worker id, checkpoint rows deleted (a rebuild) and created again get claims
/// with epochs above every earlier one: an (owner, epoch) pair never repeats.
async fn epochs_never_repeat_when_checkpoints_are_created_again<S: EventStore + Into<Store>>(
    store: S,
) {
    append_streams(&store, &names("s", 4), 2).await;
    let store: Store = store.into();
    create_applied(&store).await;
    let runner = Runner::new(store.clone())
        .projection(Arc::new(Recorder::new("epochs", 2)))
        .worker_id("fixed")
        .until_caught_up();
    let epochs = || async {
        let column = if common::is_mysql(&store) { "`partition`" } else { "partition" };
        let sql =
            format!("SELECT epoch FROM checkpoints WHERE projection = 'epochs' ORDER BY {column}");
        on_pool!(&store, |pool| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(pool)
            .await)
        .expect("epochs")
    };
    runner.run_until(std::future::pending()).await.expect("first run");
    let first = epochs().await;
    runner.rebuild("epochs").await.expect("rebuild");
    runner.run_until(std::future::pending()).await.expect("second run");
    let second = epochs().await;
    assert_eq!((first.len(), second.len()), (2, 2));
    assert!(first.iter().all(|&e| e > 0), "{first:?}");
    assert!(second.iter().min() > first.iter().max(), "{first:?} then {second:?}");
}

/// A TCP proxy in front of PostgreSQL that cuts the connection of one backend right after
/// forwarding its `COMMIT`: the client sees its connection die with the outcome unknown, while
/// the server goes on committing.
struct CommitCutter {
    port: u16,
    /// The backend whose next `COMMIT` is cut (0: none).
    target: Arc<AtomicI32>,
    cuts: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl CommitCutter {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let (target, cuts) = (Arc::new(AtomicI32::new(0)), Arc::new(AtomicUsize::new(0)));
        let (t, c) = (Arc::clone(&target), Arc::clone(&cuts));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                tokio::spawn(relay(client, server, Arc::clone(&t), Arc::clone(&c)));
            }
        });
        CommitCutter { port, target, cuts, accept }
    }
}

impl Drop for CommitCutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one connection; learns its backend's pid from `BackendKeyData`, and cuts the client
/// off right after forwarding a `COMMIT` when that backend is the target.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    target: Arc<AtomicI32>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
    let mut pid = 0;
    let cut = loop {
        tokio::select! {
            n = client_read.read(&mut up) => {
                let n = n.unwrap_or(0);
                if n == 0 || server_write.write_all(&up[..n]).await.is_err() {
                    break false;
                }
                if pid != 0
                    && up[..n].windows(7).any(|w| w == b"COMMIT\0")
                    && target.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    break true;
                }
            }
            n = server_read.read(&mut down) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break false;
                }
                // BackendKeyData: 'K', length 12, the backend's pid, its secret key.
                if pid == 0
                    && let Some(at) = down[..n].windows(5).position(|w| w == [b'K', 0, 0, 0, 12])
                    && at + 9 <= n
                {
                    pid = i32::from_be_bytes(down[at + 5..at + 9].try_into().expect("4 bytes"));
                }
                if client_write.write_all(&down[..n]).await.is_err() {
                    break false;
                }
            }
        }
    };
    // Cut: the client's connection dies now, with the COMMIT sent. The server's stays open
    // until it has answered (ReadyForQuery), so the COMMIT goes through unseen.
    drop((client_read, client_write));
    if cut {
        let answered = async {
            loop {
                let n = server_read.read(&mut down).await.unwrap_or(0);
                if n == 0 || down[..n].contains(&b'Z') {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), answered).await;
    }
}

/// The connection of a batch is cut right after its `COMMIT` was sent, while a deferred
/// trigger keeps the server committing for a second: the worker retries without knowing
/// whether the batch committed. It must find out and apply nothing twice. (In a database of
/// its own: the slow commit would hold the read fence of tests sharing a database.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_outcome_is_lost_is_never_applied_twice() {
    let database = common::PgDatabase::create().await;
    let direct = database.pool(2).await;
    let upstream = SocketAddr::from_str("127.0.0.1:5432").expect("address");
    let proxy = CommitCutter::start(upstream).await;
    let options = database.options.clone().host("127.0.0.1").port(proxy.port);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("connect through the proxy");
    let store = pupsource::PostgresStore::new(pool);
    store.migrate().await.expect("migrate");
    let events = append_streams(&store, &names("s", 4), 10).await;
    let expected = each_once(&store, events).await;
    let target = common::whole_log(&store).await[20].position.global_position;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{APPLIED}; \
         CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN IF NEW.global_position = {target} THEN PERFORM pg_sleep(1); END IF; \
           RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON applied \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();"
    )))
    .execute(&direct)
    .await
    .expect("read model and slow trigger");

    let event = common::whole_log(&store).await[20].clone();
    let recorder = Recorder::new("cut", 1).inject(
        &event.stream.aggregate_id,
        event.aggregate_version,
        [Fault::CutCommit(Arc::clone(&proxy.target))],
    );
    let store: Store = store.into();
    Runner::new(store.clone())
        .projection(Arc::new(recorder))
        .batch_size(5)
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("the run goes on after the cut");
    assert_eq!(proxy.cuts.load(Ordering::SeqCst), 1, "one COMMIT was cut");
    assert_eq!(applied(&store, "cut").await, expected, "every event applied once");
    if let Store::Postgres(store) = store {
        store.pool().close().await;
    }
    direct.close().await;
}

/// In the one-event-at-a-time path (after a handler failure), the handler's own connection
/// is terminated: the rollback that follows fails with a lost connection. That is retried,
/// not fatal, and every event is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_in_the_one_event_path_is_retried() {
    let db = common::postgres().await;
    let events = append_streams(&db.store, &names("s", 3), 4).await;
    let expected = each_once(&db.store, events).await;
    let store: Store = db.store.clone().into();
    create_applied(&store).await;
    let recorder = Recorder::new("fragile", 1).inject(
        "s1",
        2,
        [Fault::Fail, Fault::KillOwnConnection, Fault::KillOwnConnection],
    );
    Runner::new(store.clone())
        .projection(Arc::new(recorder))
        .retry(quick_retry(5))
        .until_caught_up()
        .run_until(std::future::pending())
        .await
        .expect("a lost connection is retried");
    assert_eq!(applied(&store, "fragile").await, expected);
}

/// Another connection holds the SQLite file's write lock for longer than the store's busy
/// timeout while a projection runs: `database is locked` is waited out, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_locked_past_the_busy_timeout_is_waited_out() {
    use sqlx::ConnectOptions as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("locked.db").display());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .expect("url")
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(20));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.clone())
        .await
        .expect("open");
    let sqlite = SqliteStore::new(pool);
    sqlite.migrate().await.expect("migrate");
    let events = append_streams(&sqlite, &names("s", 4), 50).await;
    let expected = each_once(&sqlite, events).await;
    let store: Store = sqlite.into();
    create_applied(&store).await;
    let recorder = Arc::new(Recorder::new("patient", 2).slow(Duration::from_millis(2)));
    let runner = Runner::new(store.clone()).projection(recorder.clone()).batch_size(5);
    let running = common::Running::start(&runner);
    eventually("some events are applied", Duration::from_secs(30), || async {
        (recorder.handled_count() >= 20).then_some(())
    })
    .await;

    let mut blocker =
        options.busy_timeout(Duration::from_secs(10)).connect().await.expect("blocker");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.expect("take the write lock");
    let held_at = recorder.handled_count();
    // Hold the lock for 25 busy timeouts: every batch and heartbeat meanwhile is refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(recorder.handled_count(), held_at, "nothing is handled meanwhile");
    sqlx::query("COMMIT").execute(&mut blocker).await.expect("release the lock");

    eventually("every event is applied", Duration::from_secs(30), || async {
        (applied(&store, "patient").await == expected).then_some(())
    })
    .await;
    running.stop().await.expect("the run survived the lock");
}
