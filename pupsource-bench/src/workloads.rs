//! The workloads, each measured through pupsource and through the baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pupsource::runner::Runner;
use pupsource::{Context, DomainEvent, Envelope, ExpectedVersion, Handle, HandlerResult, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::report::{Latency, Row};
use crate::{BenchResult, Side, Sizes, baseline};

/// Aggregates the catch-up log is spread over.
pub(crate) const AGGREGATES: u64 = 10_000;

/// The benchmark's event: about 200 bytes of JSON.
#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Bench", aggregate = "Account")]
pub(crate) struct Deposited {
    pub(crate) account: i64,
    pub(crate) amount: i64,
    pub(crate) memo: String,
}

pub(crate) fn deposit(i: u64) -> Deposited {
    Deposited { account: (i % AGGREGATES) as i64, amount: (i % 1000) as i64, memo: "m".repeat(140) }
}

/// Does nothing with its (decoded) events.
#[pupsource::projection(events(Deposited))]
#[derive(Default)]
struct NoOp;

impl Handle<Deposited> for NoOp {
    async fn handle(&self, event: Envelope<Deposited>, _: &mut Context<'_>) -> HandlerResult {
        std::hint::black_box(event);
        Ok(())
    }
}

/// One upsert per event, in the batch transaction.
#[pupsource::projection(events(Deposited))]
#[derive(Default)]
struct Balances;

impl Handle<Deposited> for Balances {
    async fn handle(&self, event: Envelope<Deposited>, cx: &mut Context<'_>) -> HandlerResult {
        let sql = "INSERT INTO bench_balances (account, total) VALUES ($1, $2) \
                   ON CONFLICT (account) DO UPDATE SET total = bench_balances.total + excluded.total";
        let sql = if cx.mysql().is_some() { crate::mysql::UPSERT } else { sql };
        pupsource::with_transaction!(cx.transaction(), |tx| {
            sqlx::query(sql)
                .bind(event.account)
                .bind(event.amount)
                .execute(tx)
                .await
                .map(|d| d.rows_affected())
        })?;
        Ok(())
    }
}

/// Reports when each event reaches its handler.
struct Arrivals(mpsc::UnboundedSender<(uuid::Uuid, Instant)>);

impl pupsource::Projection for Arrivals {
    fn name(&self) -> &str {
        "bench_latency"
    }

    fn handle<'a>(
        &'a self,
        event: &'a pupsource::LogEvent,
        _: &'a mut Context<'_>,
    ) -> pupsource::projection::HandleFuture<'a> {
        let _ = self.0.send((event.event_id, Instant::now()));
        Box::pin(async { Ok(()) })
    }
}

pub(crate) async fn all(
    side: &Side,
    sizes: Sizes,
    only: &[String],
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    // MySQL: three-way rounds, with a second baseline (see `mysql.rs`).
    let mysql_appends = wanted("append") && matches!(side, Side::MySql(_));
    if mysql_appends {
        crate::mysql::appends(side, sizes, rows).await?;
    }
    if wanted("append") && !mysql_appends {
        for writers in [1, 4, 16] {
            rows.push(appends(side, writers, 1, sizes.append_time, sizes.rounds).await?);
        }
        for writers in [1, 4] {
            rows.push(appends(side, writers, 100, sizes.append_time, sizes.rounds).await?);
        }
    }
    if wanted("latency") {
        rows.push(idle_latency(side, sizes.latency_appends).await?);
    }
    if wanted("read-model") {
        rows.push(read_model(side, sizes).await?);
    }
    if wanted("catch-up") {
        rows.extend(catch_up(side, sizes).await?);
    }
    if wanted("aggregate") {
        rows.extend(crate::aggregates::all(side, sizes).await?);
    }
    Ok(())
}

