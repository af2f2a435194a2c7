//! The runner: reads the log once per projection and fans events out to partition workers.
//!
//! For each projection, one *reader* task pages through the log (scope pushed into SQL) from
//! the lowest checkpoint of its partitions and hands each page to a *feed*, which queues each
//! event for the worker of its partition: memory stays bounded, in events and in bytes,
//! however far behind the projection is, and every worker also learns "you have everything up
//! to here", which lets a partition that received nothing advance its checkpoint too. A
//! partition waiting out a handler's retries is detached from the feed (the others keep their
//! pace) and catches up by reading alone (see the `feed` module). On PostgreSQL and MySQL one
//! query of the reader serves up to ten pages, so the server sends the next rows while the
//! reader hands out the last; a page that waits for room closes a query open for over a second.
//!
//! Each *worker* handles a batch of events in one transaction and writes its checkpoint in it,
//! as a compare-and-set on its lease and on where the batch started (layout changes are handled
//! as the `checkpoint` module explains). Batches adapt to the backlog: a transaction commits
//! once 100 of its events asked for [`Context::transaction`] (or [`Runner::batch_size`]
//! events, when set), after 100 ms, or when nothing more is queued; so a projection that
//! writes nothing through the transaction catches up with one commit per thousands of events,
//! and a live event commits at once.
//! Events of one aggregate share a partition and arrive in log order, which is version order.
//! A handler error (or panic) rolls the transaction back; the events before the failing one
//! are committed again without it, the failing event is retried alone with exponential
//! backoff, and finally the partition halts ([`ErrorPolicy::Stop`], the default) or the event
//! and every later event of its aggregate are parked ([`ErrorPolicy::Park`]). A lost
//! connection or a locked database is retried with backoff on every path.
//!
//! Wake-ups: an append in this process wakes the readers at once; on PostgreSQL other
//! processes' appends arrive as a coalesced `NOTIFY` hint; polling backs off while idle, up to
//! [`Runner::poll_interval`].
//!
//! Several processes: each projection's partitions are leases that the processes running it
//! share (fair share, heartbeats, fencing epochs checked by every batch), on PostgreSQL and
//! MySQL across machines, on SQLite between the processes of one machine; see [`Runner::worker_id`],
//! [`Runner::heartbeat`] and [`Runner::assign`].
//!
//! Failures: a partition whose handler keeps failing halts alone (see [`ErrorPolicy::Stop`]),
//! and a projection left with only halted partitions never stops the others; any other error
//! (a lost checkpoint, a partition count that conflicts with live workers, an undecodable row)
//! cancels every projection (fail-fast); Ctrl-C or SIGTERM lets each worker commit what its
//! transaction in flight has handled. [`Runner::run`] returns once every task stopped.

mod coordinator;
mod feed;
mod reader;
mod status;
pub mod telemetry;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::store::{Fence, ParkedEvent};
pub use status::{PartitionStatus, ProjectionStatus, Status};

use crate::error::{Error, FieldProblem, InvalidInput, Result};
use crate::event::{LogEvent, Position};
use crate::limits::{self, MAX_PARTITIONS};
use crate::partition::{Partition, partition_of};
use crate::projection::{Context, Projection};
use crate::store::{Backend, Scope, Store};

/// The most bytes of events a projection's reader may have read ahead of its workers (its
/// page in flight aside); split between the partitions it runs.
const IN_FLIGHT_BYTES: usize = 16 << 20;

/// The most bytes of events one page of the log may hold.
const PAGE_BYTES: usize = 4 << 20;

/// The longest a batch transaction of a worker stays open before it commits what it has
/// handled (its events whose handlers write through the transaction are capped by
/// [`Runner::batch_size`] too).
pub(crate) const BATCH_TIME_BUDGET: Duration = Duration::from_millis(100);

/// The most events a worker takes from its queue at once (one batch or more).
const TAKE_EVENTS: usize = 10_000;

