//! The command side: aggregates loaded from their streams (and snapshots), and decisions
//! appended at the version they were made on, retried on conflicts. Every test checks the rows
//! the store holds, on PostgreSQL, a SQLite file and SQLite `:memory:`.
//!
//! The property test at the end checks that loading from snapshots (written, stale, corrupt or
//! missing) always equals folding the whole stream, for random histories.

mod common;

use std::cell::RefCell;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use pupsource::aggregate::{AggregateStore, Apply, Change, ExecuteError, Retry};
use pupsource::{Aggregate, DomainEvent, Event, ExpectedVersion, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------------
// The domain: a bank account, with and without snapshots, over the same events
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Opened {
    owner: String,
}

/// Schema version 1 of `Deposited`: the amount was called `cents`.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account", name = "Deposited", version = 1)]
struct DepositedV1 {
    cents: i64,
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account", version = 2, upcast_from = DepositedV1)]
struct Deposited {
    amount: i64,
}

impl From<DepositedV1> for Deposited {
    fn from(old: DepositedV1) -> Self {
        Deposited { amount: old.cents }
    }
}

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Banking", aggregate = "Account")]
struct Withdrawn {
    amount: i64,
}

/// What both account aggregates fold to.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Balance {
    owner: String,
    balance: i64,
    /// Every amount in order: a fold that skips or repeats an event cannot match.
    history: Vec<i64>,
}

impl Balance {
    fn open(&mut self, event: &Opened) {
        self.owner.clone_from(&event.owner);
    }

    fn add(&mut self, amount: i64) {
        self.balance += amount;
        self.history.push(amount);
    }
}

/// The account without snapshots; stored `Audited` events are skipped.
#[derive(Debug, Default)]
#[pupsource::aggregate(events(Opened, Deposited, Withdrawn), ignore("Audited"))]
struct Account(Balance);

/// The same account with a snapshot every 3 versions.
#[derive(Debug, Default, Serialize, Deserialize)]
#[pupsource::aggregate(
    events(Opened, Deposited, Withdrawn),
    ignore("Audited"),
    snapshot_every = 3,
    snapshot_version = 2
)]
struct SnapshotAccount(Balance);

macro_rules! apply_balance {
    ($($aggregate:ident),*) => {$(
        impl Apply<Opened> for $aggregate {
            fn apply(&mut self, event: &Opened) {
                self.0.open(event);
            }
        }
        impl Apply<Deposited> for $aggregate {
            fn apply(&mut self, event: &Deposited) {
                self.0.add(event.amount);
            }
        }
        impl Apply<Withdrawn> for $aggregate {
            fn apply(&mut self, event: &Withdrawn) {
                self.0.add(-event.amount);
            }
        }
    )*};
}
apply_balance!(Account, SnapshotAccount);

/// Another aggregate of the same stream, with snapshots of the same version and shape, that
/// counts only deposits: it must never start from `SnapshotAccount`'s state.
#[derive(Debug, Default, Serialize, Deserialize)]
#[pupsource::aggregate(
    events(Opened, Deposited, Withdrawn),
    snapshot_every = 2,
    snapshot_version = 2
)]
struct Deposits(Balance);

impl Apply<Opened> for Deposits {
    fn apply(&mut self, event: &Opened) {
        self.0.open(event);
    }
}

impl Apply<Deposited> for Deposits {
    fn apply(&mut self, event: &Deposited) {
        self.0.add(event.amount);
    }
}

impl Apply<Withdrawn> for Deposits {
    fn apply(&mut self, _: &Withdrawn) {}
}

#[derive(Debug, PartialEq)]
enum Refused {
    InsufficientFunds { balance: i64, amount: i64 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Refused::InsufficientFunds { balance, amount } = self;
        write!(f, "cannot withdraw {amount} from a balance of {balance}")
    }
}

fn deposit<A>(amount: i64) -> Result<Vec<Change<A>>, Refused>
where
    A: pupsource::Aggregate,
    Deposited: pupsource::aggregate::EventOf<A>,
{
    Ok(vec![Deposited { amount }.into()])
}

fn withdraw(account: &Account, amount: i64) -> Result<Vec<Change<Account>>, Refused> {
    if account.0.balance < amount {
        return Err(Refused::InsufficientFunds { balance: account.0.balance, amount });
    }
    Ok(vec![Withdrawn { amount }.into()])
}

