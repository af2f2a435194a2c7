//! The results table and the BENCHMARKS.md document.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Sizes;

/// One workload's figures.
pub(crate) struct Row {
    pub(crate) backend: &'static str,
    pub(crate) workload: String,
    /// Unit of `lib` and `raw`, e.g. "events/s".
    pub(crate) unit: &'static str,
    pub(crate) lib: f64,
    pub(crate) raw: Option<f64>,
    /// Over several rounds: the median of the rounds' ratios and their (lowest, highest).
    /// `None`: one round, the ratio is `lib / raw`.
    pub(crate) ratio: Option<(f64, (f64, f64))>,
    pub(crate) lib_latency: Option<Latency>,
    pub(crate) raw_latency: Option<Latency>,
}

/// Median and 99th percentile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
}

impl Latency {
    pub(crate) fn of(samples: &mut [Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            // Nearest-rank percentile.
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Some(Latency { p50: at(0.50), p99: at(0.99) })
    }
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1_000.0)
}

fn latency(l: Option<Latency>) -> String {
    l.map_or_else(|| "—".to_owned(), |l| format!("{} / {}", millis(l.p50), millis(l.p99)))
}

fn figure(value: f64, unit: &str) -> String {
    if value >= 100.0 { format!("{:.0} {unit}", value) } else { format!("{value:.1} {unit}") }
}

pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| backend | workload | pupsource | baseline | ratio | p50 / p99 pupsource | p50 / p99 baseline |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let raw = row.raw.map_or_else(|| "—".to_owned(), |raw| figure(raw, row.unit));
        let ratio = match (row.ratio, row.raw) {
            (Some((median, (lo, hi))), _) => format!("{median:.2} ({lo:.2}–{hi:.2})"),
            (None, Some(raw)) if raw > 0.0 => format!("{:.2}", row.lib / raw),
            (None, _) => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.backend,
            row.workload,
            figure(row.lib, row.unit),
            raw,
            ratio,
            latency(row.lib_latency),
            latency(row.raw_latency),
        );
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .map_or_else(String::new, |kib| format!(", {:.0} GiB memory", kib as f64 / 1_048_576.0));
    format!("{cores} cores ({cpu}){memory}")
}

pub(crate) fn document(table: &str, command: &str, sizes: Sizes) -> String {
    format!(
        "# Benchmarks\n\n\
         This file is written by the benchmark binary (`pupsource-bench --write BENCHMARKS.md`); \
         do not edit it by hand.\n\n\
         ## Method\n\n\
         Each workload runs twice in one run, on the same server (PostgreSQL: two schemas; \
         SQLite: two files in WAL mode) with the tables of pupsource's own migrations: once \
         through pupsource's public API, once through a baseline written directly on sqlx that \
         does the minimum work for the same rows (one statement per append, a keyset-paged scan \
         in the same order for catch-up). Tables are emptied between workloads. The ratio is \
         pupsource / baseline (higher is better).\n\n\
         - appends: each writer appends to new streams (`NoStream`) for {append:.1} s per \
         round, pupsource and the baseline in turn ({rounds} rounds, each starting with the side \
         the previous one ended with); rates are medians of the rounds, the ratio is the median \
         of the rounds' ratios with their lowest and highest in brackets; latency is per \
         committed transaction, over every round;\n\
         - catch-up: {catch_up} preloaded events (about 200-byte JSON payloads over 10,000 \
         aggregates), a no-op typed projection; time until every partition's checkpoint is at \
         the head; the baseline reads only the payloads in pages of 1,000 and decodes them into \
         the same type. Each of {rounds} rounds runs the baseline, then pupsource with 1, 4 and \
         8 partitions, on the same warm tables; rates and ratios are medians of the rounds. A \
         reference row times the same scan reading every column of the events (what a handler \
         receives) into pupsource's own event type;\n\
         - catch-up with a SQL read model: {read_model} events, one upsert per event through \
         the batch transaction (baseline: the same upserts and a checkpoint write per page of \
         100); {rounds} rounds of pupsource and the baseline in turn, as for appends, each from \
         an empty read model and the start of the log; rate and ratio are medians of the rounds;\n\
         - idle latency: {latency} single-event appends 5 ms apart to a running, idle runner; \
         time from the append's commit to the handler's call;\n\
         - aggregates: loads per second of one aggregate of 10,001 events, folded whole and \
         from its snapshot, against reading the stream and folding it by hand; and commands \
         per second of 4 writers on aggregates of their own, through `execute` (snapshot every \
         100 versions) against the hand-written read–fold–append loop; {append:.1} s each;\n\
         - peak RSS: the peak resident set (`VmHWM`) of a process of its own that only runs \
         the 8-partition catch-up of the whole log (the benchmark started again with \
         `--runner-only URL`);\n\
         - MySQL / MariaDB: databases of their own on one server (`READ COMMITTED`, as \
         `MySqlStore::connect`); the append baseline takes its positions as pupsource does, \
         from the counter row under its lock until commit (`BEGIN`, the head row, the counter's \
         `UPDATE`, one multi-row `INSERT`, `COMMIT`). Each append workload has a second row \
         against a baseline on the same tables but with `AUTO_INCREMENT` positions and no \
         counter row: what gap-free order costs. The catch-up rows name their event count \
         (`--mysql-catch-up-events`).\n\n\
         ## Machine\n\n{machine}\n\n\
         ## Command\n\n```text\n{command}\n```\n\n\
         ## Results\n\n{table}\n\n{breakdown}\n",
        append = sizes.append_time.as_secs_f64(),
        rounds = sizes.rounds,
        catch_up = sizes.catch_up_events,
        read_model = sizes.read_model_events,
        latency = sizes.latency_appends,
        machine = machine(),
        table = table.trim_end(),
        breakdown = APPEND_BREAKDOWN.trim_end(),
    )
}

/// The hand-written breakdown of a PostgreSQL append's time (its commands are in it), copied
/// into every written document.
const APPEND_BREAKDOWN: &str = include_str!("../append-breakdown.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&mut samples).expect("samples");
        assert_eq!((l.p50, l.p99), (Duration::from_millis(50), Duration::from_millis(99)));
        assert!(Latency::of(&mut []).is_none());
    }
}