/// What to do when a handler still fails after every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Halt the failing partition: it is no longer run (it stays leased by this process, so
    /// the failure does not travel to another worker) while every other partition
    /// and projection goes on; its error is shown by status and returned as
    /// [`Error::Handler`] when the run ends, at once if nothing else is left to run in this
    /// process. Restart the process (after a fix, [`Runner::rebuild`] or a parked replay) to
    /// retry it.
    #[default]
    Stop,
    /// Park the event, and every later event of its aggregate, in the dead-letter table, and
    /// go on with the rest. See [`Runner::parked`] and [`Runner::replay_parked`].
    Park,
}

/// How often and how patiently a failing handler is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). Default 5.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each later one. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest wait between attempts. Default 10 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// Whether the runner keeps following the log or stops at its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RunMode {
    /// Follow the log until shut down.
    #[default]
    Continuous,
    /// Return once every partition of every projection has reached the head of the log.
    UntilCaughtUp,
}

/// Counters of a runner, shared with its tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    log_reads: AtomicU64,
    events_read: AtomicU64,
    events_handled: AtomicU64,
    batches: AtomicU64,
    projections: std::sync::Mutex<BTreeMap<String, Arc<ProjectionProgress>>>,
}

/// How far one projection got in this process since its runner was created.
#[derive(Debug, Default)]
pub struct ProjectionProgress {
    events_handled: AtomicU64,
    /// The reader's position when it first found nothing more (with every queue drained).
    caught_up_at: std::sync::OnceLock<i64>,
}

impl ProjectionProgress {
    /// How many of its events handlers handled successfully (committed).
    pub fn events_handled(&self) -> u64 {
        self.events_handled.load(Ordering::Relaxed)
    }

    /// The global position at which the projection first found nothing more to handle (its
    /// reader at the head of the log, its workers' queues drained), if it did.
    pub fn caught_up_at(&self) -> Option<i64> {
        self.caught_up_at.get().copied()
    }

    pub(crate) fn handled(&self, events: u64) {
        self.events_handled.fetch_add(events, Ordering::Relaxed);
    }

    pub(crate) fn caught_up(&self, at: Position) {
        // Only the first time counts.
        let _ = self.caught_up_at.set(at.global_position);
    }
}

impl Metrics {
    /// The progress of projection `name`, once a run of this runner started it.
    pub fn projection(&self, name: &str) -> Option<Arc<ProjectionProgress>> {
        self.lock_projections().get(name).cloned()
    }

    /// The progress of projection `name`, created on first use.
    fn progress_of(&self, name: &str) -> Arc<ProjectionProgress> {
        let mut projections = self.lock_projections();
        Arc::clone(projections.entry(name.to_owned()).or_default())
    }

    fn lock_projections(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ProjectionProgress>>> {
        self.projections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many times a reader queried the log.
    pub fn log_reads(&self) -> u64 {
        self.log_reads.load(Ordering::Relaxed)
    }

    /// How many events the readers read from the log (each event once per projection).
    pub fn events_read(&self) -> u64 {
        self.events_read.load(Ordering::Relaxed)
    }

    /// How many events handlers handled successfully.
    pub fn events_handled(&self) -> u64 {
        self.events_handled.load(Ordering::Relaxed)
    }

    /// How many batches were committed.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// Settings shared by every task of a run.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Events per batch transaction whose handlers write through it.
    pub(crate) batch_size: usize,
    /// Set by [`Runner::batch_size`]: every event counts, whatever its handler does.
    pub(crate) batch_size_fixed: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) mode: RunMode,
    pub(crate) retry: RetryPolicy,
    pub(crate) on_error: ErrorPolicy,
    pub(crate) partitions: Option<u32>,
    /// Static assignment: run only this partition.
    pub(crate) assigned: Option<u32>,
    /// This process's id among the workers of a projection (leases).
    pub(crate) worker_id: Arc<str>,
    /// How often leases are renewed; they last three heartbeats.
    pub(crate) heartbeat: Duration,
    /// How often the lag gauges are refreshed (`None`: never).
    pub(crate) lag_metrics: Option<Duration>,
}

impl Settings {
    /// How long a lease or a worker registration lasts without a heartbeat: a worker counts
    /// as dead, and its partitions as free, only after it missed two heartbeats.
    pub(crate) fn lease(&self) -> Duration {
        self.heartbeat.saturating_mul(3)
    }

