//! The reader of one projection: pages through the log once and feeds the partition workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
use crate::store::backend::{LogRows, Page};

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
    let mut page_size = PageSize::default();
    let (mut query, pages) = (None, store.pages_per_query());
    let mut wakeups = store.wakeups();
    let mut idle_wait = FIRST_IDLE_WAIT;
    let telemetry = ReaderMetrics::new(&run.name);
    while !cancel.is_cancelled() {
        wakeups.borrow_and_update();
        let Some(page) = run.next_page(&mut page_size, &mut query, pages, cancel, after).await?
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
        let mut offer = std::pin::pin!(feed.offer(page.events, last, full, cancel));
        let placed = match query.as_ref().map(|open| open.opened + OpenQuery::HOLD) {
            None => offer.await,
            Some(deadline) => tokio::select! {
                biased;
                placed = offer.as_mut() => placed,
                () = tokio::time::sleep_until(deadline.into()) => {
                    // The workers are behind: no statement stays open while they catch up.
                    query = None;
                    offer.await
                }
            },
        };
        if !placed {
            break;
        }
        after = last;
        if until_caught_up && !full && caught_up(after).await? {
            break;
        }
    }
    Ok(())
}

/// What event size a reader of the log (the projection's reader, or a worker that reads
/// alone) assumes when it asks for a page: the size of the largest event of its last page.
///
/// A page asks for no more rows than its byte budget fits at that size. The page stops at its
/// budget whatever it asked for, but what the database reads ahead of the page (SQLite's
/// connection thread: up to a page's worth of rows) is in memory until the query is dropped:
/// so what is read past the budget stays about as large as the budget itself, whatever the
/// payloads. Each reader keeps its own, so that one reading small events does not make
/// another ask for a full page of large ones.
#[derive(Debug)]
pub(crate) struct PageSize {
    /// Never 0: an empty page teaches nothing.
    largest_event: usize,
}

impl PageSize {
    /// What a reader assumes until it has seen a page: pages start small and grow to the page
    /// limit as the sizes become known.
    const FIRST_GUESS: usize = 64 << 10;

    /// The rows to ask for in a page of at most `events` events and `bytes` bytes.
    fn rows(&self, events: usize, bytes: usize) -> usize {
        events.min(bytes / self.largest_event).max(1)
    }

    /// Learns the sizes of a page read.
    fn saw(&mut self, page: &Page) {
        if page.largest > 0 {
            self.largest_event = page.largest;
        }
    }
}

impl Default for PageSize {
    fn default() -> Self {
        PageSize { largest_event: Self::FIRST_GUESS }
    }
}

/// The reader's query on the log, kept open from page to page: one statement, planned once,
/// serves several pages, and the database sends the next rows while the reader hands out the
/// last ones. A page still waiting for room once its query has been open for
/// [`OpenQuery::HOLD`] closes it, so that no statement stays open long while the workers catch
/// up.
struct OpenQuery<'a> {
    rows: LogRows<'a>,
    /// The rows it may still return.
    left: usize,
    opened: Instant,
}

impl OpenQuery<'_> {
    /// How long a query may have been open before a page waiting for room closes it.
    const HOLD: Duration = Duration::from_secs(1);

    /// The fewest rows a page must ask for for its query to serve several pages, and the
    /// most rows such a query asks for. A query closed early (the connection reads what the
    /// server already sends to its end, in vain) then costs at most 10,000 small events, or
    /// one page of large ones (a page of fewer than 50 rows holds events of 80 KiB or more).
    const MIN_ROWS: usize = 50;
    /// See [`OpenQuery::MIN_ROWS`].
    const MAX_ROWS: usize = 10_000;

    /// How many rows a query opened for pages of `rows` rows asks for, when one query may
    /// serve `pages` pages.
    fn limit(rows: usize, pages: usize) -> usize {
        match rows >= Self::MIN_ROWS {
            true => rows.saturating_mul(pages).min(Self::MAX_ROWS).max(rows),
            false => rows,
        }
    }
}

impl ProjectionRun {
    /// Reads the page of the log after `after` in the projection's scope, as many rows as
    /// `size` fits in the page's byte budget, retrying transient failures; `None` if cancelled
    /// meanwhile.
    pub(crate) async fn read_page(
        &self,
        size: &mut PageSize,
        cancel: &CancellationToken,
        after: Position,
    ) -> Result<Option<Page>> {
        self.next_page(size, &mut None, 1, cancel, after).await
    }