/// `writers` tasks append `per_append` events per transaction to new streams until `time`
/// has passed, `rounds` times through pupsource and as often through the baseline, in turn
/// (each round starts with the side the previous one ended with). Rates and ratio are medians
/// of the rounds; latencies are over every round.
async fn appends(
    side: &Side,
    writers: usize,
    per_append: usize,
    time: Duration,
    rounds: u32,
) -> BenchResult<Row> {
    baseline::truncate(side).await?;
    let mut rounds_run = Rounds::default();
    let (mut lib_latencies, mut raw_latencies) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut rates = [0.0; 2];
        for lib in Rounds::order(round) {
            let (rate, mut latencies) =
                append_round(side, writers, per_append, time, lib, round).await?;
            rates[usize::from(!lib)] = rate;
            if lib {
                lib_latencies.append(&mut latencies)
            } else {
                raw_latencies.append(&mut latencies)
            }
        }
        rounds_run.record(rates);
    }
    let workload = if per_append == 1 {
        format!("append, 1 event/tx, {writers} writer{}", if writers == 1 { "" } else { "s" })
    } else {
        format!(
            "append, {per_append} events/tx, {writers} writer{}",
            if writers == 1 { "" } else { "s" }
        )
    };
    let latencies = (Latency::of(&mut lib_latencies), Latency::of(&mut raw_latencies));
    Ok(rounds_run.row(side, workload, latencies))
}

/// The rates of pupsource and of the baseline in rounds run in turn, each round starting
/// with the side the previous one ended with.
#[derive(Default)]
struct Rounds {
    lib: Vec<f64>,
    raw: Vec<f64>,
    ratios: Vec<f64>,
}

impl Rounds {
    /// The sides of round `round` in the order they run: `true` for pupsource.
    fn order(round: u32) -> [bool; 2] {
        if round.is_multiple_of(2) { [true, false] } else { [false, true] }
    }

    /// Records a round's rates: pupsource's, then the baseline's.
    fn record(&mut self, [lib, raw]: [f64; 2]) {
        self.lib.push(lib);
        self.raw.push(raw);
        self.ratios.push(lib / raw.max(f64::MIN_POSITIVE));
    }

    /// The row of `workload` in events per second: the medians of the rounds' rates, and of
    /// their ratios with the spread when there were several rounds.
    fn row(
        mut self,
        side: &Side,
        workload: String,
        (lib_latency, raw_latency): (Option<Latency>, Option<Latency>),
    ) -> Row {
        let spread = spread(&self.ratios);
        let several = self.ratios.len() > 1;
        Row {
            backend: side.name(),
            workload,
            unit: "events/s",
            lib: median(&mut self.lib),
            raw: Some(median(&mut self.raw)),
            ratio: Some((median(&mut self.ratios), spread)).filter(|_| several),
            lib_latency,
            raw_latency,
        }
    }
}

/// One side's round of [`appends`]: events per second and the latency of each append.
async fn append_round(
    side: &Side,
    writers: usize,
    per_append: usize,
    time: Duration,
    lib: bool,
    round: u32,
) -> BenchResult<(f64, Vec<Duration>)> {
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = side.store();
        let side = side.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                // Streams are new in every round, on both sides.
                let stream = format!("r{round}-w{w}-{i}");
                let at = Instant::now();
                if lib {
                    let events = (0..per_append as u64)
                        .map(|k| deposit(i + k).to_event(&stream))
                        .collect::<Result<Vec<_>, _>>()?;
                    store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
                } else {
                    let payloads: Vec<String> = (0..per_append as u64)
                        .map(|k| serde_json::to_string(&deposit(i + k)))
                        .collect::<Result<_, _>>()?;
                    baseline::append(&side, &stream, &payloads).await?;
                }
                latencies.push(at.elapsed());
                i += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    writers_rate(tasks, per_append, started).await
}

/// The writers' tasks of one append round, joined: events per second since `started`, and
/// every append's latency.
pub(crate) async fn writers_rate(
    tasks: Vec<tokio::task::JoinHandle<BenchResult<Vec<Duration>>>>,
    per_append: usize,
    started: Instant,
) -> BenchResult<(f64, Vec<Duration>)> {
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let events = (latencies.len() * per_append) as f64;
    Ok((events / started.elapsed().as_secs_f64(), latencies))
}

/// `runner` with `--batch-size`, if given.
fn with_batch_size(runner: Runner, batch_size: Option<usize>) -> Runner {
    match batch_size {
        Some(batch_size) => runner.batch_size(batch_size),
        None => runner,
    }
}