    /// The partition count `projection` runs with: the override, or its own.
    pub(crate) fn partition_count(&self, projection: &dyn Projection) -> u32 {
        self.partitions.unwrap_or_else(|| projection.partitions())
    }
}

/// One projection's run in this process, resolved once and shared by its tasks.
pub(crate) struct ProjectionRun {
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) projection: Arc<dyn Projection>,
    pub(crate) name: String,
    pub(crate) partition_count: u32,
    pub(crate) scope: Scope,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    /// This projection's share of `metrics`.
    pub(crate) progress: Arc<ProjectionProgress>,
    /// Events per page of the log: enough for several batches of every partition.
    pub(crate) page_events: usize,
    /// Bytes per page of the log, at most.
    pub(crate) page_bytes: usize,
}

impl ProjectionRun {
    fn new(
        store: Arc<dyn Backend>,
        projection: Arc<dyn Projection>,
        partition_count: u32,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let page_events =
            settings.batch_size.saturating_mul(partition_count as usize).clamp(1_000, 10_000);
        ProjectionRun {
            store,
            progress: metrics.progress_of(projection.name()),
            name: projection.name().to_owned(),
            scope: projection.scope(),
            projection,
            partition_count,
            settings,
            metrics,
            page_events,
            page_bytes: PAGE_BYTES,
        }
    }
}

/// How many projections of a run have nothing left to run in this process (only halted
/// partitions): once all have, the run ends.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    count: AtomicUsize,
    changed: Notify,
}

