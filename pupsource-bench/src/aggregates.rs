//! The command side: loading a long aggregate with and without a snapshot, and `execute`
//! against the hand-written load–fold–append loop it replaces.
//!
//! The baseline of a load is the stream read through pupsource's store and folded by hand
//! (decode each event, add it up); the baseline of a command is the loop of the
//! `optimistic_concurrency` example: read the stream, fold, decide, `append_and_commit` at
//! `Exact(version)`, and again on a conflict.

use std::time::{Duration, Instant};

use pupsource::aggregate::{Apply, Change};
use pupsource::{DomainEvent, ExpectedVersion, Store};
use serde::{Deserialize, Serialize};

use crate::report::{Latency, Row};
use crate::workloads::Deposited;
use crate::{BenchResult, Side, Sizes};

/// Events of the aggregate the load workloads read.
const LONG_STREAM: u64 = 10_000;
/// Events per append while the long stream is written.
const CHUNK: u64 = 1_000;
/// Writers of the command workloads, each on an account of its own.
const WRITERS: usize = 4;

/// The benchmark account, folded from every event.
#[derive(Debug, Default, Serialize, Deserialize)]
#[pupsource::aggregate(events(Deposited))]
struct Account {
    total: i64,
    count: u64,
}

/// The same account, with a snapshot every 100 versions.
#[derive(Debug, Default, Serialize, Deserialize)]
#[pupsource::aggregate(events(Deposited), snapshot_every = 100)]
struct SnapshotAccount {
    total: i64,
    count: u64,
}

impl Apply<Deposited> for Account {
    fn apply(&mut self, event: &Deposited) {
        self.total += event.amount;
        self.count += 1;
    }
}

impl Apply<Deposited> for SnapshotAccount {
    fn apply(&mut self, event: &Deposited) {
        self.total += event.amount;
        self.count += 1;
    }
}

fn deposit(account: i64) -> Deposited {
    Deposited { account, amount: 1, memo: "m".repeat(140) }
}

/// The hand-written load: read the stream, decode and fold each event.
async fn fold_by_hand(store: &Store, id: &str) -> BenchResult<(u64, u64)> {
    let stream = store.read_stream(&Deposited::stream(id), ..).await?;
    let mut count = 0u64;
    for event in &stream.events {
        std::hint::black_box(Deposited::decode(event)?);
        count += 1;
    }
    Ok((count, stream.version()))
}

/// Loads per second of `load` during `time` (at least one load).
async fn loads_per_second<F, Fut>(time: Duration, mut load: F) -> BenchResult<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<()>>,
{
    let started = Instant::now();
    let mut loads = 0u32;
    while loads == 0 || started.elapsed() < time {
        load().await?;
        loads += 1;
    }
    Ok(f64::from(loads) / started.elapsed().as_secs_f64())
}

pub(crate) async fn all(side: &Side, sizes: Sizes) -> BenchResult<Vec<Row>> {
    let store = side.store();
    let id = format!("long-{}", uuid::Uuid::now_v7().simple());
    for from in (0..LONG_STREAM).step_by(CHUNK as usize) {
        let events = (0..CHUNK).map(|_| deposit(0).to_event(&id)).collect::<Result<Vec<_>, _>>()?;
        store.append_and_commit(ExpectedVersion::Exact(from), &events).await?;
    }
    // One command through the snapshotting aggregate writes its first snapshot: none exists
    // and the stream is far past `snapshot_every`.
    store
        .execute(&id, |_: &SnapshotAccount| Ok::<_, String>(vec![Change::from(deposit(0))]))
        .await?;

    let time = sizes.append_time;
    let baseline = loads_per_second(time, || async {
        let (count, version) = fold_by_hand(&store, &id).await?;
        if count != LONG_STREAM + 1 || version != LONG_STREAM + 1 {
            return Err(format!("the hand-written fold read {count} events").into());
        }
        Ok(())
    })
    .await?;
    let full = loads_per_second(time, || async {
        let loaded = store.load::<Account>(&id).await?;
        if loaded.state.count != LONG_STREAM + 1 {
            return Err(format!("the full load folded {} events", loaded.state.count).into());
        }
        Ok(())
    })
    .await?;
    let snapshot = loads_per_second(time, || async {
        let loaded = store.load::<SnapshotAccount>(&id).await?;
        if loaded.snapshot.is_none() || loaded.state.count != LONG_STREAM + 1 {
            return Err("the load did not start from the snapshot".into());
        }
        Ok(())
    })
    .await?;
    let load_row = |workload: String, lib: f64| Row {
        backend: side.name(),
        workload,
        unit: "loads/s",
        lib,
        raw: Some(baseline),
        ratio: None,
        lib_latency: None,
        raw_latency: None,
    };
    let events = LONG_STREAM + 1;
    Ok(vec![
        load_row(format!("load an aggregate of {events} events, whole fold"), full),
        load_row(format!("load an aggregate of {events} events, from its snapshot"), snapshot),
        commands(side, time).await?,
    ])
}

/// `WRITERS` tasks each run deposit commands on an account of their own for `time`: through
/// `execute` (with a snapshot every 100), and through the hand-written loop.
async fn commands(side: &Side, time: Duration) -> BenchResult<Row> {
    let mut figures = Vec::new();
    for lib in [true, false] {
        let started = Instant::now();
        let deadline = started + time;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = side.store();
            let id = format!("cmd-{lib}-{w}-{}", uuid::Uuid::now_v7().simple());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let at = Instant::now();
                    if lib {
                        let decide =
                            |_: &SnapshotAccount| Ok::<_, String>(vec![Change::from(deposit(0))]);
                        store.execute(&id, decide).await?;
                    } else {
                        hand_written_command(&store, &id).await?;
                    }
                    latencies.push(at.elapsed());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let per_second = latencies.len() as f64 / started.elapsed().as_secs_f64();
        figures.push((per_second, Latency::of(&mut latencies)));
    }
    Ok(Row {
        backend: side.name(),
        workload: format!(
            "commands, {WRITERS} writers on their own aggregates, `execute` vs hand-written loop"
        ),
        unit: "commands/s",
        lib: figures[0].0,
        raw: Some(figures[1].0),
        ratio: None,
        lib_latency: figures[0].1,
        raw_latency: figures[1].1,
    })
}

/// One deposit command, written by hand: load, fold, decide, append at the loaded version.
async fn hand_written_command(store: &Store, id: &str) -> BenchResult<()> {
    loop {
        let (_, version) = fold_by_hand(store, id).await?;
        let event = deposit(0).to_event(id)?;
        match store.append_and_commit(ExpectedVersion::Exact(version), &[event]).await {
            Ok(_) => return Ok(()),
            Err(pupsource::Error::Concurrency { .. }) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}