/// Every backend's store, and the same store as a [`Store`] for raw SQL.
trait Backend: AggregateStore + Into<Store> {}
impl<S: AggregateStore + Into<Store>> Backend for S {}

/// The snapshot row of `id`: (aggregate_version, snapshot_version, state).
async fn snapshot_row(store: &Store, id: &str) -> Option<(i64, i64, serde_json::Value)> {
    let sql = if common::is_mysql(store) {
        "SELECT aggregate_version, snapshot_version, state \
         FROM snapshots WHERE aggregate_id = ? AND state_type = 'SnapshotAccount'"
    } else {
        "SELECT aggregate_version, CAST(snapshot_version AS BIGINT), CAST(state AS TEXT) \
         FROM snapshots WHERE aggregate_id = $1 AND state_type = 'SnapshotAccount'"
    };
    let row: Option<(i64, i64, String)> = on_pool!(store, |pool| sqlx::query_as(sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .expect("read the snapshot row"));
    row.map(|(version, snapshot_version, state)| {
        (version, snapshot_version, serde_json::from_str(&state).expect("the state is JSON"))
    })
}

/// The stored events of the account `id` (a stream read: unlike a read of the log, not held
/// back by other tests' transactions on PostgreSQL).
async fn stored<S: Backend>(store: &S, id: &str) -> Vec<pupsource::PersistedEvent> {
    stored_in(store, &Account::stream(id)).await
}

async fn stored_in<S: Backend>(
    store: &S,
    stream: &pupsource::StreamId,
) -> Vec<pupsource::PersistedEvent> {
    store.read_stream(stream, ..).await.expect("read the stream").events
}

/// Runs `sql` with `id` as `$1`.
async fn execute_sql(store: &Store, sql: &'static str, id: &str) {
    let text = common::placeholders(common::is_mysql(store), sql);
    on_pool!(store, |pool| {
        sqlx::query(sqlx::AssertSqlSafe(text.clone())).bind(id).execute(pool).await.expect(sql);
    });
}

// ---------------------------------------------------------------------------------------------
// Load and execute
// ---------------------------------------------------------------------------------------------

on_every_backend!(
    a_new_stream_loads_as_default_at_version_zero,
    execute_appends_at_the_loaded_version_and_names_version_and_positions,
    a_rejected_decision_returns_the_callers_error_and_writes_nothing,
    a_decision_of_no_events_writes_nothing,
    older_schema_versions_are_upcast_on_load,
    an_unlisted_stored_event_is_an_error_naming_it_and_ignored_ones_are_skipped,
    an_event_that_would_not_load_back_is_refused_before_the_append,
    conflict_storm_of_16_tasks_loses_no_update,
    overdraft_storm_never_overdraws,
    execute_in_commits_with_the_callers_writes_or_not_at_all,
    a_snapshot_is_written_in_the_append_that_crosses_a_multiple,
    a_snapshot_of_another_version_or_that_does_not_decode_is_ignored_and_replaced,
    aggregates_sharing_a_stream_keep_their_own_snapshots,
);

async fn a_new_stream_loads_as_default_at_version_zero<S: Backend>(store: S) {
    let loaded = store.load::<Account>("new").await.expect("load");
    assert_eq!((loaded.state.0, loaded.version, loaded.folded), (Balance::default(), 0, 0));
    let loaded = store.load::<SnapshotAccount>("new").await.expect("load");
    assert_eq!((loaded.state.0, loaded.version, loaded.snapshot), (Balance::default(), 0, None));
}

async fn execute_appends_at_the_loaded_version_and_names_version_and_positions<S: Backend>(
    store: S,
) {
    let opened = store
        .execute::<Account, _>("a", |_| {
            Ok::<_, Refused>(vec![
                Opened { owner: "ada".into() }.into(),
                Deposited { amount: 100 }.into(),
            ])
        })
        .await
        .expect("open");
    assert_eq!((opened.version, opened.positions.len(), opened.attempts), (2, 2, 1));
    let withdrawn =
        store.execute::<Account, _>("a", |account| withdraw(account, 30)).await.expect("withdraw");
    assert_eq!(withdrawn.version, 3);
    assert_eq!(withdrawn.state.0.balance, 70);

    let log = stored(&store, "a").await;
    let stored: Vec<_> = log
        .iter()
        .map(|e| (e.event_type.as_str(), e.event_version, e.aggregate_version, e.payload.clone()))
        .collect();
    assert_eq!(
        stored,
        [
            ("Opened", 1, 1, json!({ "owner": "ada" })),
            ("Deposited", 2, 2, json!({ "amount": 100 })),
            ("Withdrawn", 1, 3, json!({ "amount": 30 })),
        ]
    );
    let positions: Vec<_> = log.iter().map(|e| e.position).collect();
    assert_eq!([opened.positions, withdrawn.positions].concat(), positions);
    assert!(log.iter().all(|e| e.stream == Account::stream("a")));

    let loaded = store.load::<Account>("a").await.expect("load");
    assert_eq!((loaded.version, loaded.state.0), (3, withdrawn.state.0));
}

async fn a_rejected_decision_returns_the_callers_error_and_writes_nothing<S: Backend>(store: S) {
    store.execute::<Account, _>("a", |_| deposit(10)).await.expect("deposit");
    let refused = store.execute::<Account, _>("a", |account| withdraw(account, 11)).await;
    match refused {
        Err(ExecuteError::Rejected(refused)) => {
            assert_eq!(refused, Refused::InsufficientFunds { balance: 10, amount: 11 });
        }
        other => panic!("expected the decision's error, got {other:?}"),
    }
    assert_eq!(stored(&store, "a").await.len(), 1);
}

async fn a_decision_of_no_events_writes_nothing<S: Backend>(store: S) {
    store.execute::<Account, _>("a", |_| deposit(10)).await.expect("deposit");
    let done = store
        .execute::<Account, _>("a", |_| Ok::<_, Refused>(Vec::new()))
        .await
        .expect("nothing to do");
    assert_eq!((done.version, done.positions.len(), done.state.0.balance), (1, 0, 10));
    assert_eq!(stored(&store, "a").await.len(), 1);
}

async fn older_schema_versions_are_upcast_on_load<S: Backend>(store: S) {
    let old = DepositedV1 { cents: 42 }.to_event("a").expect("event");
    store.append_and_commit(ExpectedVersion::NoStream, &[old]).await.expect("append v1");
    store.execute::<Account, _>("a", |_| deposit(8)).await.expect("deposit v2");
    let loaded = store.load::<Account>("a").await.expect("load");
    assert_eq!((loaded.state.0.history, loaded.version), (vec![42, 8], 2));
    let versions: Vec<u32> = stored(&store, "a").await.iter().map(|e| e.event_version).collect();
    assert_eq!(versions, [1, 2]);
}

async fn an_unlisted_stored_event_is_an_error_naming_it_and_ignored_ones_are_skipped<S: Backend>(
    store: S,
) {
    let stream = Account::stream("a");
    let events = [
        Event::new(&stream, "Deposited", json!({ "amount": 5 })).with_event_version(2),
        Event::new(&stream, "Audited", json!({ "by": "bob" })),
    ];
    store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    let loaded = store.load::<Account>("a").await.expect("`Audited` is ignored");
    assert_eq!((loaded.state.0.balance, loaded.version, loaded.folded), (5, 2, 2));

    let frozen = Event::new(&stream, "Frozen", json!({}));
    store.append_and_commit(ExpectedVersion::Exact(2), &[frozen]).await.expect("append");
    for err in [
        store.load::<Account>("a").await.expect_err("unlisted"),
        store.execute::<Account, _>("a", |_| deposit(1)).await.expect_err("unlisted").into_store(),
    ] {
        match err {
            pupsource::Error::UnlistedEvent {
                aggregate,
                stream: s,
                event_type,
                aggregate_version,
            } => {
                assert_eq!(
                    (aggregate, *s, event_type.as_str(), aggregate_version),
                    ("Account", stream.clone(), "Frozen", 3)
                );
            }
            other => panic!("expected UnlistedEvent, got {other:?}"),
        }
    }
    let message = store.load::<Account>("a").await.expect_err("unlisted").to_string();
    assert!(message.contains("`Frozen`") && message.contains("ignore"), "{message}");
    assert_eq!(stored(&store, "a").await.len(), 3, "the failed execute wrote nothing");
}

/// An event whose serialized form does not deserialize (a field skipped when serializing).
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Notes", aggregate = "Notebook")]
struct Noted {
    #[serde(skip_serializing)]
    text: String,
}

#[derive(Debug, Default)]
#[pupsource::aggregate(events(Noted))]
struct Notebook {
    notes: Vec<String>,
}

impl Apply<Noted> for Notebook {
    fn apply(&mut self, event: &Noted) {
        self.notes.push(event.text.clone());
    }
}

async fn an_event_that_would_not_load_back_is_refused_before_the_append<S: Backend>(store: S) {
    let err = store
        .execute::<Notebook, _>("n", |_| Ok::<_, Refused>(vec![Noted { text: "hi".into() }.into()]))
        .await
        .expect_err("does not decode back");
    match err.into_store() {
        pupsource::Error::EventDecode { event_type, aggregate_version, .. } => {
            assert_eq!((event_type.as_str(), aggregate_version), ("Noted", 1));
        }
        other => panic!("expected EventDecode, got {other:?}"),
    }
    assert!(stored_in(&store, &Notebook::stream("n")).await.is_empty());
}

/// `ExecuteError` as the store error it holds, for the tests that expect one.
trait IntoStore {
    fn into_store(self) -> pupsource::Error;
}

impl<E: std::fmt::Debug> IntoStore for ExecuteError<E> {
    fn into_store(self) -> pupsource::Error {
        match self {
            ExecuteError::Store(err) => err,
            other => panic!("expected a store error, got {other:?}"),
        }
    }
}

const TASKS: usize = 16;
const COMMANDS_PER_TASK: usize = 8;
const DEPOSIT: i64 = 5;
const WITHDRAWAL: i64 = 2;

async fn conflict_storm_of_16_tasks_loses_no_update<S: Backend>(store: S) {
    store
        .execute::<Account, _>("storm", |_| {
            Ok::<_, Refused>(vec![
                Opened { owner: "ada".into() }.into(),
                Deposited { amount: 1_000 }.into(),
            ])
        })
        .await
        .expect("open");
    // Every lost attempt means another command was appended, so this many attempts cannot run
    // out: every command ends appended.
    let retry = Retry::default().attempts(u32::try_from(TASKS * COMMANDS_PER_TASK).unwrap_or(1));
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let (store, start) = (store.clone(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            let mut attempts = 0;
            for command in 0..COMMANDS_PER_TASK {
                let done = if command % 2 == 0 {
                    store.execute_with::<Account, _>("storm", retry, |_| deposit(DEPOSIT)).await
                } else {
                    store
                        .execute_with::<Account, _>("storm", retry, |a| withdraw(a, WITHDRAWAL))
                        .await
                };
                attempts += done.unwrap_or_else(|e| panic!("task {task}: {e}")).attempts;
            }
            attempts
        });
    }
    let mut attempts = 0;
    while let Some(task) = tasks.join_next().await {
        attempts += task.expect("task");
    }
    let commands = TASKS * COMMANDS_PER_TASK;
    eprintln!("{commands} commands took {attempts} attempts");
    if let Store::Sqlite(_) = store.clone().into() {
        assert_eq!(attempts as usize, commands, "SQLite attempts hold the write lock: no conflict");
    }

    let expected =
        1_000 + i64::try_from(TASKS * COMMANDS_PER_TASK / 2).unwrap_or(0) * (DEPOSIT - WITHDRAWAL);
    let loaded = store.load::<Account>("storm").await.expect("load");
    assert_eq!(loaded.state.0.balance, expected);
    assert_eq!(loaded.version, 2 + commands as u64);
    // The table holds every command's event exactly once, at consecutive versions.
    let log = stored(&store, "storm").await;
    let versions: Vec<u64> = log.iter().map(|e| e.aggregate_version).collect();
    assert_eq!(versions, (1..=2 + commands as u64).collect::<Vec<_>>());
    let count = |name: &str| log.iter().filter(|e| e.event_type == name).count();
    assert_eq!((count("Deposited"), count("Withdrawn")), (1 + commands / 2, commands / 2));
    let sum: i64 = log
        .iter()
        .map(|e| {
            e.payload["amount"].as_i64().unwrap_or(0)
                * if e.event_type == "Withdrawn" { -1 } else { 1 }
        })
        .sum();
    assert_eq!(sum, expected);
}