impl Idle {
    /// Counts a projection in (or out).
    pub(crate) fn set(&self, idle: bool) {
        if idle {
            self.count.fetch_add(1, Ordering::AcqRel);
        } else {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_one();
    }
}

/// Runs projections over an event store.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use pupsource::projection::{Context, HandleFuture, Projection};
/// use pupsource::runner::Runner;
/// use pupsource::{Event, EventStore, ExpectedVersion, LogEvent, SqliteStore, StreamId};
///
/// #[derive(Default)]
/// struct CountEvents(AtomicU64);
///
/// impl Projection for CountEvents {
///     fn name(&self) -> &str { "count_events" }
///     fn partitions(&self) -> u32 { 4 }
///     fn handle<'a>(&'a self, _: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
///         Box::pin(async move { self.0.fetch_add(1, Ordering::Relaxed); Ok(()) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> pupsource::Result<()> {
/// let store = SqliteStore::connect("sqlite::memory:").await?;
/// store.migrate().await?;
/// for i in 0..10 {
///     let user = StreamId::new("Identity", "User", format!("u{i}"));
///     let event = Event::new(&user, "UserCreated", serde_json::json!({}));
///     store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
/// }
///
/// let counter = Arc::new(CountEvents::default());
/// Runner::new(store).projection(counter.clone()).until_caught_up().run().await?;
/// assert_eq!(counter.0.load(Ordering::Relaxed), 10);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runner {
    store: Store,
    /// The store as the runner uses it.
    backend: Arc<dyn Backend>,
    projections: Vec<Arc<dyn Projection>>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        f.debug_struct("Runner")
            .field("store", &self.store)
            .field("projections", &names)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Runner {
    /// A runner over `store` (a [`PostgresStore`](crate::PostgresStore),
    /// [`SqliteStore`](crate::SqliteStore) or [`Store`]) with no projection yet.
    pub fn new(store: impl Into<Store>) -> Self {
        let store = store.into();
        Runner {
            backend: store.backend(),
            store,
            projections: Vec::new(),
            settings: Settings {
                batch_size: 100,
                batch_size_fixed: false,
                poll_interval: Duration::from_millis(500),
                mode: RunMode::Continuous,
                retry: RetryPolicy::default(),
                on_error: ErrorPolicy::Stop,
                partitions: None,
                assigned: None,
                worker_id: default_worker_id().into(),
                heartbeat: Duration::from_secs(2),
                lag_metrics: None,
            },
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// A runner over `store` with these projections (e.g. [`crate::registry::registered`]).
    pub fn with_projections(
        store: impl Into<Store>,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Self {
        Runner { projections, ..Runner::new(store) }
    }

    /// Adds a projection.
    pub fn projection(mut self, projection: Arc<dyn Projection>) -> Self {
        self.projections.push(projection);
        self
    }

    /// Keeps only the projections with these names.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`] for a name that is not among them.
    pub fn only(mut self, names: &[String]) -> Result<Self> {
        for name in names {
            self.find(name)?;
        }
        self.projections.retain(|p| names.iter().any(|n| n == p.name()));
        Ok(self)
    }

    /// The partition count projection `name` runs with: the [`Runner::partitions`] override,
    /// or the projection's own, as given (a run refuses one outside 1 to [`MAX_PARTITIONS`]:
    /// see [`Runner::check`]). `None` if there is no such projection.
    pub fn partition_count(&self, name: &str) -> Option<u32> {
        let projection = self.projections.iter().find(|p| p.name() == name)?;
        Some(self.settings.partition_count(&**projection))
    }

    /// The projections, in the order they were added.
    pub fn projections(&self) -> &[Arc<dyn Projection>] {
        &self.projections
    }

    /// The projection of type `P`, as its own type: e.g. to read its in-memory state once a
    /// run ended. The first one if several instances of `P` run under different names; `None`
    /// if there is none.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use pupsource::{Context, Event, EventStore, ExpectedVersion, HandlerResult, PersistedEvent};
    /// use pupsource::{Runner, SqliteStore, StreamId};
    ///
    /// #[pupsource::projection]
    /// #[derive(Default)]
    /// struct CountEvents(AtomicU64);
    ///
    /// impl pupsource::HandleRaw for CountEvents {
    ///     async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
    ///         self.0.fetch_add(1, Ordering::Relaxed);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pupsource::Result<()> {
    /// let store = SqliteStore::connect("sqlite::memory:").await?;
    /// store.migrate().await?;
    /// let user = StreamId::new("Identity", "User", "u1");
    /// let event = Event::new(&user, "UserCreated", serde_json::json!({}));
    /// store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
    ///
    /// let runner = Runner::with_projections(store, pupsource::registry::registered()?);
    /// runner.clone().until_caught_up().run().await?;
    /// let counter = runner.get::<CountEvents>().expect("registered");
    /// assert_eq!(counter.0.load(Ordering::Relaxed), 1);
    /// # Ok(()) }
    /// ```
    pub fn get<P: Projection>(&self) -> Option<Arc<P>> {
        self.projections.iter().find_map(crate::projection::downcast)
    }

    /// At most this many events per batch transaction (at least 1), whatever the handlers do.
    ///
    /// Unset, batches adapt to the backlog: a transaction commits once 100 of its events
    /// asked for [`Context::transaction`](crate::Context::transaction) (handlers that write
    /// the read model through it), after 100 ms, or when nothing more is queued; events whose
    /// handlers do not ask for it do not count, so such a projection catches up with one
    /// commit per thousands of events, and a live event still commits at once. Set it for
    /// smaller transactions, or to make a stop take effect between fewer events.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.settings.batch_size = batch_size.max(1);
        self.settings.batch_size_fixed = true;
        self
    }

    /// The longest wait between two polls of the log while idle (default 500 ms, 1 ms to
    /// 1 h, checked by [`Runner::check`]). Appends of this process, and PostgreSQL `NOTIFY`
    /// hints of others, wake the readers sooner; on SQLite and MySQL, polls are how appends of
    /// other processes arrive.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// Return once every partition has reached the head of the log.
    pub fn until_caught_up(mut self) -> Self {
        self.settings.mode = RunMode::UntilCaughtUp;
        self
    }

    /// Sets the run mode.
    pub fn mode(mut self, mode: RunMode) -> Self {
        self.settings.mode = mode;
        self
    }

    /// How failing handlers are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = RetryPolicy { max_attempts: retry.max_attempts.max(1), ..retry };
        self
    }

    /// What happens once retries are exhausted.
    pub fn on_error(mut self, policy: ErrorPolicy) -> Self {
        self.settings.on_error = policy;
        self
    }

    /// Runs every projection with this many partitions instead of its own count (1 to
    /// [`MAX_PARTITIONS`], checked by [`Runner::check`]).
    ///
    /// Changing the count between runs is safe: no event is skipped or handled twice.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.settings.partitions = Some(partitions);
        self
    }

    /// Runs only partition `key` of `total` (static assignment, e.g. one process per key):
    /// every projection runs with `total` partitions, of which this runner handles `key`.
    /// The partition is still leased, so two runners given the same key never both handle it.
    /// Checked when the run starts.
    pub fn assign(mut self, key: u32, total: u32) -> Self {
        self.settings.partitions = Some(total);
        self.settings.assigned = Some(key);
        self
    }

    /// This process's id among the workers of a projection, shown by status.
    /// Default: host name, process id and a random suffix. Ids must be unique among live
    /// processes; a restarted process that reuses its id takes its partitions back at once
    /// (with a new epoch) instead of waiting for its old leases to expire.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.settings.worker_id = id.into().into();
        self
    }

