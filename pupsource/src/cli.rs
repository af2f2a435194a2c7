//! The command line of a pupsource binary, as `pupsource::main!()` emits it.
//!
//! ```text
//! app [run] [--database-url URL] [--workers N] [--projection NAME]... [--batch-size N]
//!           [--poll-interval 500ms] [--until-caught-up] [--worker-id ID] [--heartbeat 2s]
//!           [--partition-key K --total-partitions N]
//! app migrate | list | status | rebuild NAME | replay NAME | repair-restore
//! ```
//!
//! Every failure is an [`Error`], printed as one line on stderr (`error: …` with its causes)
//! with a non-zero exit code: 2 for bad arguments, 1 for everything else. Logging follows
//! `RUST_LOG` (default `warn`).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::Result;
use crate::projection::{HandlerError, Projection};
use crate::runner::{Interval, Runner};
use crate::store::Store;

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
    /// Connecting, migrating, running or inspecting the projections failed.
    #[error(transparent)]
    Pupsource(#[from] crate::Error),
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
            Error::Usage(_) => ExitCode::from(2),
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
    /// List the registered projections.
    List,
    /// Show each projection's partitions: checkpoint, lag, parked events, last error.
    Status,
    /// Reset a projection (its checkpoints and, through its reset hook, its data) and replay
    /// the whole log into it.
    Rebuild {
        /// The projection.
        name: String,
    },
    /// Hand a projection's parked events to its handler again.
    Replay {
        /// The projection.
        name: String,
    },
    /// Rewrite the transaction ids of a PostgreSQL database restored or moved from another
    /// cluster, keeping the log order; run it before the application appends again.
    RepairRestore,
}

#[derive(Debug, Args, Default)]
struct RunArgs {
    /// Partitions (workers) per projection, overriding each projection's own count.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::limits::MAX_PARTITIONS)))]
    workers: Option<u32>,
    /// Run only this projection (repeatable).
    #[arg(long = "projection", value_name = "NAME")]
    projections: Vec<String>,
    /// Events per batch transaction.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
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
    /// Static assignment: run only partition K (of --total-partitions) of every projection.
    #[arg(long, value_name = "K", requires = "total_partitions")]
    partition_key: Option<u32>,
    /// Static assignment: the partition count every process of the projections uses.
    #[arg(long, value_name = "N", requires = "partition_key", conflicts_with = "workers",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::limits::MAX_PARTITIONS)))]
    total_partitions: Option<u32>,
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
        let store = Store::connect(&cli.database_url).await?;
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
                    println!("{}\t{} partitions", projection.name(), projection.partitions());
                }
                Ok(())
            }
            Some(Command::Status) => {
                Ok(print_status(&Runner::with_projections(store, projections)).await?)
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
                let replayed =
                    Runner::with_projections(store, projections).replay_parked(&name).await?;
                println!("replayed {replayed} parked events of `{name}`");
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
        let mut runner = Runner::with_projections(store, projections)
            .batch_size(args.batch_size as usize)
            .poll_interval(args.poll_interval)
            .heartbeat(args.heartbeat);
        if !args.projections.is_empty() {
            runner = runner.only(&args.projections)?;
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
        // Bad settings fail before the hook runs (it may seed data, print, …).
        runner.check()?;
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

/// Runs `work`, printing progress on stderr every second while events are being handled.
async fn with_progress(runner: &Runner, work: impl Future<Output = Result<()>>) -> Result<()> {
    let metrics = runner.metrics();
    let progress = async {
        let mut printed = metrics.events_handled();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let handled = metrics.events_handled();
            if handled != printed {
                eprintln!("… {handled} events handled");
                printed = handled;
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = progress => Ok(()),
    }
}

async fn print_status(runner: &Runner) -> Result<()> {
    let status = runner.status().await?;
    if let Some(fence) = status.fence {
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
    Ok(())
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