async fn overdraft_storm_never_overdraws<S: Backend>(store: S) {
    store.execute::<Account, _>("o", |_| deposit(100)).await.expect("deposit");
    let retry = Retry::default().attempts(u32::try_from(TASKS).unwrap_or(1) + 1);
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (store, start) = (store.clone(), Arc::clone(&start));
        tasks.spawn(async move {
            start.wait().await;
            store.execute_with::<Account, _>("o", retry, |a| withdraw(a, 10)).await
        });
    }
    let (mut done, mut refused) = (0, 0);
    while let Some(task) = tasks.join_next().await {
        match task.expect("task") {
            Ok(_) => done += 1,
            Err(ExecuteError::Rejected(Refused::InsufficientFunds { balance: 0, amount: 10 })) => {
                refused += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((done, refused), (10, TASKS - 10));
    assert_eq!(store.load::<Account>("o").await.expect("load").state.0.balance, 0);
    assert_eq!(stored(&store, "o").await.len(), 11);
}

async fn conflicts_end_after_the_configured_attempts<S: Backend>(store: S) {
    store.execute::<Account, _>("c", |_| deposit(1)).await.expect("deposit");
    // A decision that, each time it runs, lets another writer append first.
    let other = store.clone();
    let interfere = |_: &Account| {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                other.execute::<Account, _>("c", |_| deposit(1)).await.expect("interfere");
            });
        });
        deposit(100)
    };
    let retry = Retry::default().attempts(3);
    match store.execute_with::<Account, _>("c", retry, interfere).await {
        Err(ExecuteError::Conflict {
            attempts: 3,
            source: pupsource::Error::Concurrency { .. },
        }) => {}
        other => panic!("expected a conflict after 3 attempts, got {other:?}"),
    }
    let amounts: Vec<i64> =
        stored(&store, "c").await.iter().filter_map(|e| e.payload["amount"].as_i64()).collect();
    assert_eq!(amounts, [1, 1, 1, 1], "only the interfering writers' deposits are stored");
}

