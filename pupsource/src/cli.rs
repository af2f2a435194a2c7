//! The command line of a pupsource binary, as `pupsource::main!()` emits it.
//!
//! ```text
//! app [run] [--database-url URL] [--connect-timeout 5s] [--workers N] [--projection NAME]...
//!           [--batch-size N] [--poll-interval 500ms] [--until-caught-up] [--worker-id ID]
//!           [--heartbeat 2s] [--on-error stop|park] [--retries N]
//!           [--partition-key K --total-partitions N]
//!           [--metrics-addr HOST:PORT [--lag-interval 15s]]      (feature `prometheus`)
//! app migrate | list | status [--json] | rebuild NAME | replay NAME | repair-restore
//! ```
//!
//! Every failure is an [`Error`], printed as one line on stderr (`error: …` with its causes)
//! with a non-zero exit code: 2 for bad arguments (the line names the flag), 1 for everything
//! else. Logging follows `RUST_LOG` (default `warn`).
//!
//! `status --json` prints one JSON document, for scripts and dashboards. Its field names are
//! stable (fields may be added, none renamed or removed); times are RFC 3339 strings:
//!
//! ```text
//! { "fence": null | { "blocking_pid": 4242 | null, "prepared": "gid" | null,
//!                     "age_seconds": 1.5 | null },
//!   "projections": [ { "name": "counter", "declared_partitions": 8,
//!                      "last_run_partitions": 8 | null, "parked": 0,
//!                      "partitions": [ { "partition": 0, "partition_count": 8,
//!                                        "checkpoint": 1200, "transaction_id": 0, "lag": 0,
//!                                        "oldest_unhandled_at": "…" | null,
//!                                        "updated_at": "…", "last_error": null,
//!                                        "owner": "host-42-…" | null, "epoch": 3 | null,
//!                                        "lease_until": "…" | null } ],
//!                      "workers": [ { "id": "…", "partition_count": 8, "started_at": "…",
//!                                     "heartbeat_at": "…", "expires_at": "…" } ] } ] }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{InvalidInput, Result};
use crate::partition::partition_of;
use crate::projection::{HandlerError, Projection};
use crate::runner::{
    ErrorPolicy, Interval, ProjectionProgress, RetryPolicy, RunMode, Runner, Status,
};
use crate::store::{ConnectOptions, Store};

/// The database used when neither `--database-url` nor `DATABASE_URL` is given: a SQLite file
/// in the working directory, created and migrated on first use.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:pupsource.db";

