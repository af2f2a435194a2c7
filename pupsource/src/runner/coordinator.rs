//! One projection in one process: which of its partitions this process runs, and running
//! them.
//!
//! Partitions are leases (see `store/lease.rs`), on every backend: every heartbeat renews
//! them, claims free or expired ones up to a fair share (or only the one assigned with
//! [`Runner::assign`](super::Runner::assign)), and gives back the surplus. Whenever the set
//! of partitions to run changes, the running set is stopped at a batch boundary and started
//! again with the new one, which reloads the checkpoints.
//!
//! A partition waited for because another worker holds it is said so once per holder (who,
//! and when its lease expires); a holder that was a process of this host and is gone is
//! evicted at once (see `store/lease.rs`), and its partitions claimed in the same heartbeat.
//!
//! A partition whose handler still fails after every retry ([`ErrorPolicy::Stop`]) *halts*:
//! it is no longer run (and stays leased by this process, so the failure does not move on to
//! another worker), while every other partition and projection goes on. The error is
//! returned when the run ends; a projection left with nothing but halted partitions tells
//! the runner, which ends the run once no projection has anything left to run.
//!
//! [`ErrorPolicy::Stop`]: super::ErrorPolicy::Stop

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::reader::run_partitions;
use super::telemetry;
use super::{Idle, ProjectionRun, RunMode};
use crate::backoff::{Outage, retry_transient};
use crate::error::{Error, Result};
use crate::partition::Partition;
use crate::process::Process;
use crate::projection::Lease;
use crate::store::lease::{Beat, Heartbeat, Holder};

/// Runs projection `run` until cancelled, caught up (in [`RunMode::UntilCaughtUp`]), or
/// failed. Returns the first halted partition's error, if any, once it stops.
pub(crate) async fn run_projection(
    run: Arc<ProjectionRun>,
    cancel: CancellationToken,
    idle: Arc<Idle>,
) -> Result<()> {
    let mut coordinator = Coordinator {
        run,
        cancel,
        idle,
        counted_idle: false,
        held: BTreeMap::new(),
        halted: BTreeMap::new(),
        finished: BTreeSet::new(),
        running: None,
        process: Process::this(),
        reported: BTreeSet::new(),
        heartbeat_outage: Outage::default(),
    };
    let run = Arc::clone(&coordinator.run);
    tracing::info!(
        target: "pupsource::runner",
        projection = %run.name,
        partitions = run.partition_count,
        worker = %run.settings.worker_id,
        "projection starting"
    );
    let driven = coordinator.drive().await;
    let stopped = coordinator.stop_running().await;
    coordinator.hand_back().await;
    coordinator.set_idle(false);
    driven?;
    stopped?;
    match coordinator.halted.into_values().next() {
        Some(err) => Err(err),
        None => {
            tracing::info!(target: "pupsource::runner", projection = %run.name, "projection stopped");
            Ok(())
        }
    }
}

/// A set of partitions running as one task (a reader and a worker per partition).
struct Running {
    partitions: BTreeSet<u32>,
    stop: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Drop for Running {
    /// If the run is aborted (its future dropped), the set stops at once, as it would in a
    /// crash, rather than finishing its batches behind the caller's back.
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Coordinator {
    run: Arc<ProjectionRun>,
    cancel: CancellationToken,
    /// Where the runner counts projections that have nothing left to run.
    idle: Arc<Idle>,
    /// Whether this projection is counted there now.
    counted_idle: bool,
    /// The partitions this process holds, with the epoch of each claim.
    held: BTreeMap<u32, u64>,
    /// Partitions whose handler failed for good, with the error.
    halted: BTreeMap<u32, Error>,
    /// Until caught up: partitions that reached the head.
    finished: BTreeSet<u32>,
    running: Option<Running>,
    /// This process, as its registration records it.
    process: Process,
    /// The other workers this one said it waits for (once each).
    reported: BTreeSet<String>,
    /// Heartbeats failing for a passing reason.
    heartbeat_outage: Outage,
}

impl Coordinator {
    async fn drive(&mut self) -> Result<()> {
        let run = Arc::clone(&self.run);
        let head = match run.settings.mode {
            RunMode::UntilCaughtUp => {
                match retry_transient(&self.cancel, "read the head of the log", || run.store.head())
                    .await?
                {
                    Some(head) => Some(head),
                    None => return Ok(()),
                }
            }
            RunMode::Continuous => None,
        };
        // Register first (refused if live workers run another partition count), then create
        // this layout's checkpoint rows (fencing the other layouts'), which heartbeats claim.
        self.assign().await?;
        let created = retry_transient(&self.cancel, "create checkpoints", || {
            run.store.load_checkpoints(&run.name, run.partition_count)
        })
        .await?;
        if created.is_none() {
            return Ok(());
        }
        let mut beat = tokio::time::interval(run.settings.heartbeat);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut waiting_logged = false;
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            self.assign().await?;
            let target: BTreeSet<u32> = self
                .held
                .keys()
                .copied()
                .filter(|p| !self.halted.contains_key(p) && !self.finished.contains(p))
                .collect();
            if self.running.as_ref().map(|r| &r.partitions) != Some(&target) {
                self.stop_running().await?;
                if !target.is_empty() {
                    self.start(target);
                }
            }
            if self.running.is_none()
                && let Some(head) = head
            {
                match self.pending_elsewhere(head).await {
                    Some(pending) if pending.is_empty() => return Ok(()),
                    Some(pending) if !waiting_logged => {
                        waiting_logged = true;
                        tracing::info!(target: "pupsource::runner", projection = %run.name, ?pending, "caught up here; waiting for partitions held by other workers");
                    }
                    _ => {}
                }
            }
            // Nothing left to run here but halted partitions: say so to the runner.
            let idle = self.running.is_none()
                && !self.halted.is_empty()
                && self.held.keys().all(|p| self.halted.contains_key(p));
            self.set_idle(idle);
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                outcome = wait(&mut self.running, &run.name) => {
                    let partitions = self.running.take().map(|r| r.partitions.clone()).unwrap_or_default();
                    if outcome.is_ok() && head.is_some() {
                        self.finished.extend(partitions);
                    }
                    self.settle(outcome)?;
                }
                _ = beat.tick() => {}
            }
        }
    }

