//! The worker of one partition: handles batches in transactions that also write its checkpoint.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::reader::{retry_connection, sleep_or_cancel};
use super::{ErrorPolicy, Metrics, Settings};
use crate::checkpoint::CheckpointState;
use crate::error::{Error, Result};
use crate::event::{PersistedEvent, Position, StreamId};
use crate::projection::{Context, Lease, Partition, Projection};
use crate::store::{BatchTx, Store};

/// What the reader sends a worker after each page of the log: the page's events of this
/// partition (in log order), and that every event of the partition up to `through` has now
/// been sent, so an idle partition's checkpoint can move too.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) events: Vec<PersistedEvent>,
    pub(crate) through: Position,
}

/// Whether a batch went through or the worker was told to stop meanwhile.
enum Flow {
    Done,
    Cancelled,
}

pub(crate) struct Worker {
    store: Store,
    projection: Arc<dyn Projection>,
    name: String,
    partition: Partition,
    /// The lease the partition runs under (PostgreSQL): every batch checks it first.
    lease: Option<Lease>,
    /// The partition's committed checkpoint.
    checkpoint: Position,
    state: Arc<CheckpointState>,
    /// Once every partition of this layout is past it, older layouts are deleted.
    retire_after: Option<Position>,
    /// Streams with a parked event: their later events are parked too, keeping their order.
    parked: HashSet<StreamId>,
    settings: Settings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl Worker {
    #[allow(clippy::too_many_arguments, reason = "one constructor, called once, by the reader")]
    pub(crate) fn new(
        store: Store,
        projection: Arc<dyn Projection>,
        partition: Partition,
        lease: Option<Lease>,
        state: Arc<CheckpointState>,
        parked: HashSet<StreamId>,
        settings: Settings,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> Self {
        Worker {
            store,
            name: projection.name().to_owned(),
            projection,
            checkpoint: state.current.checkpoints[partition.index as usize],
            retire_after: state.retire_after(),
            state,
            partition,
            lease,
            parked,
            settings,
            metrics,
            cancel,
        }
    }

    /// Handles batches until the reader is done or the worker is cancelled. A batch is up to
    /// `batch_size` events, taken from as many deliveries as are waiting.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Delivery>) -> Result<()> {
        let mut pending: VecDeque<PersistedEvent> = VecDeque::new();
        let mut through = self.checkpoint;
        loop {
            // Shutdown: the batch in flight was finished; what is still pending is delivered
            // again from the checkpoint on the next run.
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            if pending.is_empty() {
                let delivery = tokio::select! {
                    () = self.cancel.cancelled() => return Ok(()),
                    delivery = rx.recv() => match delivery {
                        Some(delivery) => delivery,
                        None => return Ok(()),
                    },
                };
                self.accept(delivery, &mut pending, &mut through);
            }
            while pending.len() < self.settings.batch_size {
                match rx.try_recv() {
                    Ok(delivery) => self.accept(delivery, &mut pending, &mut through),
                    Err(_) => break,
                }
            }
            let take = pending.len().min(self.settings.batch_size);
            let batch: Vec<PersistedEvent> = pending.drain(..take).collect();
            // The batch's checkpoint: its last event, or everything delivered when it is the
            // last of what is pending.
            let batch_through = match (pending.front(), batch.last()) {
                (Some(_), Some(last)) => last.position,
                _ => through,
            };
            if batch_through <= self.checkpoint {
                continue;
            }
            if let Flow::Cancelled = self.process(&batch, batch_through).await? {
                return Ok(());
            }
        }
    }

    fn accept(
        &self,
        delivery: Delivery,
        pending: &mut VecDeque<PersistedEvent>,
        through: &mut Position,
    ) {
        *through = (*through).max(delivery.through);
        pending.extend(delivery.events.into_iter().filter(|e| e.position > self.checkpoint));
    }

    /// Handles `events` and moves the checkpoint to `through`.
    async fn process(&mut self, events: &[PersistedEvent], through: Position) -> Result<Flow> {
        let span = tracing::info_span!(
            target: "pupsource::runner",
            "projection.batch",
            projection = %self.name,
            partition = %self.partition,
            position = %through,
            events = events.len(),
        );
        async {
            let mut events = events;
            let mut backoff = self.settings.retry.initial_backoff;
            loop {
                match self.try_batch(events, through).await {
                    Ok(true) => return Ok(Flow::Done),
                    // A handler failed and the batch was rolled back: go one event at a time.
                    Ok(false) => return self.process_one_by_one(events, through).await,
                    Err(err @ Error::Connection(_)) => {
                        tracing::warn!(error = %err, retry_in = ?backoff, "batch failed; retrying");
                        if !sleep_or_cancel(&self.cancel, backoff).await {
                            return Ok(Flow::Cancelled);
                        }
                        backoff = (backoff * 2).min(self.settings.retry.max_backoff);
                        // The connection may have died after the commit reached the server:
                        // trust the stored checkpoint, not this worker's memory.
                        let Some(stored) = self.stored_checkpoint().await else { continue };
                        if stored >= through {
                            self.checkpoint = stored;
                            return Ok(Flow::Done);
                        }
                        let done = events.iter().take_while(|e| e.position <= stored).count();
                        events = &events[done..];
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// This partition's checkpoint as stored, if the database answers.
    async fn stored_checkpoint(&self) -> Option<Position> {
        let rows = self.store.checkpoints(&self.name).await.ok()?;
        rows.into_iter().find(|row| row.partition == self.partition).map(|row| row.position)
    }

    /// Opens a batch transaction; under a lease, one the server closes if this worker leaves
    /// it idle past the lease (paused, cut off). The lease itself is checked by the
    /// checkpoint write that ends the batch.
    async fn begin(&self) -> Result<BatchTx> {
        match self.lease {
            Some(_) => self.store.begin_leased_batch(self.settings.lease()).await,
            None => self.store.begin_batch().await,
        }
    }

    /// One transaction for the whole batch. `Ok(false)` if a handler failed (rolled back).
    async fn try_batch(&mut self, events: &[PersistedEvent], through: Position) -> Result<bool> {
        let mut tx = self.begin().await?;
        let mut handled = 0u64;
        for event in events {
            if self.state.handled_by_old_layout(event.position, event.partition_hash) {
                continue;
            }
            if self.parked.contains(&event.stream) {
                tx.park(&self.name, event, None, 0).await?;
                continue;
            }
            let mut cx = Context::new(&self.name, self.partition, event.position, tx.transaction())
                .with_lease(self.lease.as_ref());
            if let Err(err) = self.projection.handle(event, &mut cx).await {
                tracing::debug!(position = %event.position, error = %err, "handler failed in batch");
                tx.rollback().await?;
                return Ok(false);
            }
            handled += 1;
        }
        self.commit(tx, through).await?;
        self.metrics.events_handled.fetch_add(handled, Ordering::Relaxed);
        Ok(true)
    }

    /// Writes the checkpoint (retiring older layouts when possible) and commits.
    async fn commit(&mut self, mut tx: BatchTx, through: Position) -> Result<()> {
        let retired = tx
            .save_checkpoint(
                &self.name,
                self.partition,
                through,
                self.lease.as_ref(),
                self.retire_after,
            )
            .await?;
        tx.commit().await?;
        if retired {
            tracing::info!(projection = %self.name, "older partition layouts retired");
        }
        if retired || self.retire_after.is_some_and(|after| through >= after) {
            self.retire_after = None;
        }
        self.checkpoint = through;
        self.metrics.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// After a failure: each event in a transaction of its own, retried, then stop or park.
    async fn process_one_by_one(
        &mut self,
        events: &[PersistedEvent],
        through: Position,
    ) -> Result<Flow> {
        for event in events {
            if let Flow::Cancelled = self.process_alone(event).await? {
                return Ok(Flow::Cancelled);
            }
        }
        if through > self.checkpoint {
            let Some(tx) = retry_connection(&self.cancel, "begin a batch", || self.begin()).await?
            else {
                return Ok(Flow::Cancelled);
            };
            self.commit(tx, through).await?;
        }
        Ok(Flow::Done)
    }

    async fn process_alone(&mut self, event: &PersistedEvent) -> Result<Flow> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(mut tx) =
                retry_connection(&self.cancel, "begin a batch", || self.begin()).await?
            else {
                return Ok(Flow::Cancelled);
            };
            if self.state.handled_by_old_layout(event.position, event.partition_hash) {
                self.commit(tx, event.position).await?;
                return Ok(Flow::Done);
            }
            if self.parked.contains(&event.stream) {
                tx.park(&self.name, event, None, 0).await?;
                self.commit(tx, event.position).await?;
                return Ok(Flow::Done);
            }
            let mut cx = Context::new(&self.name, self.partition, event.position, tx.transaction())
                .with_lease(self.lease.as_ref());
            let failure = match self.projection.handle(event, &mut cx).await {
                Ok(()) => {
                    self.commit(tx, event.position).await?;
                    self.metrics.events_handled.fetch_add(1, Ordering::Relaxed);
                    return Ok(Flow::Done);
                }
                Err(failure) => failure,
            };
            tx.rollback().await?;
            let message = failure.to_string();
            tracing::warn!(
                position = %event.position,
                event_type = %event.event_type,
                attempt,
                error = %message,
                "handler failed"
            );
            if let Err(err) = self.store.record_error(&self.name, self.partition, &message).await {
                tracing::warn!(error = %err, "could not record the handler error for status");
            }
            if attempt < self.settings.retry.max_attempts {
                if !sleep_or_cancel(&self.cancel, self.settings.retry.backoff(attempt)).await {
                    return Ok(Flow::Cancelled);
                }
                continue;
            }
            return match self.settings.on_error {
                ErrorPolicy::Stop => Err(Error::Handler {
                    projection: self.name.clone(),
                    partition: self.partition,
                    position: event.position,
                    event_type: event.event_type.clone(),
                    attempts: attempt,
                    source: failure,
                }),
                ErrorPolicy::Park => {
                    let mut tx = self.begin().await?;
                    tx.park(&self.name, event, Some(&message), attempt).await?;
                    self.commit(tx, event.position).await?;
                    self.parked.insert(event.stream.clone());
                    tracing::warn!(position = %event.position, stream = %event.stream, "event parked");
                    Ok(Flow::Done)
                }
            };
        }
    }
}