/// Why a command of the CLI failed. [`App::main`] prints it as one line, `error: ` and the
/// error with its causes, and exits with [`Error::exit_code`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line is not valid: clap's first paragraph (e.g. the missing arguments), on
    /// one line.
    #[error("{}", usage_line(.0))]
    Usage(clap::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// A flag's value was refused once the other flags were known (a `--partition-key`
    /// outside `--total-partitions`, an unknown `--projection`, an empty `--worker-id`).
    #[error("invalid value for `{flag}`")]
    Flag {
        /// The flag, e.g. `--partition-key`.
        flag: &'static str,
        /// Why it was refused.
        #[source]
        source: crate::Error,
    },
    /// Connecting, migrating, running or inspecting the projections failed.
    #[error(transparent)]
    Pupsource(#[from] crate::Error),
    /// `--metrics-addr`: the metrics endpoint could not be served there.
    #[cfg(feature = "prometheus")]
    #[error("cannot serve the metrics on {addr}")]
    Metrics {
        /// The address of `--metrics-addr`.
        addr: std::net::SocketAddr,
        /// What the exporter said.
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    /// A hook given to [`App::before_run`] or [`App::after_run`] failed.
    #[error("the `{hook}` hook failed")]
    Hook {
        /// `before_run` or `after_run`.
        hook: &'static str,
        /// What the hook returned.
        #[source]
        source: HandlerError,
    },
}

impl Error {
    /// The process's exit code for this error: 2 for bad arguments, 1 for everything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Usage(_) | Error::Flag { .. } => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Clap's first paragraph on one line, without its `error: ` (the CLI prints its own).
fn usage_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .collect();
    let first = first.join(" ");
    match first.strip_prefix("error: ").unwrap_or(&first) {
        "" => "invalid arguments (see --help)".to_owned(),
        first => format!("{first} (see --help)"),
    }
}

/// A hook around `run`: gets the configured runner (cheap to clone).
type Hook = Box<
    dyn Fn(Runner) -> Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>> + Send + Sync,
>;

/// The CLI of a pupsource binary, with optional hooks around `run`.
///
/// `pupsource::main!()` is `App::new().main()`. An application that seeds data before
/// running, or reports after, adds hooks:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     pupsource::cli::App::new()
///         .before_run(|runner| async move {
///             println!("running {} projections", runner.projections().len());
///             Ok(())
///         })
///         .main()
/// }
/// ```
#[derive(Default)]
pub struct App {
    before_run: Option<Hook>,
    after_run: Option<Hook>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("before_run", &self.before_run.is_some())
            .field("after_run", &self.after_run.is_some())
            .finish()
    }
}

#[derive(Debug, Parser)]
#[command(about = "Runs the projections of this binary over a pupsource event store")]
struct Cli {
    /// Database URL: `postgres://…` or `sqlite:file.db`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    database_url: String,

    /// How long to wait for the database to answer when connecting, e.g. `500ms`, `10s`.
    #[arg(long, env = "PUPSOURCE_CONNECT_TIMEOUT", default_value = "5s", global = true,
          value_name = "DURATION", value_parser = parse_connect_timeout)]
    connect_timeout: Duration,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run projections (the default).
    Run(RunArgs),
    /// Create the store's tables if they do not exist.
    Migrate,
    /// List the registered projections, with their declared partition count and the count
    /// they last ran with.
    List,
    /// Show each projection's partitions: checkpoint, lag, parked events, last error.
    Status {
        /// Print one JSON document with stable field names (see the README's Operations).
        #[arg(long)]
        json: bool,
    },
    /// Reset a projection (its checkpoints and, through its reset hook, its data) and replay
    /// the whole log into it.
    Rebuild {
        /// The projection.
        name: String,
    },
    /// Hand a projection's parked events to its handler again, in the partition layout it
    /// last ran with.
    Replay {
        /// The projection.
        name: String,
    },
    /// Rewrite the transaction ids of a PostgreSQL database restored or moved from another
    /// cluster, keeping the log order; run it before the application appends again.
    RepairRestore,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Partitions (workers) per projection, overriding each projection's own count.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::limits::MAX_PARTITIONS)))]
    workers: Option<u32>,
    /// Run only this projection (repeatable).
    #[arg(long = "projection", value_name = "NAME")]
    projections: Vec<String>,
    /// At most N events per batch transaction. Unset: 100 events whose handlers write through
    /// the transaction, the others uncounted (up to 100 ms per transaction).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: Option<u32>,
    /// Longest wait between polls of the log while idle, e.g. `500ms`, `2s` (1ms to 1h).
    #[arg(long, default_value = "500ms", value_parser = parse_poll_interval)]
    poll_interval: Duration,
    /// Stop once every partition has reached the head of the log.
    #[arg(long)]
    until_caught_up: bool,
    /// This process's id among the workers sharing the projections (default: host name,
    /// process id and a random suffix).
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
    /// How often this worker renews its partition leases; a worker silent for
    /// three heartbeats loses its partitions to the others (10ms to 1h).
    #[arg(long, default_value = "2s", value_parser = parse_heartbeat)]
    heartbeat: Duration,
    /// What to do with an event whose handler still fails after its retries: `stop` halts
    /// its partition (the others go on), `park` sets it and the later events of its
    /// aggregate aside in the dead-letter table (see `replay`) and goes on.
    #[arg(long, value_enum, default_value_t = OnError::Stop)]
    on_error: OnError,
    /// How many times a failing handler is retried after its first attempt (waits of 100ms,
    /// doubling up to 10s).
    #[arg(long, value_name = "N", default_value_t = RetryPolicy::default().max_attempts - 1,
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    retries: u32,
    /// Static assignment: run only partition K (of --total-partitions) of every projection.
    #[arg(long, value_name = "K", requires = "total_partitions")]
    partition_key: Option<u32>,
    /// Static assignment: the partition count every process of the projections uses.
    #[arg(long, value_name = "N", requires = "partition_key", conflicts_with = "workers",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::limits::MAX_PARTITIONS)))]
    total_partitions: Option<u32>,
    /// Serve the metrics (`pupsource::runner::telemetry`) as Prometheus text on this address,
    /// e.g. `127.0.0.1:9464`, at any path.
    #[cfg(feature = "prometheus")]
    #[arg(long, value_name = "HOST:PORT", env = "PUPSOURCE_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// With `--metrics-addr`: how often the lag gauges are refreshed (each refresh counts the
    /// events behind every checkpoint).
    #[cfg(feature = "prometheus")]
    #[arg(long, default_value = "15s", requires = "metrics_addr", value_parser = parse_lag_interval)]
    lag_interval: Duration,
}

