//! One projection in one process: which of its partitions this process runs, and running
//! them.
//!
//! On SQLite the process runs every partition (or the one assigned with
//! [`Runner::assign`](super::Runner::assign)). On PostgreSQL it holds partitions through leases
//! (see `store/postgres/leases.rs`): every heartbeat renews them, claims free or expired ones up
//! to a fair share, and gives back the surplus. Whenever the set of partitions to run changes,
//! the running set is stopped at a batch boundary and started again with the new one.
//!
//! A partition whose handler still fails after every retry ([`ErrorPolicy::Stop`]) *halts*:
//! it is no longer run (and, on PostgreSQL, stays leased by this process, so the failure does
//! not move on to another worker), while every other partition and projection goes on. The
//! error is returned when the run ends.
//!
//! [`ErrorPolicy::Stop`]: super::ErrorPolicy::Stop

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::reader::{retry_connection, run_partitions};
use super::{Metrics, RunMode, Settings};
use crate::error::{Error, Result};
use crate::projection::{Lease, Projection};
use crate::store::{Heartbeat, PostgresStore, Store};

/// Runs projection `projection` until cancelled, caught up (in [`RunMode::UntilCaughtUp`]), or
/// failed. Returns the first halted partition's error, if any, once it stops.
pub(crate) async fn run_projection(
    store: Store,
    projection: Arc<dyn Projection>,
    settings: Settings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let leases = match &store {
        Store::Postgres(pg) => Some(pg.clone()),
        Store::Sqlite(_) => None,
    };
    let mut coordinator = Coordinator {
        name: projection.name().to_owned(),
        count: settings.partitions.unwrap_or_else(|| projection.partitions()),
        store,
        leases,
        projection,
        settings,
        metrics,
        cancel,
        held: BTreeMap::new(),
        halted: BTreeMap::new(),
        finished: BTreeSet::new(),
        running: None,
    };
    tracing::info!(
        target: "pupsource::runner",
        projection = %coordinator.name,
        partitions = coordinator.count,
        worker = %coordinator.settings.worker_id,
        leases = coordinator.leases.is_some(),
        "projection starting"
    );
    let driven = coordinator.drive().await;
    let stopped = coordinator.stop_running().await;
    coordinator.hand_back().await;
    driven?;
    stopped?;
    match coordinator.halted.into_values().next() {
        Some(err) => Err(err),
        None => {
            tracing::info!(target: "pupsource::runner", projection = %coordinator.name, "projection stopped");
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
    name: String,
    count: u32,
    store: Store,
    /// PostgreSQL: partitions are leased.
    leases: Option<PostgresStore>,
    projection: Arc<dyn Projection>,
    settings: Settings,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    /// The partitions this process holds, with the epoch of each claim (0 without leases).
    held: BTreeMap<u32, u64>,
    /// Partitions whose handler failed for good, with the error.
    halted: BTreeMap<u32, Error>,
    /// Until caught up: partitions that reached the head.
    finished: BTreeSet<u32>,
    running: Option<Running>,
}

impl Coordinator {
    async fn drive(&mut self) -> Result<()> {
        let head = match self.settings.mode {
            RunMode::UntilCaughtUp => {
                match retry_connection(&self.cancel, "read the head of the log", || {
                    self.store.head()
                })
                .await?
                {
                    Some(head) => Some(head),
                    None => return Ok(()),
                }
            }
            RunMode::Continuous => None,
        };
        if self.leases.is_some() {
            // Register first (refused if live workers run another partition count), then
            // create this layout's checkpoint rows, which the heartbeats claim.
            self.assign().await?;
            let (store, name, count) = (&self.store, &self.name, self.count);
            let created = retry_connection(&self.cancel, "create checkpoints", || {
                store.load_checkpoints(name, count)
            })
            .await?;
            if created.is_none() {
                return Ok(());
            }
        }
        let mut beat = tokio::time::interval(self.settings.heartbeat);
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
            if self.running.is_none() {
                match head {
                    Some(head) => match self.pending_elsewhere(head).await {
                        Some(pending) if pending.is_empty() => return Ok(()),
                        Some(pending) if !waiting_logged => {
                            waiting_logged = true;
                            tracing::info!(target: "pupsource::runner", projection = %self.name, ?pending, "caught up here; waiting for partitions held by other workers");
                        }
                        _ => {}
                    },
                    // Without leases nothing else can come: every partition halted.
                    None if self.leases.is_none() => return Ok(()),
                    None => {}
                }
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                outcome = wait(&mut self.running, &self.name) => {
                    let partitions = self.running.take().map(|r| r.partitions.clone()).unwrap_or_default();
                    if outcome.is_ok() && head.is_some() {
                        self.finished.extend(partitions);
                    }
                    self.settle(outcome)?;
                }
                _ = beat.tick(), if self.leases.is_some() => {}
            }
        }
    }

    /// Decides which partitions this process holds: all (or the assigned one) without
    /// leases; on PostgreSQL, what the heartbeat renewed and claimed, minus the surplus, which
    /// is given back after the running set stopped at a batch boundary.
    async fn assign(&mut self) -> Result<()> {
        let Some(pg) = self.leases.clone() else {
            if self.held.is_empty() {
                self.held = match self.settings.assigned {
                    Some(index) => BTreeMap::from([(index, 0)]),
                    None => (0..self.count).map(|p| (p, 0)).collect(),
                };
            }
            return Ok(());
        };
        let request = Heartbeat {
            projection: &self.name,
            worker: &self.settings.worker_id,
            partition_count: self.count,
            lease: self.settings.lease(),
            held: &self.held,
            only: self.settings.assigned,
        };
        let beat = match pg.heartbeat(&request).await {
            Ok(beat) => beat,
            Err(err @ Error::LayoutInUse { .. }) => return Err(err),
            Err(err) => {
                // The leases last two more heartbeats: retry at the next one meanwhile.
                tracing::warn!(target: "pupsource::runner", projection = %self.name, error = %err, "heartbeat failed; retrying");
                return Ok(());
            }
        };
        for (partition, epoch) in &self.held {
            if beat.held.get(partition) != Some(epoch) {
                tracing::warn!(target: "pupsource::runner", projection = %self.name, partition, epoch, "lease taken over by another worker");
            }
        }
        for (partition, epoch) in &beat.held {
            if self.held.get(partition) != Some(epoch) {
                tracing::info!(target: "pupsource::runner", projection = %self.name, partition, epoch, "partition claimed");
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
            match pg.release(&self.name, self.count, &self.settings.worker_id, &surplus).await {
                Ok(()) => {
                    tracing::info!(target: "pupsource::runner", projection = %self.name, partitions = ?surplus, "surplus partitions released");
                    self.held.retain(|p, _| !surplus.contains(p));
                }
                Err(err) => {
                    tracing::warn!(target: "pupsource::runner", projection = %self.name, error = %err, "releasing partitions failed; retrying");
                }
            }
        }
        Ok(())
    }

    fn start(&mut self, partitions: BTreeSet<u32>) {
        let owned: BTreeMap<u32, Option<Lease>> = partitions
            .iter()
            .map(|&p| {
                let lease = self.leases.as_ref().map(|_| Lease {
                    owner: Arc::clone(&self.settings.worker_id),
                    epoch: self.held.get(&p).copied().unwrap_or_default(),
                });
                (p, lease)
            })
            .collect();
        let stop = self.cancel.child_token();
        let task = tokio::spawn(run_partitions(
            self.store.clone(),
            Arc::clone(&self.projection),
            self.settings.clone(),
            Arc::clone(&self.metrics),
            stop.clone(),
            owned,
        ));
        self.running = Some(Running { partitions, stop, task });
    }

    /// Stops the running set at a batch boundary and takes note of how it ended.
    async fn stop_running(&mut self) -> Result<()> {
        let Some(running) = self.running.take() else { return Ok(()) };
        running.stop.cancel();
        let mut slot = Some(running);
        let outcome = wait(&mut slot, &self.name).await;
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
                tracing::error!(target: "pupsource::runner", projection = %self.name, partition = index, error = %err, "partition halted; the others go on");
                self.halted.insert(index, err);
                Ok(())
            }
            Err(Error::LeaseLost { partition, epoch, .. }) => {
                tracing::warn!(target: "pupsource::runner", projection = %self.name, partition = %partition, epoch, "lease lost; the batch in flight was rolled back");
                self.held.remove(&partition.index);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Until caught up, on PostgreSQL: the partitions this process answers for but does not
    /// hold that are still behind `head` (`None` if the database cannot tell now). That is
    /// every other partition, or, statically assigned, its own partition while another
    /// process holds it.
    async fn pending_elsewhere(&self, head: i64) -> Option<Vec<u32>> {
        let Some(pg) = &self.leases else { return Some(Vec::new()) };
        let except: Vec<u32> = (0..self.count)
            .filter(|p| {
                self.held.contains_key(p) || self.settings.assigned.is_some_and(|key| key != *p)
            })
            .collect();
        let scope = self.projection.scope();
        match pg.pending_partitions(&self.name, self.count, &scope, head, &except).await {
            Ok(pending) => Some(pending),
            Err(err) => {
                tracing::warn!(target: "pupsource::runner", projection = %self.name, error = %err, "cannot check other workers' partitions");
                None
            }
        }
    }

    /// On PostgreSQL: gives every lease back and deregisters, so others take over at once.
    async fn hand_back(&mut self) {
        let Some(pg) = &self.leases else { return };
        let held: Vec<u32> = self.held.keys().copied().collect();
        let released =
            match pg.release(&self.name, self.count, &self.settings.worker_id, &held).await {
                Ok(()) => pg.deregister(&self.name, &self.settings.worker_id).await,
                Err(err) => Err(err),
            };
        match released {
            Ok(()) => self.held.clear(),
            Err(err) => {
                tracing::warn!(target: "pupsource::runner", projection = %self.name, error = %err, "could not give the leases back; they expire on their own");
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
