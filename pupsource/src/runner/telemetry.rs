//! What the runner reports through the [`metrics`] facade.
//!
//! pupsource installs no recorder: an application that installs one (the `main!()` CLI does
//! with `--metrics-addr`, feature `prometheus`) gets these, labelled with `projection`, and
//! per partition also `partition` (its index) and `partitions` (the count of its layout):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `pupsource_events_handled_total` | counter | partition | events handled, counted when their transaction commits |
//! | `pupsource_batches_total` | counter | partition | batch transactions committed |
//! | `pupsource_batch_duration_seconds` | histogram | partition | from a batch transaction's start to its commit |
//! | `pupsource_handler_failures_total` | counter | partition | handler errors and panics (each attempt) |
//! | `pupsource_handler_retries_total` | counter | partition | retries after a failure, after their backoff |
//! | `pupsource_parked_events_total` | counter | partition | events parked by this process |
//! | `pupsource_reader_pages_total` | counter | projection | pages read from the log |
//! | `pupsource_reader_bytes_total` | counter | projection | bytes of the events in those pages |
//! | `pupsource_lease_claims_total` | counter | partition | partitions claimed by this process |
//! | `pupsource_lease_losses_total` | counter | partition | leases taken over by another worker |
//! | `pupsource_lease_releases_total` | counter | projection | surplus partitions given back |
//! | `pupsource_lag_events` | gauge | partition | events in scope after the checkpoint |
//! | `pupsource_lag_seconds` | gauge | partition | age of the oldest of those (0 when none) |
//! | `pupsource_parked_events` | gauge | projection | events parked now |
//! | `pupsource_fence_age_seconds` | gauge | none | PostgreSQL: age of the oldest transaction in flight, which readers wait for (0 when none) |
//!
//! The lag gauges come from the status query, run every [`Runner::lag_metrics`] interval
//! (off unless set: it counts the events behind each checkpoint).
//!
//! [`Runner::lag_metrics`]: super::Runner::lag_metrics

use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, gauge, histogram};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::status::Status;
use crate::partition::Partition;

/// The counters of one partition's worker, registered once.
pub(crate) struct PartitionMetrics {
    events: Counter,
    batches: Counter,
    batch_seconds: Histogram,
    failures: Counter,
    retries: Counter,
    parked: Counter,
}

fn labels(projection: &str, partition: Partition) -> [(&'static str, String); 3] {
    [
        ("projection", projection.to_owned()),
        ("partition", partition.index.to_string()),
        ("partitions", partition.count.to_string()),
    ]
}

impl PartitionMetrics {
    pub(crate) fn new(projection: &str, partition: Partition) -> Self {
        let labels = labels(projection, partition);
        PartitionMetrics {
            events: counter!("pupsource_events_handled_total", &labels),
            batches: counter!("pupsource_batches_total", &labels),
            batch_seconds: histogram!("pupsource_batch_duration_seconds", &labels),
            failures: counter!("pupsource_handler_failures_total", &labels),
            retries: counter!("pupsource_handler_retries_total", &labels),
            parked: counter!("pupsource_parked_events_total", &labels),
        }
    }

    /// A batch transaction that started at `opened` committed `handled` and `parked` events.
    pub(crate) fn committed(&self, opened: Instant, handled: u64, parked: u64) {
        self.batches.increment(1);
        self.events.increment(handled);
        self.parked.increment(parked);
        self.batch_seconds.record(opened.elapsed());
    }

    pub(crate) fn failed(&self) {
        self.failures.increment(1);
    }

    pub(crate) fn retrying(&self) {
        self.retries.increment(1);
    }
}

/// The counters of one projection's reader.
pub(crate) struct ReaderMetrics {
    pages: Counter,
    bytes: Counter,
}

impl ReaderMetrics {
    pub(crate) fn new(projection: &str) -> Self {
        let labels = [("projection", projection.to_owned())];
        ReaderMetrics {
            pages: counter!("pupsource_reader_pages_total", &labels),
            bytes: counter!("pupsource_reader_bytes_total", &labels),
        }
    }

    pub(crate) fn page(&self, bytes: usize) {
        self.pages.increment(1);
        self.bytes.increment(u64::try_from(bytes).unwrap_or(u64::MAX));
    }
}

/// A partition of `projection` claimed by this process.
pub(crate) fn lease_claimed(projection: &str, partition: Partition) {
    counter!("pupsource_lease_claims_total", &labels(projection, partition)).increment(1);
}

/// A partition of `projection` taken over by another worker.
pub(crate) fn lease_lost(projection: &str, partition: Partition) {
    counter!("pupsource_lease_losses_total", &labels(projection, partition)).increment(1);
}

/// `released` surplus partitions of `projection` given back.
pub(crate) fn leases_released(projection: &str, released: usize) {
    let released = u64::try_from(released).unwrap_or(u64::MAX);
    counter!("pupsource_lease_releases_total", "projection" => projection.to_owned())
        .increment(released);
}

/// Sets the lag, parked and fence gauges from `status`.
pub(crate) fn report(status: &Status) {
    let now = OffsetDateTime::now_utc();
    for projection in &status.projections {
        for partition in &projection.partitions {
            let labels = labels(&projection.name, partition.partition);
            gauge!("pupsource_lag_events", &labels).set(partition.lag as f64);
            let age = partition.oldest_unhandled.map_or(0.0, |at| (now - at).as_seconds_f64());
            gauge!("pupsource_lag_seconds", &labels).set(age.max(0.0));
        }
        gauge!("pupsource_parked_events", "projection" => projection.name.clone())
            .set(projection.parked as f64);
    }
    let fence_age = status.fence.as_ref().and_then(|fence| fence.age).unwrap_or_default();
    gauge!("pupsource_fence_age_seconds").set(fence_age.as_secs_f64());
}

/// Reports the status every `every` until cancelled; a failed status query is logged and
/// tried again at the next tick.
pub(crate) async fn sample<F, Fut>(every: Duration, cancel: CancellationToken, status: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = crate::Result<Status>>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match status().await {
            Ok(status) => report(&status),
            Err(err) => {
                tracing::warn!(target: "pupsource::runner", error = %err, "could not read the status for the lag metrics");
            }
        }
    }
}