/// `--on-error`: [`ErrorPolicy`] on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnError {
    /// [`ErrorPolicy::Stop`].
    Stop,
    /// [`ErrorPolicy::Park`].
    Park,
}

impl From<OnError> for ErrorPolicy {
    fn from(on_error: OnError) -> Self {
        match on_error {
            OnError::Stop => ErrorPolicy::Stop,
            OnError::Park => ErrorPolicy::Park,
        }
    }
}

/// Parses `--connect-timeout`: a positive duration.
fn parse_connect_timeout(text: &str) -> std::result::Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("the connect timeout must be positive".to_owned()),
        timeout => Ok(timeout),
    }
}

/// Parses `--lag-interval`: a positive duration.
#[cfg(feature = "prometheus")]
fn parse_lag_interval(text: &str) -> std::result::Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("the lag interval must be positive".to_owned()),
        every => Ok(every),
    }
}

/// Parses `--poll-interval`: a duration within [`Runner::poll_interval`]'s bounds.
fn parse_poll_interval(text: &str) -> std::result::Result<Duration, String> {
    Interval::PollInterval.check(parse_duration(text)?).map_err(|e| e.to_string())
}

/// Parses `--heartbeat`: a duration within [`Runner::heartbeat`]'s bounds.
fn parse_heartbeat(text: &str) -> std::result::Result<Duration, String> {
    Interval::Heartbeat.check(parse_duration(text)?).map_err(|e| e.to_string())
}

/// Parses `250ms`, `2s`, `1m` or `1h`.
fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration like `500ms` or `2s`"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("`{text}` is not a duration like `500ms` or `2s` (units: ms, s, m, h)")),
    }
}

impl App {
    /// The CLI with no hooks.
    pub fn new() -> Self {
        App::default()
    }

