//! The worker of one partition: handles batches in transactions that also write its
//! checkpoint.
//!
//! Every transaction of a worker ends with the checkpoint write, a compare-and-set on its
//! lease and on the position the transaction started from (see `store/lease.rs`). So after
//! any failure whose outcome is unknown (a connection cut while `COMMIT` was on its way), the
//! worker simply tries again: if the first commit went through, the second finds the
//! checkpoint moved and is rolled back, and the worker goes on from the stored checkpoint.
//! Nothing is applied twice, whatever the timing.
//!
//! A batch is what the worker took from its queue (everything queued, up to `TAKE_EVENTS`),
//! in as few transactions as its handlers allow: a transaction commits once `batch_size` of
//! its events asked for it (handlers that write the read model through it; every event
//! counts when the batch size was set), or once it has been open for `BATCH_TIME_BUDGET`,
//! and the rest of the batch goes on in the next one. So a
//! projection that writes nothing through the transaction pays one commit per thousands of
//! events when catching up, and a live trickle still commits each event at once.
//!
//! Transient failures (a lost connection, a locked database) are retried with backoff on
//! every path. A handler failure, or a panic (caught at the handler call and treated as its
//! error), rolls the transaction back; the events before the failing one are then committed
//! again without it, the failing event is retried alone with backoff, and finally the
//! partition halts or the event is parked, as the [`ErrorPolicy`] says. While it waits out a
//! backoff the worker tells the feed, which then stops waiting for it (the other partitions
//! keep their pace).

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::feed::{Feed, Take};
use super::reader::PageSize;
use super::telemetry::PartitionMetrics;
use super::{BATCH_TIME_BUDGET, ErrorPolicy, ProjectionRun, TAKE_EVENTS};
use crate::backoff::{Backoff, Outage, retry_transient, sleep_or_cancel};
use crate::checkpoint::CheckpointState;
use crate::domain::DecodeError;
use crate::error::{Error, Result};
use crate::event::{LogEvent, Position, StreamId};
use crate::partition::Partition;
use crate::partition::partition_of;
use crate::projection::{Context, HandlerError, HandlerPanic, HandlerResult, Lease};
use crate::store::backend::Batch;

/// Whether the worker got through or was told to stop meanwhile.
enum Flow {
    Done,
    Cancelled,
}

/// What becomes of one event in a batch.
enum Step {
    /// An earlier partition count handled it already: it only counts as progress.
    Skip,
    /// An earlier event of its stream is parked: park it too, keeping the stream's order.
    Park,
    /// Hand it to the projection.
    Handle,
}

/// One transaction of a worker.
enum Work<'a> {
    /// Handle these events (those not yet committed) and move the checkpoint to `through`.
    Batch(&'a [LogEvent], Position),
    /// Park an event whose handler kept failing, with the last error and the attempts made.
    Park(&'a LogEvent, &'a str, u32),
}

/// How a transaction of a worker ended.
enum Outcome {
    /// Committed through the position of the work.
    Committed,
    /// Committed the events before the one it stopped at (`batch_size` of them wrote through
    /// the transaction, it was open for the time budget, or the worker is shutting down): the
    /// rest is for the next one.
    CommittedPart,
    /// A handler failed (or panicked) on the event at this position; the transaction was
    /// rolled back.
    HandlerFailed(Position, &'static str, HandlerError),
}

pub(crate) struct Worker {
    run: Arc<ProjectionRun>,
    feed: Arc<Feed>,
    partition: Partition,
    /// The lease the partition runs under: every checkpoint write checks it.
    lease: Lease,
    /// The partition's committed checkpoint.
    checkpoint: Position,
    /// Everything of the partition up to here was taken from the feed or read alone.
    through: Position,
    state: Arc<CheckpointState>,
    /// Once every partition of this layout is past it, older layouts are deleted.
    retire_after: Option<Position>,
    /// Streams with a parked event: their later events are parked too, keeping their order.
    parked: HashSet<StreamId>,
    cancel: CancellationToken,
    telemetry: PartitionMetrics,
    /// The rows a page asks for when the worker reads the log alone.
    page_size: PageSize,
}

impl Worker {
    pub(crate) fn new(
        run: Arc<ProjectionRun>,
        feed: Arc<Feed>,
        partition: Partition,
        lease: Lease,
        state: Arc<CheckpointState>,
        parked: HashSet<StreamId>,
        cancel: CancellationToken,
    ) -> Self {
        let checkpoint = state.current.checkpoints[partition.index as usize];
        let telemetry = PartitionMetrics::new(&run.name, partition);
        Worker {
            telemetry,
            run,
            feed,
            partition,
            lease,
            checkpoint,
            through: checkpoint,
            retire_after: state.retire_after(),
            state,
            parked,
            cancel,
            page_size: PageSize::default(),
        }
    }