async fn execute_in_commits_with_the_callers_writes_or_not_at_all<S: Backend>(store: S) {
    let audit =
        |id: &str| Event::new(&pupsource::StreamId::new("Audit", "Log", id), "Logged", json!({}));

    let mut tx = store.begin().await.expect("begin");
    let done = store
        .execute_in::<Account, _>(&mut tx, "t", Retry::default(), |_| deposit(5))
        .await
        .expect("execute in the transaction");
    assert_eq!(done.version, 1);
    store.append(&mut tx, ExpectedVersion::NoStream, &[audit("1")]).await.expect("other write");
    drop(tx); // rolled back
    let audit_log = pupsource::StreamId::new("Audit", "Log", "1");
    assert!(stored(&store, "t").await.is_empty(), "nothing of a rolled-back transaction is stored");
    assert!(stored_in(&store, &audit_log).await.is_empty());

    let mut tx = store.begin().await.expect("begin");
    let loaded = store.load_in::<Account>(&mut tx, "t").await.expect("load in the transaction");
    assert_eq!(loaded.version, 0);
    store
        .execute_in::<Account, _>(&mut tx, "t", Retry::default(), |_| deposit(5))
        .await
        .expect("execute in the transaction");
    store.append(&mut tx, ExpectedVersion::NoStream, &[audit("1")]).await.expect("other write");
    tx.commit().await.expect("commit");
    let (account, audit) = (stored(&store, "t").await, stored_in(&store, &audit_log).await);
    assert_eq!((account.len(), audit.len()), (1, 1));
    // PostgreSQL: the same transaction id (SQLite stores none: 0 for both).
    assert_eq!(account[0].position.transaction_id, audit[0].position.transaction_id);
    assert_eq!(store.load::<Account>("t").await.expect("load").state.0.balance, 5);
}