    /// How often a worker renews its registration and leases (default 2 s, 10 ms to 1 h,
    /// checked by [`Runner::check`]). Leases last three heartbeats: a worker counts as dead,
    /// and its partitions as free, once it missed two. On PostgreSQL a batch transaction left
    /// idle longer than a lease (a paused process) is closed by the server, and the batch is
    /// retried: a handler must not spend a whole lease between two statements of its
    /// transaction (e.g. on a slow call to another system); raise the heartbeat if one does.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.settings.heartbeat = interval;
        self
    }

    /// Refreshes the lag, parked and fence gauges of the [`telemetry`] module every `every`
    /// while running (default: never). Each refresh runs the status query, which counts the
    /// events behind every checkpoint: choose an interval (say, 15 s) that the database can
    /// afford on a large backlog.
    pub fn lag_metrics(mut self, every: Duration) -> Self {
        self.settings.lag_metrics = Some(every.max(Duration::from_millis(10)));
        self
    }

    /// This runner's worker id.
    pub fn id(&self) -> &str {
        &self.settings.worker_id
    }

    /// The statically assigned partition ([`Runner::assign`]), if any.
    pub fn assignment(&self) -> Option<Partition> {
        let (index, count) = (self.settings.assigned?, self.settings.partitions?);
        Some(Partition { index, count })
    }

    /// The runner's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs until Ctrl-C or SIGTERM (or, in [`RunMode::UntilCaughtUp`], until caught up), or
    /// until a projection fails.
    ///
    /// # Errors
    /// The first projection error; every other task has stopped when this returns.
    pub async fn run(&self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Like [`Runner::run`], stopping when `shutdown` completes instead of on a signal.
    ///
    /// # Errors
    /// The first projection error; every other task has stopped when this returns.
    /// [`Error::RestoredDatabase`] before anything starts on a PostgreSQL database restored
    /// from another cluster.
    pub async fn run_until(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.check()?;
        self.backend.check_log_order().await?;
        let cancel = CancellationToken::new();
        // If this future is dropped (aborted), every task it started stops too.
        let _stop_on_drop = cancel.clone().drop_guard();
        let listener = {
            let (store, stop) = (Arc::clone(&self.backend), cancel.child_token());
            tokio::spawn(async move { store.listen(stop).await })
        };
        let sampler = self.settings.lag_metrics.map(|every| {
            let (runner, stop) = (self.clone(), cancel.child_token());
            tokio::spawn(async move { telemetry::sample(every, stop, || runner.status()).await })
        });
        let idle = Arc::new(Idle::default());
        let mut tasks = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        for projection in &self.projections {
            // The partition count, resolved once for the whole run.
            let count = self.partitions_of(projection.as_ref())?;
            let run = ProjectionRun::new(
                Arc::clone(&self.backend),
                Arc::clone(projection),
                count,
                self.settings.clone(),
                Arc::clone(&self.metrics),
            );
            let run =
                coordinator::run_projection(Arc::new(run), cancel.child_token(), Arc::clone(&idle));
            let id = tasks.spawn(run).id();
            names.insert(id, projection.name().to_owned());
        }

        tokio::pin!(shutdown);
        let mut first_error = None;
        loop {
            tokio::select! {
                () = &mut shutdown, if !cancel.is_cancelled() => {
                    tracing::info!(target: "pupsource::runner", "shutting down: committing the batches in flight");
                    cancel.cancel();
                }
                () = idle.changed.notified(), if !cancel.is_cancelled() => {
                    if !tasks.is_empty() && idle.count.load(Ordering::Acquire) >= tasks.len() {
                        tracing::info!(target: "pupsource::runner", "nothing left to run but halted partitions: stopping");
                        cancel.cancel();
                    }
                }
                joined = tasks.join_next_with_id() => {
                    let result = match joined {
                        None => break,
                        Some(Ok((_, result))) => result,
                        Some(Err(err)) => Err(Error::Panicked {
                            projection: names.get(&err.id()).cloned().unwrap_or_default(),
                            message: err.to_string(),
                        }),
                    };
                    match result {
                        Ok(()) => {}
                        // A halted partition: the other projections go on.
                        Err(err @ Error::Handler { .. }) => {
                            first_error.get_or_insert(err);
                        }
                        Err(err) => {
                            // Returned to the caller, who reports it: log it only for debugging.
                            tracing::debug!(target: "pupsource::runner", error = %err, "projection failed; stopping the others");
                            first_error.get_or_insert(err);
                            cancel.cancel();
                        }
                    }
                    if !tasks.is_empty() && idle.count.load(Ordering::Acquire) >= tasks.len() {
                        cancel.cancel();
                    }
                }
            }
        }
        cancel.cancel();
        let _ = listener.await;
        if let Some(sampler) = sampler {
            let _ = sampler.await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Validates the projection set (at least one, unique names), every partition count (1 to
    /// [`MAX_PARTITIONS`]), the assigned partition, the worker id, the heartbeat (10 ms to
    /// 1 h) and the poll interval (1 ms to 1 h), as [`Runner::run`] does before anything runs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> pupsource::Result<()> {
    /// # let store = pupsource::SqliteStore::connect("sqlite::memory:").await?;
    /// use std::time::Duration;
    /// # use std::sync::Arc;
    /// # use pupsource::projection::{Context, HandleFuture, Projection};
    /// # struct Noop;
    /// # impl Projection for Noop {
    /// #     fn name(&self) -> &str { "noop" }
    /// #     fn handle<'a>(&'a self, _: &'a pupsource::LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
    /// #         Box::pin(async { Ok(()) })
    /// #     }
    /// # }
    /// let runner = pupsource::Runner::new(store).projection(Arc::new(Noop));
    /// assert!(runner.check().is_ok());
    /// let err = runner.heartbeat(Duration::from_millis(5)).check().unwrap_err();
    /// assert_eq!(err.to_string(), "heartbeat of 5ms is out of range (10ms to 1h)");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoProjections`], [`Error::DuplicateProjection`], or [`Error::InvalidInput`]
    /// (partition count, partition key, worker id, heartbeat, poll interval).
    pub fn check(&self) -> Result<()> {
        if self.projections.is_empty() {
            return Err(Error::NoProjections);
        }
        if let Some(total) = self.settings.partitions {
            check_partition_count(total, None)?;
            if let Some(key) = self.settings.assigned.filter(|&key| key >= total) {
                return Err(InvalidInput::PartitionKey { key, total }.into());
            }
        }
        let id = &*self.settings.worker_id;
        let problem = if id.is_empty() {
            Some(FieldProblem::Empty)
        } else if id.len() > limits::MAX_WORKER_ID_LEN {
            Some(FieldProblem::TooLong { len: id.len(), max: limits::MAX_WORKER_ID_LEN })
        } else if id.contains('\0') {
            Some(FieldProblem::NulCharacter)
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(InvalidInput::WorkerId { id: id.to_owned(), problem }.into());
        }
        Interval::Heartbeat.check(self.settings.heartbeat)?;
        Interval::PollInterval.check(self.settings.poll_interval)?;
        let mut names = HashSet::new();
        for projection in &self.projections {
            if !names.insert(projection.name()) {
                return Err(Error::DuplicateProjection { name: projection.name().to_owned() });
            }
            self.partitions_of(projection.as_ref())?;
        }
        Ok(())
    }

    /// The partition count `projection` runs with, checked.
    fn partitions_of(&self, projection: &dyn Projection) -> Result<u32, InvalidInput> {
        // A refusal names the projection when the count is its own, not the override.
        let own = self.settings.partitions.is_none().then(|| projection.name());
        check_partition_count(self.settings.partition_count(projection), own)
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn Projection>> {
        self.projections.iter().find(|p| p.name() == name).ok_or_else(|| Error::UnknownProjection {
            name: name.to_owned(),
            known: self.projections.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The parked events of projection `name`, in log order.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`], or the store's errors.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>> {
        self.find(name)?;
        self.backend.parked(name).await
    }

    /// Hands the parked events of projection `name` to its handler again, in log order, each
    /// in a transaction that also removes it from the dead-letter table. Stops at the first
    /// failure. Run it while the projection is stopped. Returns how many were replayed.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`]; [`Error::InvalidInput`] for a partition count outside 1
    /// to [`MAX_PARTITIONS`]; [`Error::Handler`] for the first event that fails again; the
    /// store's errors.
    pub async fn replay_parked(&self, name: &str) -> Result<u64> {
        let projection = self.find(name)?;
        let count = self.partitions_of(projection.as_ref())?;
        let (mut replayed, progress) = (0, self.metrics.progress_of(name));
        for parked in self.backend.parked(name).await? {
            // Read before the batch takes a connection: a `sqlite::memory:` pool has only one.
            let event = self.backend.read_event(parked.position.global_position).await?;
            let mut batch = self.backend.begin_batch(None).await?;
            if let Some(event) = event.map(LogEvent::from) {
                let partition =
                    Partition { index: partition_of(event.partition_hash, count), count };
                let mut cx = Context::new(name, partition, event.position, batch.transaction());
                if let Err(source) = projection.handle(&event, &mut cx).await {
                    batch.rollback().await?;
                    return Err(Error::Handler {
                        projection: name.to_owned(),
                        partition,
                        position: event.position,
                        event_type: event.event_type.clone(),
                        attempts: 1,
                        source,
                    });
                }
            }
            batch.unpark(name, parked.position).await?;
            batch.commit().await?;
            progress.handled(1);
            replayed += 1;
        }
        Ok(replayed)
    }

    /// Resets projection `name` for a replay of the whole log: in one transaction, its
    /// [`Projection::reset`] hook clears its read model, and its checkpoints (every partition
    /// count) and parked events are deleted. Run it while the projection is stopped; the next
    /// run replays everything.
    ///
    /// # Errors
    /// [`Error::UnknownProjection`]; [`Error::InvalidInput`] for a partition count outside 1
    /// to [`MAX_PARTITIONS`], before anything is reset; [`Error::Reset`] if the reset hook
    /// fails; the store's errors.
    pub async fn rebuild(&self, name: &str) -> Result<()> {
        let projection = self.find(name)?;
        // The replay that follows would refuse the count: reset nothing then.
        self.partitions_of(projection.as_ref())?;
        let mut batch = self.backend.begin_batch(None).await?;
        let mut transaction = batch.transaction();
        if let Err(source) = projection.reset(&mut transaction).await {
            batch.rollback().await?;
            return Err(Error::Reset { projection: name.to_owned(), source });
        }
        batch.forget_projection(name).await?;
        batch.commit().await
    }

    /// Per projection and partition: checkpoint, lag, last error; and the read fence.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn status(&self) -> Result<Status> {
        status::status(self.backend.as_ref(), &self.projections).await
    }

    /// Whether a run follows the log or stops at its head.
    #[cfg(feature = "cli")]
    pub(crate) fn run_mode(&self) -> RunMode {
        self.settings.mode
    }

    /// Per projection, how many events of its scope are behind its checkpoints in the layout
    /// it runs with; every event of its scope when it never ran with that partition count.
    #[cfg(feature = "cli")]
    pub(crate) async fn backlog(&self) -> Result<Vec<(String, u64)>> {
        let mut backlog = Vec::with_capacity(self.projections.len());
        for projection in &self.projections {
            let (name, scope) = (projection.name(), projection.scope());
            let count = self.partitions_of(projection.as_ref())?;
            let rows = self.backend.checkpoints(name).await?;
            let mut starts: Vec<_> = rows
                .iter()
                .filter(|row| row.partition.count == count)
                .map(|row| (row.position, row.partition))
                .collect();
            if starts.is_empty() {
                starts.push((Position::START, Partition { index: 0, count: 1 }));
            }
            let mut behind = 0;
            for (after, partition) in starts {
                behind += self.backend.lag_after(after, &scope, partition).await?.0;
            }
            backlog.push((name.to_owned(), behind));
        }
        Ok(backlog)
    }
}

/// `count` if it is a valid partition count (1 to [`MAX_PARTITIONS`]); `projection` names
/// the projection whose own count it is.
fn check_partition_count(count: u32, projection: Option<&str>) -> Result<u32, InvalidInput> {
    if (1..=MAX_PARTITIONS).contains(&count) {
        Ok(count)
    } else {
        Err(InvalidInput::PartitionCount { count, projection: projection.map(str::to_owned) })
    }
}

/// A duration setting of the runner, refused outside its bounds before anything runs (by
/// [`Runner::check`], and by the CLI as it parses the flag).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Interval {
    /// [`Runner::heartbeat`]: 10 ms to 1 h. Below, renewals would flood the database;
    /// above, a dead worker's partitions would wait hours (a lease is three heartbeats).
    Heartbeat,
    /// [`Runner::poll_interval`]: 1 ms to 1 h. Above, a missed wake-up (SQLite has none
    /// across processes) would leave a projection looking stalled for hours.
    PollInterval,
}

impl Interval {
    /// `value` if it is within the bounds.
    pub(crate) fn check(self, value: Duration) -> Result<Duration, InvalidInput> {
        let (setting, min, max) = match self {
            Interval::Heartbeat => ("heartbeat", limits::MIN_HEARTBEAT, limits::MAX_HEARTBEAT),
            Interval::PollInterval => {
                ("poll interval", limits::MIN_POLL_INTERVAL, limits::MAX_POLL_INTERVAL)
            }
        };
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(InvalidInput::Interval { setting, value, min, max })
        }
    }
}

/// Host name, process id and a random suffix: unique among live processes.
fn default_worker_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}-{}", crate::process::host_name(), std::process::id(), &random[..8])
}

/// Completes on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let waits: Vec<_> = (1..=6).map(|a| retry.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(retry.backoff(u32::MAX), Duration::from_secs(1));
    }
}
