//! The reader of one projection: pages through the log once and feeds the partition workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::worker::{Delivery, Worker};
use super::{Metrics, RunMode, Settings};
use crate::error::{Error, Result};
use crate::event::Position;
use crate::partition::partition_of;
use crate::projection::{Lease, Partition, Projection};
use crate::store::Store;

/// The first wait after activity; doubled on every empty poll up to the poll interval.
const FIRST_IDLE_WAIT: Duration = Duration::from_millis(1);

/// Waits before retrying after the database became unreachable.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));

/// Runs the `owned` partitions of one projection (with the lease each runs under, if any):
/// their workers and one reader, until cancelled, caught up, or failed.
pub(crate) async fn run_partitions(
    store: Store,
    projection: Arc<dyn Projection>,
    settings: Settings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    owned: BTreeMap<u32, Option<Lease>>,
) -> Result<()> {
    let name = projection.name().to_owned();
    let count = settings.partitions.unwrap_or_else(|| projection.partitions());
    let state =
        retry_connection(&cancel, "load checkpoints", || store.load_checkpoints(&name, count))
            .await?;
    let Some(state) = state else { return Ok(()) };
    let Some(parked) =
        retry_connection(&cancel, "load parked events", || store.parked_streams(&name)).await?
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

    let mut workers = JoinSet::new();
    let mut senders: Vec<Option<mpsc::Sender<Delivery>>> = (0..count).map(|_| None).collect();
    for (index, lease) in owned {
        let Some(slot) = senders.get_mut(index as usize) else { continue };
        // Two pages in flight per partition at most: memory stays bounded however far behind.
        let (tx, rx) = mpsc::channel(2);
        *slot = Some(tx);
        let worker = Worker::new(
            store.clone(),
            Arc::clone(&projection),
            Partition { index, count },
            lease,
            Arc::clone(&state),
            parked.clone(),
            settings.clone(),
            Arc::clone(&metrics),
            cancel.clone(),
        );
        workers.spawn(worker.run(rx));
    }

    let checkpoints = state.current.checkpoints.clone();
    let reader =
        read_log(&store, &*projection, &settings, &metrics, &cancel, senders, &checkpoints);
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
    // Workers are done; the reader may still wait on a full channel of a dead worker.
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

/// Pages through the log and feeds the workers (one sender per partition, `None` for the
/// partitions this process does not run); returns when cancelled, or (until caught up) at the
/// head of the log. Dropping the senders tells the workers no more will come.
async fn read_log(
    store: &Store,
    projection: &dyn Projection,
    settings: &Settings,
    metrics: &Metrics,
    cancel: &CancellationToken,
    senders: Vec<Option<mpsc::Sender<Delivery>>>,
    checkpoints: &[Position],
) -> Result<()> {
    let scope = projection.scope();
    let count = u32::try_from(senders.len()).unwrap_or(u32::MAX);
    let running = senders.iter().flatten().count();
    // Pages of at least 1,000 events: one query feeds several batches of every partition.
    let page_size = settings.batch_size.saturating_mul(running).clamp(1_000, 10_000);
    let mut after = senders
        .iter()
        .zip(checkpoints)
        .filter(|(sender, _)| sender.is_some())
        .map(|(_, &checkpoint)| checkpoint)
        .min()
        .unwrap_or(Position::START);
    // Until caught up: every event committed before the run started must be handled.
    let head = match settings.mode {
        RunMode::UntilCaughtUp => store.head().await?,
        RunMode::Continuous => 0,
    };
    let mut wakeups = store.wakeups();
    let mut idle_wait = FIRST_IDLE_WAIT;
    let mut backoff = RECONNECT_BACKOFF.0;

    while !cancel.is_cancelled() {
        wakeups.borrow_and_update();
        metrics.log_reads.fetch_add(1, Ordering::Relaxed);
        let page = match store.read_all(after, page_size, &scope).await {
            Ok(page) => {
                backoff = RECONNECT_BACKOFF.0;
                page
            }
            Err(err @ Error::Connection(_)) => {
                tracing::warn!(target: "pupsource::runner", projection = projection.name(), error = %err, retry_in = ?backoff, "cannot read the log");
                if !sleep_or_cancel(cancel, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
                continue;
            }
            Err(err) => return Err(err),
        };

        let Some(last) = page.last().map(|e| e.position) else {
            if settings.mode == RunMode::UntilCaughtUp
                && !store.held_back(after, head, &scope).await?
            {
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
                    idle_wait = (idle_wait * 2).min(settings.poll_interval);
                }
            }
            continue;
        };
        idle_wait = FIRST_IDLE_WAIT;
        metrics.events_read.fetch_add(page.len() as u64, Ordering::Relaxed);
        let full_page = page.len() >= page_size;
        let mut per_partition: Vec<Vec<_>> = senders.iter().map(|_| Vec::new()).collect();
        for event in page {
            let index = partition_of(event.partition_hash, count) as usize;
            if senders[index].is_some() && event.position > checkpoints[index] {
                per_partition[index].push(event);
            }
        }
        after = last;
        for (sender, events) in senders.iter().zip(per_partition) {
            let Some(sender) = sender else { continue };
            if !send(cancel, sender, Delivery { events, through: after }).await {
                return Ok(());
            }
        }
        if settings.mode == RunMode::UntilCaughtUp
            && !full_page
            && !store.held_back(after, head, &scope).await?
        {
            break;
        }
    }
    Ok(())
}

/// Sends unless cancelled first or the worker is gone; returns whether it was sent.
async fn send(
    cancel: &CancellationToken,
    sender: &mpsc::Sender<Delivery>,
    message: Delivery,
) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        sent = sender.send(message) => sent.is_ok(),
    }
}

/// Sleeps `wait`; returns false if cancelled first.
pub(crate) async fn sleep_or_cancel(cancel: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Runs `op` until it succeeds, retrying connection errors with backoff; `None` if cancelled.
pub(crate) async fn retry_connection<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut op: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = RECONNECT_BACKOFF.0;
    loop {
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(err @ Error::Connection(_)) => {
                tracing::warn!(target: "pupsource::runner", error = %err, retry_in = ?backoff, "cannot {what}");
                if !sleep_or_cancel(cancel, backoff).await {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
            }
            Err(err) => return Err(err),
        }
    }
}