// On SQLite an attempt holds the write lock from its load to its commit: no writer can come
// in between, so there is nothing to provoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conflicts_end_after_the_configured_attempts() {
    let db = common::postgres().await;
    conflicts_end_after_the_configured_attempts(db.store.clone()).await;
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

async fn a_snapshot_is_written_in_the_append_that_crosses_a_multiple<S: Backend>(store: S) {
    let raw: Store = store.clone().into();
    for amount in 1..=2 {
        store.execute::<SnapshotAccount, _>("s", |_| deposit(amount)).await.expect("deposit");
    }
    assert_eq!(snapshot_row(&raw, "s").await, None, "no snapshot before version 3");
    // 2 events: versions 3 and 4, crossing 3.
    store
        .execute::<SnapshotAccount, _>("s", |_| {
            Ok::<_, Refused>(vec![Deposited { amount: 3 }.into(), Deposited { amount: 4 }.into()])
        })
        .await
        .expect("deposit");
    let state = json!({ "owner": "", "balance": 10, "history": [1, 2, 3, 4] });
    assert_eq!(snapshot_row(&raw, "s").await, Some((4, 2, state.clone())));

    let loaded = store.load::<SnapshotAccount>("s").await.expect("load");
    assert_eq!((loaded.version, loaded.snapshot, loaded.folded), (4, Some(4), 0));
    store.execute::<SnapshotAccount, _>("s", |_| deposit(5)).await.expect("deposit");
    let loaded = store.load::<SnapshotAccount>("s").await.expect("load");
    assert_eq!((loaded.version, loaded.snapshot, loaded.folded), (5, Some(4), 1));
    assert_eq!(loaded.state.0.history, [1, 2, 3, 4, 5]);
    assert_eq!(snapshot_row(&raw, "s").await.map(|row| row.0), Some(4), "5 crosses nothing");
    store.execute::<SnapshotAccount, _>("s", |_| deposit(6)).await.expect("deposit");
    assert_eq!(snapshot_row(&raw, "s").await.map(|row| row.0), Some(6));

    // A snapshot of the current version is what a load starts from: a forged one shows.
    let forged = "UPDATE snapshots SET state = '{\"owner\":\"\",\"balance\":-1,\"history\":[]}' \
                  WHERE aggregate_id = $1";
    execute_sql(&raw, forged, "s").await;
    let loaded = store.load::<SnapshotAccount>("s").await.expect("load");
    assert_eq!(loaded.state.0.balance, -1, "a snapshot of the current version is trusted");
}