    /// Runs `hook` after connecting and migrating, before `run` starts the projections.
    pub fn before_run<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Runner) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.before_run = Some(Box::new(move |runner| Box::pin(hook(runner))));
        self
    }

    /// Runs `hook` after `run` stopped cleanly (caught up, or Ctrl-C / SIGTERM).
    pub fn after_run<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Runner) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.after_run = Some(Box::new(move |runner| Box::pin(hook(runner))));
        self
    }

    /// Parses the process's arguments, runs the command, and returns the exit code. An
    /// [`Error`] is printed as one line on stderr.
    pub fn main(self) -> ExitCode {
        match self.try_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}", one_line(&err));
                err.exit_code()
            }
        }
    }

    fn try_main(self) -> std::result::Result<(), Error> {
        let cli = match Cli::try_parse() {
            Ok(cli) => cli,
            // --help, --version
            Err(err) if !err.use_stderr() => {
                let _ = err.print();
                return Ok(());
            }
            Err(err) => return Err(Error::Usage(err)),
        };
        init_tracing();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        runtime.block_on(self.execute(cli))
    }

    async fn execute(&self, cli: Cli) -> std::result::Result<(), Error> {
        let projections = crate::registry::registered()?;
        let options = ConnectOptions::default().timeout(cli.connect_timeout);
        let store = Store::connect_with(&cli.database_url, options).await?;
        // `migrate` refuses a database that needs the repair; the repair migrates itself.
        if !matches!(cli.command, Some(Command::RepairRestore)) {
            store.migrate().await?;
        }
        match cli.command {
            None => self.run(store, projections, cli.run).await,
            Some(Command::Run(args)) => self.run(store, projections, args).await,
            Some(Command::Migrate) => {
                println!("{} database is migrated", store.backend_name());
                Ok(())
            }
            Some(Command::List) => {
                for projection in &projections {
                    let declared = partitions(projection.partitions());
                    match last_run(&store, projection.name()).await? {
                        Some(count) => println!(
                            "{}\t{declared}; last run with {}",
                            projection.name(),
                            partitions(count)
                        ),
                        None => println!("{}\t{declared}; not run yet", projection.name()),
                    }
                }
                Ok(())
            }
            Some(Command::Status { json }) => {
                let runner = Runner::with_projections(store, projections);
                let status = runner.status().await?;
                if json {
                    println!("{}", status_json(&runner, &status));
                } else {
                    print_status(&status);
                }
                Ok(())
            }
            Some(Command::Rebuild { name }) => {
                let runner = Runner::with_projections(store, projections).until_caught_up();
                runner.rebuild(&name).await?;
                let runner = runner.only(std::slice::from_ref(&name))?;
                with_progress(&runner, runner.run()).await?;
                println!("rebuilt `{name}`");
                Ok(())
            }
            Some(Command::Replay { name }) => {
                let mut runner = Runner::with_projections(store.clone(), projections);
                // The handler sees the partitions the projection runs with, not the declared
                // count it may have been run without.
                if let Some(count) = last_run(&store, &name).await? {
                    runner = runner.partitions(count);
                }
                let count = runner.partition_count(&name).unwrap_or(1);
                let mut touched = std::collections::BTreeSet::new();
                let parked = runner.parked(&name).await?;
                for parked in &parked {
                    let stored =
                        store.backend().read_event(parked.position.global_position).await?;
                    touched.extend(stored.map(|event| partition_of(event.partition_hash, count)));
                }
                let backlog = vec![(name.clone(), parked.len() as u64)];
                let replay = runner.replay_parked(&name);
                let replayed = tokio::select! {
                    replayed = replay => replayed?,
                    never = report_progress(&runner, backlog, false) => match never {},
                };
                let events = plural(replayed, "parked event", "parked events");
                if touched.is_empty() {
                    println!("replayed {events} of `{name}`");
                } else {
                    let list: Vec<String> = touched.iter().map(u32::to_string).collect();
                    let word = if touched.len() == 1 { "partition" } else { "partitions" };
                    println!(
                        "replayed {events} of `{name}` ({word} {} of {count})",
                        list.join(", ")
                    );
                }
                Ok(())
            }
            Some(Command::RepairRestore) => {
                println!("{}", store.repair_restore().await?);
                Ok(())
            }
        }
    }

    async fn run(
        &self,
        store: Store,
        projections: Vec<Arc<dyn Projection>>,
        args: RunArgs,
    ) -> std::result::Result<(), Error> {
        let retry = RetryPolicy { max_attempts: args.retries + 1, ..RetryPolicy::default() };
        let mut runner = Runner::with_projections(store, projections)
            .poll_interval(args.poll_interval)
            .heartbeat(args.heartbeat)
            .on_error(args.on_error.into())
            .retry(retry);
        if !args.projections.is_empty() {
            runner = runner
                .only(&args.projections)
                .map_err(|source| Error::Flag { flag: "--projection", source })?;
        }
        if let Some(batch_size) = args.batch_size {
            runner = runner.batch_size(batch_size as usize);
        }
        if let Some(workers) = args.workers {
            runner = runner.partitions(workers);
        }
        if args.until_caught_up {
            runner = runner.until_caught_up();
        }
        if let Some(id) = args.worker_id {
            runner = runner.worker_id(id);
        }
        if let (Some(key), Some(total)) = (args.partition_key, args.total_partitions) {
            runner = runner.assign(key, total);
        }
        #[cfg(feature = "prometheus")]
        if let Some(addr) = args.metrics_addr {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()
                .map_err(|source| Error::Metrics { addr, source })?;
            runner = runner.lag_metrics(args.lag_interval);
        }
        // Bad settings fail before the hook runs (it may seed data, print, …).
        runner.check().map_err(|source| match flag_of(&source) {
            Some(flag) => Error::Flag { flag, source },
            None => Error::Pupsource(source),
        })?;
        if let Some(hook) = &self.before_run {
            hook(runner.clone())
                .await
                .map_err(|source| Error::Hook { hook: "before_run", source })?;
        }
        with_progress(&runner, runner.run()).await?;
        if let Some(hook) = &self.after_run {
            hook(runner.clone())
                .await
                .map_err(|source| Error::Hook { hook: "after_run", source })?;
        }
        Ok(())
    }
}

/// Runs `work`, reporting the progress of every projection that starts behind: on a terminal
/// a bar per projection (feature `progress`), otherwise an `INFO` log line every 5 s; and,
/// following the log, once when each reaches its head. `replay` reports the same way.
async fn with_progress(runner: &Runner, work: impl Future<Output = Result<()>>) -> Result<()> {
    let backlog = runner.backlog().await?;
    let following = runner.run_mode() == RunMode::Continuous;
    tokio::select! {
        result = work => result,
        never = report_progress(runner, backlog, following) => match never {},
    }
}

