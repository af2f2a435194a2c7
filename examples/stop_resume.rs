//! Stopping and resuming: a projection picks up exactly after its checkpoint, however often it
//! is stopped, with no event skipped and none handled twice.
//!
//! One binary, three modes, over `pupsource-stop-resume.db` in the working directory (or
//! `DATABASE_URL`):
//!
//! - `append N` appends N `UserCreated` events;
//! - `process` runs the `reliable_projection` until it has caught up with the log, printing
//!   each event it handles; `--stop-after N` stops it once it has handled N events, as Ctrl-C
//!   would: batches in flight finish (so a few more events may be handled) and their
//!   checkpoints are saved;
//! - `status` shows the projection's checkpoint and how many events it has still to handle.
//!
//! ```text
//! cargo run --example stop_resume -- append 10
//! cargo run --example stop_resume -- process --stop-after 4
//! cargo run --example stop_resume -- status
//! cargo run --example stop_resume -- process
//! cargo run --example stop_resume -- append 5
//! cargo run --example stop_resume -- process
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pupsource::runner::{PartitionStatus, Runner};
use pupsource::{Context, DomainEvent, Envelope, ExpectedVersion, Handle, HandlerResult, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize, pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserCreated {
    name: String,
}

#[pupsource::projection(events(UserCreated))]
#[derive(Default)]
struct ReliableProjection {
    handled: AtomicU64,
    /// `--stop-after`: the handler asks the runner to stop once it has handled this many.
    stop_after: Option<u64>,
    stop: Notify,
}

impl Handle<UserCreated> for ReliableProjection {
    async fn handle(&self, event: Envelope<UserCreated>, cx: &mut Context<'_>) -> HandlerResult {
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        println!("processed #{n} at position {}: {}", cx.position(), event.name);
        if self.stop_after == Some(n) {
            self.stop.notify_one();
        }
        Ok(())
    }
}

enum Mode {
    Append(u64),
    Process { stop_after: Option<u64> },
    Status,
}

const USAGE: &str = "usage: stop_resume append N | process [--stop-after N] | status";

fn parse(args: &[String]) -> Option<Mode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["append", n] => n.parse().ok().map(Mode::Append),
        ["process"] => Some(Mode::Process { stop_after: None }),
        ["process", "--stop-after", n] => {
            n.parse().ok().filter(|&n| n > 0).map(|n| Mode::Process { stop_after: Some(n) })
        }
        ["status"] => Some(Mode::Status),
        _ => None,
    }
}

/// The projection's one partition, if it has run at all.
async fn checkpoint(runner: &Runner) -> pupsource::Result<Option<PartitionStatus>> {
    let status = runner.status().await?;
    Ok(status.projections.into_iter().next().and_then(|p| p.partitions.into_iter().next()))
}

async fn append(store: &Store, count: u64) -> pupsource::Result<()> {
    let mut last = None;
    for i in 1..=count {
        let id = uuid::Uuid::now_v7().to_string();
        let event = UserCreated { name: format!("user {i} of {count}") }.to_event(&id)?;
        let appended = store.append_and_commit(ExpectedVersion::NoStream, &[event]).await?;
        last = appended.positions.last().copied();
    }
    match last {
        Some(last) => println!("appended {count} events, the last at position {last}"),
        None => println!("appended no event"),
    }
    Ok(())
}

async fn process(store: Store, stop_after: Option<u64>) -> pupsource::Result<()> {
    let projection = Arc::new(ReliableProjection { stop_after, ..ReliableProjection::default() });
    let mut runner = Runner::new(store).projection(projection.clone()).until_caught_up();
    if stop_after.is_some() {
        // One event per batch, so that the stop takes effect between events: a batch in
        // flight always finishes, and commits its checkpoint, before the runner returns.
        runner = runner.batch_size(1);
    }
    match checkpoint(&runner).await? {
        Some(p) => println!("resuming after checkpoint {}", p.checkpoint),
        None => println!("starting from the beginning of the log"),
    }

    let shutdown = async {
        tokio::select! {
            () = projection.stop.notified() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    runner.run_until(shutdown).await?;

    let handled = projection.handled.load(Ordering::Relaxed);
    match checkpoint(&runner).await? {
        Some(p) => println!(
            "processed {handled} events in this run; checkpoint {}, {} events to go",
            p.checkpoint, p.lag
        ),
        None => println!("processed {handled} events in this run"),
    }
    Ok(())
}

async fn status(store: Store) -> pupsource::Result<()> {
    let runner = Runner::new(store).projection(Arc::new(ReliableProjection::default()));
    match checkpoint(&runner).await? {
        Some(p) => println!(
            "reliable_projection: checkpoint {}, {} events to go{}",
            p.checkpoint,
            p.lag,
            p.last_error.map(|e| format!(", last error: {e}")).unwrap_or_default()
        ),
        None => println!("reliable_projection: not started"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = parse(&args) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite:pupsource-stop-resume.db".into());
    let result = async {
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        match mode {
            Mode::Append(count) => append(&store, count).await,
            Mode::Process { stop_after } => process(store, stop_after).await,
            Mode::Status => status(store).await,
        }
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