async fn a_snapshot_of_another_version_or_that_does_not_decode_is_ignored_and_replaced<
    S: Backend,
>(
    store: S,
) {
    let raw: Store = store.clone().into();
    for amount in 1..=3 {
        store.execute::<SnapshotAccount, _>("s", |_| deposit(amount)).await.expect("deposit");
    }
    let full = store.load::<Account>("s").await.expect("full fold").state.0;
    for tamper in [
        "UPDATE snapshots SET snapshot_version = 1, state = '{\"balance\":-1}' WHERE aggregate_id = $1",
        "UPDATE snapshots SET state = '{\"not\":\"a balance\"}' WHERE aggregate_id = $1",
    ] {
        assert_eq!(snapshot_row(&raw, "s").await.map(|row| row.1), Some(2));
        execute_sql(&raw, tamper, "s").await;
        let loaded = store.load::<SnapshotAccount>("s").await.expect("load");
        assert_eq!(
            (loaded.snapshot, loaded.folded),
            (None, usize::try_from(loaded.version).unwrap_or(0))
        );
        assert_eq!(
            loaded.state.0.history,
            store.load::<Account>("s").await.expect("load").state.0.history
        );
        // The next write replaces it, though it crosses no multiple of 3.
        let version = store
            .execute::<SnapshotAccount, _>("s", |_| deposit(1))
            .await
            .expect("deposit")
            .version;
        let row = snapshot_row(&raw, "s").await.expect("a snapshot");
        assert_eq!((row.0, row.1), (i64::try_from(version).unwrap_or(0), 2));
    }
    assert_eq!(full.history, [1, 2, 3]);
    let loaded = store.load::<SnapshotAccount>("s").await.expect("load");
    assert_eq!((loaded.state.0.history, loaded.folded), (vec![1, 2, 3, 1, 1], 0));
}

async fn aggregates_sharing_a_stream_keep_their_own_snapshots<S: Backend>(store: S) {
    let raw: Store = store.clone().into();
    let both = |_: &SnapshotAccount| {
        Ok::<_, Refused>(vec![Deposited { amount: 10 }.into(), Withdrawn { amount: 4 }.into()])
    };
    for _ in 0..3 {
        store.execute::<SnapshotAccount, _>("s", both).await.expect("execute");
    }
    let deposits = store.load::<Deposits>("s").await.expect("load");
    assert_eq!((deposits.snapshot, deposits.state.0.balance), (None, 30), "not the other's");
    store.execute::<Deposits, _>("s", |_| deposit(1)).await.expect("execute");
    let deposits = store.load::<Deposits>("s").await.expect("load");
    assert_eq!((deposits.snapshot, deposits.state.0.balance), (Some(7), 31));
    let account = store.load::<SnapshotAccount>("s").await.expect("load");
    assert_eq!((account.snapshot, account.state.0.balance), (Some(6), 19));
    let column =
        if common::is_mysql(&raw) { "CONVERT(state_type USING utf8mb4)" } else { "state_type" };
    let sql = format!("SELECT {column} FROM snapshots WHERE aggregate_id = 's' ORDER BY 1");
    let types: Vec<String> =
        on_pool!(&raw, |pool| sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(pool)
            .await
            .expect("snapshot rows"));
    assert_eq!(types, ["Deposits", "SnapshotAccount"]);
}