    fn set_idle(&mut self, idle: bool) {
        if idle != self.counted_idle {
            self.counted_idle = idle;
            self.idle.set(idle);
        }
    }

    /// Decides which partitions this process holds: what the heartbeat renewed and claimed,
    /// minus the surplus, which is given back after the running set stopped at a batch
    /// boundary.
    async fn assign(&mut self) -> Result<()> {
        let run = Arc::clone(&self.run);
        let Some(mut beat) = self.heartbeat().await? else { return Ok(()) };
        if self.wait_or_take_over(&beat.holders).await {
            // Claim what they held now, not a heartbeat later.
            let Some(again) = self.heartbeat().await? else { return Ok(()) };
            beat = again;
        }
        let layout = |index| Partition { index, count: run.partition_count };
        for (&partition, epoch) in &self.held {
            if beat.held.get(&partition) != Some(epoch) {
                tracing::warn!(target: "pupsource::runner", projection = %run.name, partition, epoch, "lease taken over by another worker");
                telemetry::lease_lost(&run.name, layout(partition));
            }
        }
        for (&partition, epoch) in &beat.held {
            if self.held.get(&partition) != Some(epoch) {
                tracing::info!(target: "pupsource::runner", projection = %run.name, partition, epoch, "partition claimed");
                telemetry::lease_claimed(&run.name, layout(partition));
            }
        }
        // A halted partition stays halted in this process (and reported) even if its lease
        // lapses meanwhile.
        self.held = beat.held;
        let surplus: Vec<u32> = self
            .held
            .keys()
            .rev()
            .copied()
            .filter(|p| !self.halted.contains_key(p))
            .take(self.held.len().saturating_sub(beat.share))
            .collect();
        if !surplus.is_empty() {
            self.stop_running().await?;
            let worker = &run.settings.worker_id;
            match run.store.release(&run.name, run.partition_count, worker, &surplus).await {
                Ok(()) => {
                    tracing::info!(target: "pupsource::runner", projection = %run.name, partitions = ?surplus, "surplus partitions released");
                    telemetry::leases_released(&run.name, surplus.len());
                    self.held.retain(|p, _| !surplus.contains(p));
                }
                Err(err) => {
                    tracing::warn!(target: "pupsource::runner", projection = %run.name, error = %err, "releasing partitions failed; retrying");
                }
            }
        }
        Ok(())
    }