    /// Handles what the feed gives (or, detached, what it reads alone) until the feed is
    /// done or the worker is cancelled. Shutdown commits what the transaction in flight has
    /// handled; the rest is delivered again from the checkpoint on the next run.
    pub(crate) async fn run(mut self) -> Result<()> {
        let result = self.work().await;
        self.feed.close(self.partition.index);
        result
    }

    async fn work(&mut self) -> Result<()> {
        let most = TAKE_EVENTS.max(self.run.settings.batch_size);
        while !self.cancel.is_cancelled() {
            let Some(take) = self.feed.take(self.partition.index, most, &self.cancel).await else {
                return Ok(());
            };
            let flow = match take {
                Take::Events { events, through } => {
                    self.through = through;
                    self.process(&events, through).await?
                }
                Take::ReadAlone { read_through } => self.read_alone(read_through).await?,
                Take::Finished => return Ok(()),
            };
            if let Flow::Cancelled = flow {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Detached from the reader: reads one page of the log after what it has, keeps its own
    /// events up to `target` (where the reader is), handles them, and attaches again once it
    /// has caught up.
    async fn read_alone(&mut self, target: Position) -> Result<Flow> {
        if self.through < target {
            let read = self.run.read_page(&mut self.page_size, &self.cancel, self.through);
            let Some(page) = read.await? else {
                return Ok(Flow::Cancelled);
            };
            let last = page.events.last().map(|(e, _)| e.position);
            // Everything up to `target` was read, unless the page stopped at its limit first.
            let through = match last {
                Some(last) if page.full => last.min(target),
                _ => target,
            };
            let count = self.run.partition_count;
            let mine: Vec<LogEvent> = page
                .events
                .into_iter()
                .map(|(event, _)| event)
                .filter(|e| e.position <= through)
                .filter(|e| partition_of(e.partition_hash, count) == self.partition.index)
                .collect();
            if let Flow::Cancelled = self.process(&mine, through).await? {
                return Ok(Flow::Cancelled);
            }
            self.through = through;
        }
        if self.through >= target && self.feed.attach(self.partition.index, self.through) {
            tracing::debug!(target: "pupsource::runner", projection = %self.run.name, partition = %self.partition, "partition attached to the reader again");
        }
        Ok(Flow::Done)
    }

    /// Handles `events` (in log order) in as many transactions as it takes, and moves the
    /// checkpoint to `through`.
    async fn process(&mut self, events: &[LogEvent], through: Position) -> Result<Flow> {
        if through <= self.checkpoint {
            return Ok(Flow::Done);
        }
        let span = tracing::info_span!(
            target: "pupsource::runner",
            "projection.batch",
            projection = %self.run.name,
            partition = %self.partition,
            position = %through,
            events = events.len(),
        );
        async {
            // The index of an event whose handler failed: the events before it go first.
            let mut failed: Option<usize> = None;
            loop {
                if self.cancel.is_cancelled() {
                    return Ok(Flow::Cancelled);
                }
                let pending = events.partition_point(|e| e.position <= self.checkpoint);
                let work = match failed {
                    Some(index) if index <= pending => {
                        failed = None;
                        if let Flow::Cancelled = self.process_alone(&events[index]).await? {
                            return Ok(Flow::Cancelled);
                        }
                        continue;
                    }
                    Some(index) => Work::Batch(&events[..index], events[index - 1].position),
                    None => Work::Batch(events, through),
                };
                match self.transact(work).await? {
                    None => return Ok(Flow::Cancelled),
                    Some(Outcome::Committed) if failed.is_none() => return Ok(Flow::Done),
                    Some(Outcome::Committed | Outcome::CommittedPart) => {}
                    Some(Outcome::HandlerFailed(at, ..)) => {
                        failed = Some(events.partition_point(|e| e.position < at));
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn process_alone(&mut self, event: &LogEvent) -> Result<Flow> {
        let retry = self.run.settings.retry;
        let mut attempt = 0;
        loop {
            let (failure_kind, failure) = match self
                .transact(Work::Batch(std::slice::from_ref(event), event.position))
                .await?
            {
                None => return Ok(Flow::Cancelled),
                Some(Outcome::Committed | Outcome::CommittedPart) => return Ok(Flow::Done),
                Some(Outcome::HandlerFailed(_, kind, failure)) => (kind, failure),
            };
            attempt += 1;
            self.telemetry.failed();
            let message = failure.to_string();
            tracing::warn!(
                target: "pupsource::runner",
                projection = %self.run.name,
                partition = %self.partition,
                position = %event.position,
                event_type = %event.event_type,
                attempt,
                error = %message,
                "handler {failure_kind}"
            );
            if let Err(err) =
                self.run.store.record_error(&self.run.name, self.partition, &message).await
            {
                tracing::warn!(target: "pupsource::runner", error = %err, "could not record the handler error for status");
            }
            // A stored payload that does not decode into its type fails the same way every
            // time: straight to stop or park.
            let permanent = failure.is::<DecodeError>();
            if attempt < retry.max_attempts && !permanent {
                // The reader does not wait for this partition meanwhile.
                self.feed.set_retrying(self.partition.index, true);
                let waited = sleep_or_cancel(&self.cancel, retry.backoff(attempt)).await;
                self.feed.set_retrying(self.partition.index, false);
                if !waited {
                    return Ok(Flow::Cancelled);
                }
                self.telemetry.retrying();
                continue;
            }
            return match self.run.settings.on_error {
                ErrorPolicy::Stop => Err(Error::Handler {
                    projection: self.run.name.clone(),
                    partition: self.partition,
                    position: event.position,
                    event_type: event.event_type.clone(),
                    attempts: attempt,
                    source: failure,
                }),
                ErrorPolicy::Park => {
                    match self.transact(Work::Park(event, &message, attempt)).await? {
                        None => Ok(Flow::Cancelled),
                        Some(_) => {
                            self.parked.insert(event.stream.clone());
                            tracing::warn!(target: "pupsource::runner", projection = %self.run.name, position = %event.position, stream = %event.stream, "event parked");
                            Ok(Flow::Done)
                        }
                    }
                }
            };
        }
    }

    /// Runs one transaction of work to its end, however often it must be tried: transient
    /// failures are retried with backoff (after reading the stored checkpoint again), and a
    /// checkpoint found moved on means an earlier try committed unseen. `None` if cancelled.
    async fn transact(&mut self, work: Work<'_>) -> Result<Option<Outcome>> {
        // One failure is a connection that was cut meanwhile, found out and replaced (a debug
        // line); from the second in a row on it is an outage, logged once, as is its end.
        let (mut backoff, mut outage) = (Backoff::reconnect(), Outage::from_failure(2));
        loop {
            let result = self.try_transaction(&work).await;
            match result {
                Ok(outcome) => {
                    if let Some((down_for, failures)) = outage.ended() {
                        tracing::warn!(target: "pupsource::runner", projection = %self.run.name, partition = %self.partition, failures, ?down_for, "the database is back: batches commit again");
                    }
                    return Ok(Some(outcome));
                }
                Err(err) if err.is_transient() => {
                    let wait = backoff.next();
                    if outage.failed() {
                        let max = backoff.max();
                        tracing::warn!(target: "pupsource::runner", projection = %self.run.name, partition = %self.partition, error = %err, "batch transaction failed twice; retrying in {wait:?}, then doubling up to every {max:?}, until the database answers");
                    } else {
                        tracing::debug!(target: "pupsource::runner", projection = %self.run.name, partition = %self.partition, error = %err, retry_in = ?wait, "batch transaction failed");
                    }
                    if !sleep_or_cancel(&self.cancel, wait).await || !self.resync().await? {
                        return Ok(None);
                    }
                }
                Err(Error::CheckpointMoved { stored, .. }) => self.adopt(stored)?,
                Err(err) => return Err(err),
            }
        }
    }

    async fn try_transaction(&mut self, work: &Work<'_>) -> Result<Outcome> {
        let (events, through, parking) = match *work {
            Work::Batch(events, through) => (events, through, None),
            Work::Park(event, message, attempts) => {
                (std::slice::from_ref(event), event.position, Some((message, attempts)))
            }
        };
        if through <= self.checkpoint {
            return Ok(Outcome::Committed);
        }
        let mut tx = self.begin().await?;
        let (opened, batch_size) = (Instant::now(), self.run.settings.batch_size);
        // Events that count towards the batch size: all of them when it was set, otherwise
        // those whose handlers asked for the transaction.
        let (mut handled, mut parked, mut counted) = (0u64, 0u64, 0usize);
        let fixed = self.run.settings.batch_size_fixed;
        let mut last = self.checkpoint;
        for event in events.iter().filter(|e| e.position > self.checkpoint) {
            let full = counted >= batch_size || opened.elapsed() >= BATCH_TIME_BUDGET;
            if last > self.checkpoint && (full || self.cancel.is_cancelled()) {
                self.commit(tx, last, opened, handled, parked).await?;
                return Ok(Outcome::CommittedPart);
            }
            last = event.position;
            if let Some((message, attempts)) = parking {
                tx.park(&self.run.name, event, Some(message), attempts).await?;
                parked += 1;
                continue;
            }
            let touched = match self.step(event) {
                Step::Skip => false,
                Step::Park => {
                    tx.park(&self.run.name, event, None, 0).await?;
                    parked += 1;
                    false
                }
                Step::Handle => match self.call(event, tx.as_mut()).await {
                    Ok(touched) => {
                        handled += 1;
                        touched
                    }
                    Err((kind, failure)) => {
                        tracing::debug!(target: "pupsource::runner", position = %event.position, error = %failure, "handler {kind} in batch");
                        rollback(tx).await;
                        return Ok(Outcome::HandlerFailed(event.position, kind, failure));
                    }
                },
            };
            counted += usize::from(fixed || touched);
        }
        self.commit(tx, through, opened, handled, parked).await?;
        Ok(Outcome::Committed)
    }

    /// Whether an event is handled, parked behind an earlier one, or was handled already.
    fn step(&self, event: &LogEvent) -> Step {
        if self.state.handled_by_old_layout(event.position, event.partition_hash) {
            Step::Skip
        } else if self.parked.contains(&event.stream) {
            Step::Park
        } else {
            Step::Handle
        }
    }

    /// Calls the handler, and says whether it asked for the transaction; a panic is caught
    /// and becomes its error.
    async fn call(
        &self,
        event: &LogEvent,
        tx: &mut dyn Batch,
    ) -> Result<bool, (&'static str, HandlerError)> {
        let mut cx = Context::new(&self.run.name, self.partition, event.position, tx.transaction())
            .with_lease(Some(&self.lease));
        let call = async { self.run.projection.handle(event, &mut cx).await };
        let result: std::thread::Result<HandlerResult> =
            AssertUnwindSafe(call).catch_unwind().await;
        match result {
            Ok(Ok(())) => Ok(cx.touched()),
            Ok(Err(failure)) => Err(("failed", failure)),
            Err(panic) => Err(("panicked", Box::new(HandlerPanic::from_payload(panic.as_ref())))),
        }
    }

    /// Opens a batch transaction: one the server closes if this worker leaves it idle past
    /// its lease (PostgreSQL), or one that holds the write lock (SQLite).
    async fn begin(&self) -> Result<Box<dyn Batch>> {
        self.run.store.begin_batch(Some(self.run.settings.lease())).await
    }

    /// Writes the checkpoint (retiring older layouts when possible) and commits the
    /// transaction opened at `opened`, in which `handled` events were handled and `parked`
    /// parked.
    async fn commit(
        &mut self,
        mut tx: Box<dyn Batch>,
        through: Position,
        opened: Instant,
        handled: u64,
        parked: u64,
    ) -> Result<()> {
        let retired = tx
            .save_checkpoint(
                &self.run.name,
                self.partition,
                &self.lease,
                (self.checkpoint, through),
                self.retire_after,
            )
            .await?;
        tx.commit().await?;
        if retired {
            tracing::info!(target: "pupsource::runner", projection = %self.run.name, "older partition layouts retired");
        }
        if retired || self.retire_after.is_some_and(|after| through >= after) {
            self.retire_after = None;
        }
        self.checkpoint = through;
        self.run.metrics.batches.fetch_add(1, Ordering::Relaxed);
        self.run.metrics.events_handled.fetch_add(handled, Ordering::Relaxed);
        self.run.progress.handled(handled);
        self.telemetry.committed(opened, handled, parked);
        Ok(())
    }

    /// After a transient failure: the checkpoint as stored (a commit whose answer was lost
    /// may have gone through). False if cancelled first.
    async fn resync(&mut self) -> Result<bool> {
        let (run, partition, cancel) = (Arc::clone(&self.run), self.partition, self.cancel.clone());
        let stored = retry_transient(&cancel, "read the checkpoint", || {
            run.store.checkpoint(&run.name, partition)
        })
        .await?;
        match stored {
            None => Ok(false),
            Some(None) => {
                Err(Error::CheckpointLost { projection: self.run.name.clone(), partition })
            }
            Some(Some(stored)) => {
                self.adopt(stored)?;
                Ok(true)
            }
        }
    }

    /// Takes the stored checkpoint over when an earlier try committed unseen. A checkpoint
    /// that went back (reset while this worker ran) means the partition is no longer this
    /// run's to continue.
    fn adopt(&mut self, stored: Position) -> Result<()> {
        if stored < self.checkpoint {
            return Err(Error::CheckpointLost {
                projection: self.run.name.clone(),
                partition: self.partition,
            });
        }
        if stored > self.checkpoint {
            tracing::info!(target: "pupsource::runner", projection = %self.run.name, partition = %self.partition, position = %stored, "an earlier try committed; going on from the stored checkpoint");
            self.checkpoint = stored;
            self.through = self.through.max(stored);
        }
        Ok(())
    }
}

/// Rolls a transaction back; a connection lost meanwhile rolled it back already.
async fn rollback(tx: Box<dyn Batch>) {
    if let Err(err) = tx.rollback().await {
        tracing::debug!(target: "pupsource::runner", error = %err, "rollback failed; the server discards the transaction");
    }
}