// ---------------------------------------------------------------------------------------------
// Property: load with snapshots == full fold
// ---------------------------------------------------------------------------------------------

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// A command appending these amounts (positive: deposits, negative: withdrawals).
    Execute(Vec<i64>),
    /// An event appended by someone else, as a raw `Event`: the next write is not aligned.
    Append(i64),
    /// An ignored event.
    Audit,
    /// The snapshot row is tampered with: another version, a state that does not decode, or gone.
    Tamper(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(-50i64..100, 1..5).prop_map(Step::Execute),
        2 => (-50i64..100).prop_map(Step::Append),
        1 => Just(Step::Audit),
        1 => (0u8..3).prop_map(Step::Tamper),
    ]
}

async fn run_history<S: Backend>(store: &S, id: &str, steps: &[Step]) -> Result<(), TestCaseError> {
    let raw: Store = store.clone().into();
    let stream = SnapshotAccount::stream(id);
    for step in steps {
        match step {
            Step::Execute(amounts) => {
                let changes = || {
                    amounts
                        .iter()
                        .map(|&a| {
                            if a >= 0 {
                                Change::from(Deposited { amount: a })
                            } else {
                                Change::from(Withdrawn { amount: -a })
                            }
                        })
                        .collect::<Vec<Change<SnapshotAccount>>>()
                };
                let done = store
                    .execute::<SnapshotAccount, _>(id, |_| Ok::<_, Refused>(changes()))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let full = store
                    .load::<Account>(id)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&done.state.0, &full.state.0, "executed state == full fold");
                prop_assert_eq!(done.version, full.version);
            }
            Step::Append(amount) => {
                let event = Deposited { amount: *amount }
                    .to_event(id)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                store
                    .append_and_commit(ExpectedVersion::Any, &[event])
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Step::Audit => {
                let event = Event::new(&stream, "Audited", json!({}));
                store
                    .append_and_commit(ExpectedVersion::Any, &[event])
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Step::Tamper(how) => {
                let sql = match how {
                    0 => "UPDATE snapshots SET snapshot_version = 7 WHERE aggregate_id = $1",
                    1 => "UPDATE snapshots SET state = '[]' WHERE aggregate_id = $1",
                    _ => "DELETE FROM snapshots WHERE aggregate_id = $1",
                };
                execute_sql(&raw, sql, id).await;
            }
        }
        let snapshot = store
            .load::<SnapshotAccount>(id)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let full =
            store.load::<Account>(id).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&snapshot.state.0, &full.state.0, "load with snapshots == full fold");
        prop_assert_eq!(snapshot.version, full.version);
        prop_assert!(snapshot.folded <= full.folded);
    }
    Ok(())
}

fn histories_load_the_same_with_and_without_snapshots<S: Backend>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    cases: u32,
) {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let used = RefCell::new(0usize);
    runner
        .run(&prop::collection::vec(step(), 1..25), |steps| {
            let id = uuid::Uuid::new_v4().to_string();
            rt.block_on(run_history(store, &id, &steps))?;
            let loaded = rt
                .block_on(store.load::<SnapshotAccount>(&id))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            *used.borrow_mut() += usize::from(loaded.snapshot.is_some());
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(*used.borrow() > 0, "some histories ended loading from a snapshot");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn sqlite_load_with_snapshots_equals_the_full_fold() {
    let rt = runtime();
    let store = rt.block_on(common::sqlite_memory());
    histories_load_the_same_with_and_without_snapshots(&rt, &store, 64);
}

#[test]
fn postgres_load_with_snapshots_equals_the_full_fold() {
    let rt = runtime();
    let db = rt.block_on(common::postgres());
    histories_load_the_same_with_and_without_snapshots(&rt, &db.store, 24);
}