/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What [`with_progress`] reports of one projection.
struct Tracked {
    name: String,
    /// Events behind its checkpoints when the run started (grown if more arrived).
    total: u64,
    /// When and where its rate was last measured.
    since: (Instant, u64),
    caught_up: bool,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

/// Reports until dropped (it never returns).
async fn report_progress(
    runner: &Runner,
    backlog: Vec<(String, u64)>,
    following: bool,
) -> std::convert::Infallible {
    use std::io::IsTerminal as _;
    let terminal = std::io::stderr().is_terminal();
    #[cfg(feature = "progress")]
    let bars = indicatif::MultiProgress::new();
    let mut tracked: Vec<Tracked> = backlog
        .into_iter()
        .map(|(name, total)| Tracked {
            #[cfg(feature = "progress")]
            bar: (terminal && total > 0).then(|| bars.add(progress_bar(&name, total))),
            since: (Instant::now(), 0),
            caught_up: false,
            name,
            total,
        })
        .collect();
    for t in tracked.iter().filter(|t| t.total > 0) {
        tracing::info!(target: "pupsource::cli", projection = %t.name, behind = t.total, "catching up");
    }
    const TICK: Duration = Duration::from_millis(200);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    loop {
        ticks.tick().await;
        for t in &mut tracked {
            if let Some(progress) = runner.metrics().projection(&t.name) {
                t.update(&progress, terminal, following);
            }
        }
    }
}

impl Tracked {
    /// Shows `progress`: on the bar, or in a log line every [`LOG_EVERY`] (not on a
    /// terminal); and once, following the log, that the projection caught up.
    fn update(&mut self, progress: &ProjectionProgress, terminal: bool, following: bool) {
        let done = progress.events_handled();
        self.total = self.total.max(done);
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_length(self.total);
            bar.set_position(done);
        }
        if self.caught_up {
            return;
        }
        if let Some(at) = progress.caught_up_at() {
            self.caught_up = true;
            #[cfg(feature = "progress")]
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            if following {
                let name = &self.name;
                eprintln!(
                    "{name}: caught up at position {at}; waiting for new events, Ctrl-C to stop"
                );
            }
        } else if !terminal && self.total > 0 && self.since.0.elapsed() >= LOG_EVERY {
            let (then, before) = std::mem::replace(&mut self.since, (Instant::now(), done));
            let rate = (done - before) as f64 / then.elapsed().as_secs_f64().max(1e-3);
            let left = self.total - done;
            let eta = (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate));
            tracing::info!(target: "pupsource::cli", projection = %self.name, done, total = self.total, rate = format!("{rate:.0}/s"), eta = ?eta, "catching up");
        }
    }
}

/// A bar for one projection on a terminal.
#[cfg(feature = "progress")]
fn progress_bar(name: &str, total: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:30}] {human_pos}/{human_len} events, {per_sec:0}, {eta} to go",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    indicatif::ProgressBar::new(total).with_style(style).with_prefix(name.to_owned())
}

/// The flag that set what [`Runner::check`] refused, where a flag did (clap checks the others
/// as it parses them).
fn flag_of(err: &crate::Error) -> Option<&'static str> {
    match err {
        crate::Error::InvalidInput(InvalidInput::PartitionKey { .. }) => Some("--partition-key"),
        crate::Error::InvalidInput(InvalidInput::WorkerId { .. }) => Some("--worker-id"),
        _ => None,
    }
}

/// `n` and the noun that goes with it: `1 parked event`, `2 parked events`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `1 partition`, `4 partitions`.
fn partitions(count: u32) -> String {
    plural(u64::from(count), "partition", "partitions")
}

/// The partition count projection `name` last ran with: that of its most recently written
/// checkpoint (a new count's rows are created after the old count's last write); `None` if
/// it never ran.
async fn last_run(store: &Store, name: &str) -> Result<Option<u32>> {
    let rows = store.backend().checkpoints(name).await?;
    Ok(latest_count(rows.iter().map(|row| (row.updated_at, row.partition.count))))
}

/// The count of the latest of (written at, partition count) rows.
fn latest_count(rows: impl Iterator<Item = (OffsetDateTime, u32)>) -> Option<u32> {
    rows.max_by_key(|&(at, _)| at).map(|(_, count)| count)
}

/// A time in a JSON document: RFC 3339.
fn rfc3339(at: OffsetDateTime) -> Value {
    at.format(&Rfc3339).map_or(Value::Null, Value::String)
}