    /// One heartbeat; `None` if it failed for a passing reason (the leases last two more
    /// heartbeats: the next one retries).
    async fn heartbeat(&mut self) -> Result<Option<Beat>> {
        let run = Arc::clone(&self.run);
        let request = Heartbeat {
            projection: &run.name,
            worker: &run.settings.worker_id,
            process: &self.process,
            partition_count: run.partition_count,
            lease: run.settings.lease(),
            held: &self.held,
            only: run.settings.assigned,
        };
        match run.store.heartbeat(&request).await {
            Ok(beat) => {
                if let Some((down_for, failures)) = self.heartbeat_outage.ended() {
                    tracing::warn!(target: "pupsource::runner", projection = %run.name, failures, ?down_for, "the database is back: heartbeats work again");
                }
                Ok(Some(beat))
            }
            Err(err) if err.is_transient() => {
                if self.heartbeat_outage.failed() {
                    let every = run.settings.heartbeat;
                    tracing::warn!(target: "pupsource::runner", projection = %run.name, error = %err, "heartbeat failed; retrying every {every:?}, until the database answers");
                } else {
                    tracing::debug!(target: "pupsource::runner", projection = %run.name, error = %err, "heartbeat failed again");
                }
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Says once per holder that its partitions are waited for, and until when; evicts the
    /// holders that were processes of this host and are gone. Whether it evicted any.
    async fn wait_or_take_over(&mut self, holders: &[Holder]) -> bool {
        let run = Arc::clone(&self.run);
        let mut evicted = false;
        for holder in holders {
            let (worker, partitions) = (&holder.worker, &holder.partitions);
            match holder.process.as_ref().filter(|p| p.is_gone_from_this_host()) {
                Some(dead) => match run.store.evict(&run.name, worker, dead).await {
                    Ok(true) => {
                        tracing::info!(target: "pupsource::runner", projection = %run.name, holder = %worker, pid = dead.pid, ?partitions, "the holder was a process of this host that is gone: taking its partitions over at once");
                        evicted = true;
                    }
                    // Registered again meanwhile (a restart under the same id): it is alive.
                    Ok(false) => {}
                    // The next heartbeat looks again.
                    Err(err) => {
                        tracing::warn!(target: "pupsource::runner", projection = %run.name, holder = %worker, error = %err, "cannot take over the partitions of a process that is gone");
                    }
                },
                None if self.reported.insert(worker.clone()) => {
                    tracing::info!(target: "pupsource::runner", projection = %run.name, holder = %worker, lease_until = %holder.until, ?partitions, "partitions held by another worker: waiting until it gives them back or its lease expires");
                }
                None => {}
            }
        }
        evicted
    }

    fn start(&mut self, partitions: BTreeSet<u32>) {
        let owned: BTreeMap<u32, Lease> = partitions
            .iter()
            .map(|&p| {
                let epoch = self.held.get(&p).copied().unwrap_or_default();
                (p, Lease { owner: Arc::clone(&self.run.settings.worker_id), epoch })
            })
            .collect();
        let stop = self.cancel.child_token();
        let task = tokio::spawn(run_partitions(Arc::clone(&self.run), stop.clone(), owned));
        self.running = Some(Running { partitions, stop, task });
    }

    /// Stops the running set at a batch boundary and takes note of how it ended.
    async fn stop_running(&mut self) -> Result<()> {
        let Some(running) = self.running.take() else { return Ok(()) };
        running.stop.cancel();
        let mut slot = Some(running);
        let outcome = wait(&mut slot, &self.run.name).await;
        self.settle(outcome)
    }

    /// How a running set ended: a halted partition or a lost lease is this partition's
    /// business; anything else stops the projection.
    fn settle(&mut self, outcome: Result<()>) -> Result<()> {
        match outcome {
            Ok(()) => Ok(()),
            Err(err) if matches!(err, Error::Handler { .. }) => {
                let index = match &err {
                    Error::Handler { partition, .. } => partition.index,
                    _ => return Err(err),
                };
                tracing::error!(target: "pupsource::runner", projection = %self.run.name, partition = index, error = %err, "partition halted; the others go on");
                self.halted.insert(index, err);
                Ok(())
            }
            Err(Error::LeaseLost { partition, epoch, .. }) => {
                tracing::warn!(target: "pupsource::runner", projection = %self.run.name, partition = %partition, epoch, "lease lost; the batch in flight was rolled back");
                telemetry::lease_lost(&self.run.name, partition);
                self.held.remove(&partition.index);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Until caught up: the partitions this process answers for but does not hold that are
    /// still behind `head` (`None` if the database cannot tell now). That is every other
    /// partition, or, statically assigned, its own partition while another process holds it.
    async fn pending_elsewhere(&self, head: i64) -> Option<Vec<u32>> {
        let run = &self.run;
        let except: Vec<u32> = (0..run.partition_count)
            .filter(|p| {
                self.held.contains_key(p) || run.settings.assigned.is_some_and(|key| key != *p)
            })
            .collect();
        let pending =
            run.store.pending_partitions(&run.name, run.partition_count, &run.scope, head, &except);
        match pending.await {
            Ok(pending) => Some(pending),
            Err(err) => {
                tracing::warn!(target: "pupsource::runner", projection = %run.name, error = %err, "cannot check other workers' partitions");
                None
            }
        }
    }

    /// Gives every lease back and deregisters, so others take over at once.
    async fn hand_back(&mut self) {
        let run = &self.run;
        let (worker, held) =
            (&run.settings.worker_id, self.held.keys().copied().collect::<Vec<_>>());
        let released = match run.store.release(&run.name, run.partition_count, worker, &held).await
        {
            Ok(()) => run.store.deregister(&run.name, worker).await,
            Err(err) => Err(err),
        };
        match released {
            Ok(()) => self.held.clear(),
            Err(err) => {
                tracing::warn!(target: "pupsource::runner", projection = %run.name, error = %err, "could not give the leases back; they expire on their own");
            }
        }
    }
}

/// Waits for the running set to end (forever if there is none).
async fn wait(running: &mut Option<Running>, projection: &str) -> Result<()> {
    let Some(running) = running else { return std::future::pending().await };
    match (&mut running.task).await {
        Ok(result) => result,
        Err(panic) => {
            Err(Error::Panicked { projection: projection.to_owned(), message: panic.to_string() })
        }
    }
}
