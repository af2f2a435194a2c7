//! The reader of one projection: pages through the log once and feeds the partition workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::feed::{Feed, SlotLimits};
use super::telemetry::ReaderMetrics;
use super::worker::Worker;
use super::{ProjectionRun, RunMode};
use crate::backoff::retry_transient;
use crate::error::{Error, Result};
use crate::event::Position;
use crate::partition::Partition;
use crate::projection::Lease;

/// The first wait after activity; doubled on every empty poll up to the poll interval.
const FIRST_IDLE_WAIT: Duration = Duration::from_millis(1);

/// Runs the `owned` partitions of one projection (with the lease each runs under): their
/// workers and one reader, until cancelled, caught up, or failed.
pub(crate) async fn run_partitions(
    run: Arc<ProjectionRun>,
    cancel: CancellationToken,
    owned: BTreeMap<u32, Lease>,
) -> Result<()> {
    let (name, count) = (&run.name, run.partition_count);
    let Some(state) =
        retry_transient(&cancel, "load checkpoints", || run.store.load_checkpoints(name, count))
            .await?
    else {
        return Ok(());
    };
    let Some(parked) =
        retry_transient(&cancel, "load parked events", || run.store.parked_streams(name)).await?
    else {
        return Ok(());
    };
    let state = Arc::new(state);
    tracing::info!(
        target: "pupsource::runner",
        projection = %name,
        partitions = ?owned.keys().collect::<Vec<_>>(),
        of = count,
        old_layouts = state.old.len(),
        "partitions starting"
    );

    let checkpoints: BTreeMap<u32, Position> = owned
        .keys()
        .filter_map(|&index| Some((index, *state.current.checkpoints.get(index as usize)?)))
        .collect();
    let start = checkpoints.values().copied().min().unwrap_or(Position::START);
    let feed = Arc::new(Feed::new(count, &checkpoints, start, run.slot_limits(checkpoints.len())));
    let mut workers = JoinSet::new();
    for (index, lease) in owned {
        if !checkpoints.contains_key(&index) {
            continue;
        }
        let worker = Worker::new(
            Arc::clone(&run),
            Arc::clone(&feed),
            Partition { index, count },
            lease,
            Arc::clone(&state),
            parked.clone(),
            cancel.clone(),
        );
        workers.spawn(worker.run());
    }

    let reader = read_log(&run, &feed, &cancel, start);
    let mut reader = std::pin::pin!(reader);
    let mut reader_done = false;
    let mut first_error = None;
    loop {
        tokio::select! {
            result = &mut reader, if !reader_done => {
                reader_done = true;
                if let Err(err) = result {
                    first_error.get_or_insert(err);
                    cancel.cancel();
                }
            }
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(err))) => {
                    first_error.get_or_insert(err);
                    cancel.cancel();
                }
                Some(Err(panic)) => {
                    first_error.get_or_insert(Error::Panicked { projection: name.clone(), message: panic.to_string() });
                    cancel.cancel();
                }
            }
        }
    }
    // Workers are done; the reader may still wait for room in a slot.
    if !reader_done {
        cancel.cancel();
        if let Err(err) = reader.await {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => {
            tracing::debug!(target: "pupsource::runner", projection = %name, "partitions stopped");
            Ok(())
        }
    }
}

/// Pages through the log from `start` and offers each page to the feed; returns when
/// cancelled, or (until caught up) at the head of the log. Either way the feed is finished.
async fn read_log(
    run: &ProjectionRun,
    feed: &Feed,
    cancel: &CancellationToken,
    start: Position,
) -> Result<()> {
    let result = follow_log(run, feed, cancel, start).await;
    feed.finish();
    result
}

async fn follow_log(
    run: &ProjectionRun,
    feed: &Feed,
    cancel: &CancellationToken,
    start: Position,
) -> Result<()> {
    let (store, scope) = (&run.store, &run.scope);
    let until_caught_up = run.settings.mode == RunMode::UntilCaughtUp;
    // Until caught up: every event committed before the run started must be handled.
    let head = match until_caught_up {
        true => match retry_transient(cancel, "read the head of the log", || store.head()).await? {
            Some(head) => head,
            None => return Ok(()),
        },
        false => 0,
    };
    let caught_up = |after: Position| async move {
        retry_transient(cancel, "look for transactions in flight", || {
            store.held_back(after, head, scope)
        })
        .await
        .map(|held| held.is_none_or(|held| !held))
    };
    let mut after = start;
    let mut wakeups = store.wakeups();
    let mut idle_wait = FIRST_IDLE_WAIT;
    let telemetry = ReaderMetrics::new(&run.name);
    while !cancel.is_cancelled() {
        wakeups.borrow_and_update();
        run.metrics.log_reads.fetch_add(1, Ordering::Relaxed);
        let Some(page) = retry_transient(cancel, "read the log", || {
            store.read_page(after, run.page_events, run.page_bytes, scope)
        })
        .await?
        else {
            break;
        };
        telemetry.page(page.bytes);
        let Some(last) = page.events.last().map(|(e, _)| e.position) else {
            if feed.caught_up() {
                run.progress.caught_up(after);
            }
            if until_caught_up && caught_up(after).await? {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = wakeups.changed() => {
                    if changed.is_err() {
                        // The store is gone; keep polling.
                        tokio::time::sleep(idle_wait).await;
                    }
                    idle_wait = FIRST_IDLE_WAIT;
                }
                () = tokio::time::sleep(idle_wait) => {
                    idle_wait = (idle_wait * 2).min(run.settings.poll_interval);
                }
            }
            continue;
        };
        idle_wait = FIRST_IDLE_WAIT;
        run.metrics.events_read.fetch_add(page.events.len() as u64, Ordering::Relaxed);
        let full = page.full;
        if !feed.offer(page.events, last, full, cancel).await {
            break;
        }
        after = last;
        if until_caught_up && !full && caught_up(after).await? {
            break;
        }
    }
    Ok(())
}

impl ProjectionRun {
    /// How much each of `running` partitions may have queued: a page's events (at least two
    /// batches), and its share of the bytes a projection may hold in flight.
    fn slot_limits(&self, running: usize) -> SlotLimits {
        let running = running.max(1);
        SlotLimits {
            events: self.page_events.max(2 * self.settings.batch_size),
            bytes: (super::IN_FLIGHT_BYTES / running).max(super::PAGE_BYTES / 4),
        }
    }
}