/// `status --json`: the document the module docs describe.
fn status_json(runner: &Runner, status: &Status) -> Value {
    let fence = status.fence.as_ref().map(|fence| {
        json!({
            "blocking_pid": fence.blocking_pid,
            "prepared": fence.prepared,
            "age_seconds": fence.age.map(|age| age.as_secs_f64()),
        })
    });
    let projections: Vec<Value> = runner
        .projections()
        .iter()
        .zip(&status.projections)
        .map(|(projection, p)| {
            let partitions: Vec<Value> = p
                .partitions
                .iter()
                .map(|part| {
                    let lease = part.lease.as_ref();
                    json!({
                        "partition": part.partition.index,
                        "partition_count": part.partition.count,
                        "checkpoint": part.checkpoint.global_position,
                        "transaction_id": part.checkpoint.transaction_id,
                        "lag": part.lag,
                        "oldest_unhandled_at": part.oldest_unhandled.map(rfc3339),
                        "updated_at": rfc3339(part.updated_at),
                        "last_error": part.last_error,
                        "owner": lease.map(|l| &l.owner),
                        "epoch": lease.map(|l| l.epoch),
                        "lease_until": lease.and_then(|l| l.until).map(rfc3339),
                    })
                })
                .collect();
            let workers: Vec<Value> = p
                .workers
                .iter()
                .map(|w| {
                    json!({
                        "id": w.id,
                        "partition_count": w.partition_count,
                        "started_at": rfc3339(w.started_at),
                        "heartbeat_at": rfc3339(w.heartbeat_at),
                        "expires_at": rfc3339(w.expires_at),
                    })
                })
                .collect();
            let last_run = latest_count(
                p.partitions.iter().map(|part| (part.updated_at, part.partition.count)),
            );
            json!({
                "name": p.name,
                "declared_partitions": projection.partitions(),
                "last_run_partitions": last_run,
                "parked": p.parked,
                "partitions": partitions,
                "workers": workers,
            })
        })
        .collect();
    json!({ "fence": fence, "projections": projections })
}

fn print_status(status: &Status) {
    if let Some(fence) = &status.fence {
        let who = match (&fence.prepared, fence.blocking_pid) {
            (Some(gid), _) => format!("prepared transaction `{gid}`"),
            (None, Some(pid)) => format!("backend pid {pid}"),
            (None, None) => "an unnamed transaction".to_owned(),
        };
        let age =
            fence.age.map_or(String::new(), |age| format!(" ({:.1}s old)", age.as_secs_f64()));
        println!("read fence: oldest transaction in flight in this database is {who}{age}");
    }
    for projection in &status.projections {
        println!("{} ({} parked)", projection.name, projection.parked);
        if projection.partitions.is_empty() {
            println!("  not started");
        }
        for p in &projection.partitions {
            let lease = p.lease.as_ref().map_or(String::new(), |lease| {
                let until = lease.until.map_or(String::new(), |t| format!(" until {t}"));
                format!("  owner {} epoch {}{until}", lease.owner, lease.epoch)
            });
            println!(
                "  partition {:>7}  checkpoint {:>14}  lag {:>8}{lease}{}",
                p.partition.to_string(),
                p.checkpoint.to_string(),
                p.lag,
                p.last_error.as_deref().map_or(String::new(), |e| format!("  last error: {e}")),
            );
        }
        for worker in &projection.workers {
            println!(
                "  worker {} ({} partitions)  last heartbeat {}  expires {}",
                worker.id, worker.partition_count, worker.heartbeat_at, worker.expires_at
            );
        }
    }
}

/// An error and its causes on one line.
fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_one_line_with_exit_code_2() {
        // Clap lists the missing arguments one per line, after a usage block.
        let parsed = Cli::try_parse_from(["app", "--partition-key", "1"]);
        let err = Error::Usage(parsed.expect_err("a key without a count"));
        assert_eq!(
            one_line(&err),
            "the following required arguments were not provided: --total-partitions <N> \
             (see --help)"
        );
        assert_eq!(err.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn a_failed_hook_is_named_with_its_cause_and_exit_code_1() {
        let err = Error::Hook { hook: "after_run", source: "mail server busy".into() };
        assert_eq!(one_line(&err), "the `after_run` hook failed: mail server busy");
        assert_eq!(err.exit_code(), ExitCode::FAILURE);
    }

    #[test]
    fn a_library_error_reads_as_itself_with_exit_code_1() {
        let err = Error::from(crate::Error::NoProjections);
        assert_eq!(one_line(&err), crate::Error::NoProjections.to_string());
        assert_eq!(err.exit_code(), ExitCode::FAILURE);
    }
}