    /// Like [`ProjectionRun::read_page`], from the open `query` if there is one, else from a
    /// new query for up to `pages` pages. The query is left in `query` for the next page if
    /// it may return more rows; a failure closes it.
    async fn next_page<'a>(
        &'a self,
        size: &mut PageSize,
        query: &mut Option<OpenQuery<'a>>,
        pages: usize,
        cancel: &CancellationToken,
        after: Position,
    ) -> Result<Option<Page>> {
        let rows = size.rows(self.page_events, self.page_bytes);
        let read = retry_transient(cancel, "read the log", || {
            let open = query.take();
            async move {
                let mut open = match open {
                    Some(open) => open,
                    None => {
                        self.metrics.log_reads.fetch_add(1, Ordering::Relaxed);
                        let left = OpenQuery::limit(rows, pages);
                        let log = self.store.read_log(after, left, &self.scope)?;
                        OpenQuery { rows: log, left, opened: Instant::now() }
                    }
                };
                let page = Page::take(&mut open.rows, rows.min(open.left), self.page_bytes).await?;
                open.left -= page.events.len();
                // A page that is not full ended its query.
                let open = (page.full && open.left > 0).then_some(open);
                Ok((page, open))
            }
        })
        .await?;
        let Some((page, open)) = read else {
            return Ok(None);
        };
        *query = open;
        size.saw(&page);
        Ok(Some(page))
    }

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

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::store::backend::Backend as _;
    use crate::{Event, EventStore, ExpectedVersion, Scope, SqliteStore, StreamId};

    /// A query serves up to `pages` pages of at least 50 rows, and no more than 10,000 rows
    /// unless one page holds more.
    #[test]
    fn a_query_asks_for_several_pages_of_small_events_only() {
        let limits: Vec<usize> =
            [(64, 10), (1_000, 10), (5_000, 10), (20_000, 10), (49, 10), (1_000, 1)]
                .into_iter()
                .map(|(rows, pages)| OpenQuery::limit(rows, pages))
                .collect();
        assert_eq!(limits, [640, 10_000, 10_000, 20_000, 49, 1_000]);
    }

    /// A page asks for no more rows than its byte budget fits at the size of the reader's last
    /// page's largest event: few rows after large events, the page's event limit again once
    /// the events are small.
    #[tokio::test]
    async fn a_page_asks_for_the_rows_its_byte_budget_fits() {
        let store = SqliteStore::connect("sqlite::memory:").await.expect("open");
        EventStore::migrate(&store).await.expect("migrate");
        let (big, small) = (StreamId::new("T", "Blob", "big"), StreamId::new("T", "Blob", "small"));
        let blob = serde_json::json!({ "blob": "x".repeat(100_000) });
        let bigs: Vec<Event> = (0..6).map(|_| Event::new(&big, "Big", blob.clone())).collect();
        let smalls: Vec<Event> =
            (0..100).map(|i| Event::new(&small, "Small", serde_json::json!({ "i": i }))).collect();
        for events in [bigs, smalls] {
            EventStore::append_and_commit(&store, ExpectedVersion::NoStream, &events)
                .await
                .expect("append");
        }
        let (all, budget) = (Scope::all(), 300_000);
        let (mut size, mut after, mut pages) = (PageSize::default(), Position::START, Vec::new());
        loop {
            let rows = size.rows(1_000, budget);
            let page = store.read_page(after, rows, budget, &all).await.expect("page");
            size.saw(&page);
            pages.push((rows, page.events.len(), page.full));
            let Some((last, _)) = page.events.last() else { break };
            after = last.position;
        }
        // 300 kB at the first guess (64 KiB) is 4 rows, of which 3 reach the budget; then 2
        // rows of 100 kB fit: the last 2 large events, then the last one and the first small
        // one, then 2 small ones; a page of small events only asks for the page limit again.
        let expected = [
            (4, 3, true),
            (2, 2, true),
            (2, 2, true),
            (2, 2, true),
            (1_000, 97, false),
            (1_000, 0, false),
        ];
        assert_eq!(pages, expected);
    }
}