/// The lowest and the highest of `values`.
pub(crate) fn spread(values: &[f64]) -> (f64, f64) {
    values.iter().copied().fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Catch-up of a preloaded log with a no-op typed projection (1, 4, 8 partitions) against a
/// keyset scan decoding the same payloads, in rounds (the scan, then each partition count);
/// a reference scan of every event column; and the peak RSS during the 8-partition runs.
async fn catch_up(side: &Side, sizes: Sizes) -> BenchResult<Vec<Row>> {
    const PARTITIONS: [u32; 3] = [1, 4, 8];
    let events = sizes.catch_up_events;
    baseline::truncate(side).await?;
    baseline::preload(side, events, Deposited::NAME).await?;
    let rate = |started: Instant| events as f64 / started.elapsed().as_secs_f64();
    let (mut raw_rates, mut full_rates) = (Vec::new(), Vec::new());
    let mut lib_rates = vec![Vec::new(); PARTITIONS.len()];
    let mut ratios = vec![Vec::new(); PARTITIONS.len()];
    for _ in 0..sizes.rounds {
        let started = Instant::now();
        check_scan(baseline::scan(side, 1_000).await?, events)?;
        let raw = rate(started);
        raw_rates.push(raw);
        let started = Instant::now();
        check_scan(full_scan(side).await?, events)?;
        full_rates.push(rate(started));
        for (i, partitions) in PARTITIONS.into_iter().enumerate() {
            let lib = catch_up_round(side, sizes, partitions).await?;
            lib_rates[i].push(lib);
            ratios[i].push(lib / raw);
        }
    }
    let raw = median(&mut raw_rates);
    let row = |workload: String, lib: f64, ratio| Row {
        backend: side.name(),
        workload,
        unit: "events/s",
        lib,
        raw: Some(raw),
        ratio,
        lib_latency: None,
        raw_latency: None,
    };
    let mut rows = vec![row(
        format!("reference: the baseline's scan reading every event column ({events} events)"),
        median(&mut full_rates),
        None,
    )];
    for (i, partitions) in PARTITIONS.into_iter().enumerate() {
        let workload = format!(
            "catch-up {events} events, no-op typed projection, {partitions} partition{}",
            if partitions == 1 { "" } else { "s" }
        );
        let spread = spread(&ratios[i]);
        rows.push(row(workload, median(&mut lib_rates[i]), Some((median(&mut ratios[i]), spread))));
    }
    let peak = peak_rss_of_runner_only(side).await?;
    rows.push(Row {
        backend: side.name(),
        workload: "peak RSS of a process running only the 8-partition catch-up".to_owned(),
        unit: "MiB",
        lib: peak as f64 / 1_048_576.0,
        raw: None,
        ratio: None,
        lib_latency: None,
        raw_latency: None,
    });
    Ok(rows)
}

fn check_scan(decoded: u64, events: u64) -> BenchResult<()> {
    match decoded == events {
        true => Ok(()),
        false => Err(format!("a baseline scan decoded {decoded} of {events} events").into()),
    }
}

/// The reference scan: pages of 1,000 events with every column, as pupsource's event type.
async fn full_scan(side: &Side) -> BenchResult<u64> {
    let (store, scope) = (side.store(), pupsource::Scope::all());
    let (mut after, mut decoded) = (pupsource::Position::START, 0u64);
    loop {
        let page = store.read_all(after, 1_000, &scope).await?;
        let Some(last) = page.last() else { return Ok(decoded) };
        after = last.position;
        for event in &page {
            std::hint::black_box(Deposited::decode(event)?);
        }
        decoded += page.len() as u64;
    }
}

/// One catch-up from the start with `partitions` partitions: events per second.
async fn catch_up_round(side: &Side, sizes: Sizes, partitions: u32) -> BenchResult<f64> {
    let events = sizes.catch_up_events;
    let runner =
        with_batch_size(Runner::new(side.store()).projection(Arc::new(NoOp)), sizes.batch_size)
            .partitions(partitions)
            .until_caught_up();
    runner.rebuild("no_op").await?;
    let started = Instant::now();
    runner.run_until(std::future::pending()).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let handled = runner.metrics().events_handled();
    if handled != events {
        return Err(format!("the no-op projection handled {handled} of {events} events").into());
    }
    Ok(events as f64 / elapsed)
}

/// The peak resident set of this benchmark run as a process of its own that only catches
/// up with 8 partitions (`--runner-only`), on the log as it stands.
async fn peak_rss_of_runner_only(side: &Side) -> BenchResult<u64> {
    let exe = std::env::current_exe()?;
    let url = side.url().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe).args(["--runner-only", &url]).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let peak = stdout.lines().find_map(|l| l.strip_prefix("peak_rss_bytes ")?.parse().ok());
    match (output.status.success(), peak) {
        (true, Some(peak)) => Ok(peak),
        _ => Err(format!(
            "the runner-only process failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into()),
    }
}

/// `--runner-only`: resets the no-op projection of the store at `url`, catches it up with 8
/// partitions, and returns this process's peak resident set (`VmHWM`).
pub(crate) async fn runner_only(url: &str) -> BenchResult<u64> {
    let runner = Runner::new(Store::connect(url).await?)
        .projection(Arc::new(NoOp))
        .partitions(8)
        .until_caught_up();
    runner.rebuild("no_op").await?;
    runner.run_until(std::future::pending()).await?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse().ok())
        .ok_or("no VmHWM in /proc/self/status")?;
    Ok(kib * 1024)
}

/// Catch-up with one upsert per event through the batch transaction, `rounds` times through
/// pupsource and as often through the baseline, in turn (each round starts with the side the
/// previous one ended with), each run from an empty read model and the start of the log.
/// Rates and ratio are medians of the rounds.
async fn read_model(side: &Side, sizes: Sizes) -> BenchResult<Row> {
    let events = sizes.read_model_events;
    baseline::truncate(side).await?;
    baseline::preload(side, events, Deposited::NAME).await?;
    let mut rounds = Rounds::default();
    for round in 0..sizes.rounds {
        let mut rates = [0.0; 2];
        for lib in Rounds::order(round) {
            baseline::clear_read_model(side).await?;
            let handled = if lib {
                let runner = Runner::new(side.store()).projection(Arc::new(Balances));
                let runner = with_batch_size(runner, sizes.batch_size).until_caught_up();
                runner.rebuild("balances").await?;
                let started = Instant::now();
                runner.run_until(std::future::pending()).await?;
                rates[0] = events as f64 / started.elapsed().as_secs_f64();
                runner.metrics().events_handled()
            } else {
                let started = Instant::now();
                let handled = baseline::read_model(side).await?;
                rates[1] = handled as f64 / started.elapsed().as_secs_f64();
                handled
            };
            if handled != events {
                return Err(format!("a read-model run handled {handled} of {events} events").into());
            }
        }
        rounds.record(rates);
    }
    let workload =
        format!("catch-up {events} events, SQL read model (upsert per event), 1 partition");
    Ok(rounds.row(side, workload, (None, None)))
}

/// Appends spaced 5 ms apart to an idle, running runner: commit → handler latency.
async fn idle_latency(side: &Side, appends: u32) -> BenchResult<Row> {
    baseline::truncate(side).await?;
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let runner = Runner::new(side.store()).projection(Arc::new(Arrivals(tx)));
    let stop = Arc::new(tokio::sync::Notify::new());
    let task = {
        let (runner, stop) = (runner.clone(), Arc::clone(&stop));
        tokio::spawn(async move { runner.run_until(async move { stop.notified().await }).await })
    };
    let store: Store = side.store();
    let mut latencies = Vec::with_capacity(appends as usize);
    for i in 0..u64::from(appends) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let event = deposit(i).to_event(format!("latency-{i}"))?;
        let id = event.event_id;
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
        let committed = Instant::now();
        loop {
            let (arrived_id, at) = arrivals.recv().await.ok_or("the runner stopped")?;
            if arrived_id == id {
                latencies.push(at.saturating_duration_since(committed));
                break;
            }
        }
    }
    stop.notify_one();
    task.await??;
    Ok(Row {
        backend: side.name(),
        workload: format!("idle runner, append → handler, {appends} appends 5 ms apart"),
        unit: "appends",
        lib: f64::from(appends),
        raw: None,
        ratio: None,
        lib_latency: Latency::of(&mut latencies),
        raw_latency: None,
    })
}
