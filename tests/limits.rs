//! Limits are checked where the API takes them, with a typed error naming what is wrong,
//! before anything runs: partition counts (the runner's override, a hand-written
//! `Projection::partitions`, a static assignment), the heartbeat and the poll interval; and the
//! CLI refuses each bad value naming its own flag.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pupsource::projection::{Context, HandleFuture, Projection};
use pupsource::{Error, InvalidInput, LogEvent, Runner};

/// A hand-written projection with any partition count.
struct Parts(u32);

impl Projection for Parts {
    fn name(&self) -> &str {
        "parts"
    }

    fn partitions(&self) -> u32 {
        self.0
    }

    fn handle<'a>(&'a self, _: &'a LogEvent, _: &'a mut Context<'_>) -> HandleFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

async fn runner(partitions: u32) -> Runner {
    Runner::new(common::sqlite_memory().await).projection(Arc::new(Parts(partitions)))
}

#[tokio::test]
async fn runner_check_refuses_each_bad_limit_with_its_message() {
    let ok = runner(2).await;
    let ms = Duration::from_millis;
    let cases = [
        (
            runner(0).await,
            "invalid partition count 0 of projection `parts`: a projection has 1 to 1024 partitions",
        ),
        (
            runner(1025).await,
            "invalid partition count 1025 of projection `parts`: a projection has 1 to 1024 partitions",
        ),
        (
            runner(u32::MAX).await,
            "invalid partition count 4294967295 of projection `parts`: a projection has 1 to 1024 partitions",
        ),
        (
            ok.clone().partitions(0),
            "invalid partition count 0: a projection has 1 to 1024 partitions",
        ),
        (
            ok.clone().partitions(1025),
            "invalid partition count 1025: a projection has 1 to 1024 partitions",
        ),
        (
            ok.clone().assign(0, 0),
            "invalid partition count 0: a projection has 1 to 1024 partitions",
        ),
        (
            ok.clone().assign(3, 5000),
            "invalid partition count 5000: a projection has 1 to 1024 partitions",
        ),
        (ok.clone().heartbeat(Duration::ZERO), "heartbeat of 0ms is out of range (10ms to 1h)"),
        (ok.clone().heartbeat(ms(9)), "heartbeat of 9ms is out of range (10ms to 1h)"),
        (
            ok.clone().heartbeat(Duration::from_secs(3601)),
            "heartbeat of 3601s is out of range (10ms to 1h)",
        ),
        (
            ok.clone().heartbeat(Duration::from_secs(u64::MAX)),
            "heartbeat of 18446744073709551615s is out of range (10ms to 1h)",
        ),
        (
            ok.clone().heartbeat(Duration::MAX),
            "heartbeat of 18446744073709551615.999999999s is out of range (10ms to 1h)",
        ),
        (
            ok.clone().poll_interval(Duration::ZERO),
            "poll interval of 0ms is out of range (1ms to 1h)",
        ),
        (
            ok.clone().poll_interval(Duration::from_micros(500)),
            "poll interval of 500µs is out of range (1ms to 1h)",
        ),
        (
            ok.clone().poll_interval(Duration::from_secs(7200)),
            "poll interval of 2h is out of range (1ms to 1h)",
        ),
    ];
    for (runner, expected) in cases {
        let err = runner.check().expect_err(expected);
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert_eq!(err.to_string(), expected);
    }

    // The typed fields, and the bounds themselves are accepted.
    let err = runner(1025).await.check().expect_err("refused");
    assert!(matches!(
        err,
        Error::InvalidInput(InvalidInput::PartitionCount { count: 1025, projection: Some(ref p) }) if p == "parts"
    ));
    let err = ok.clone().heartbeat(ms(9)).check().expect_err("refused");
    assert!(matches!(
        err,
        Error::InvalidInput(InvalidInput::Interval { setting: "heartbeat", value, min, max })
            if value == ms(9) && min == ms(10) && max == Duration::from_secs(3600)
    ));
    for runner in [
        runner(1).await,
        runner(1024).await,
        ok.clone().partitions(1024),
        ok.clone().assign(1023, 1024),
        ok.clone().heartbeat(ms(10)).poll_interval(ms(1)),
        ok.clone().heartbeat(Duration::from_secs(3600)).poll_interval(Duration::from_secs(3600)),
    ] {
        runner.check().expect("within the limits");
    }
}

/// A bad count is refused by every entry point that resolves one, before it touches anything:
/// a run creates no checkpoint row, a rebuild resets nothing, a replay replays nothing.
#[tokio::test]
async fn bad_partition_counts_are_refused_before_anything_runs() {
    let good = runner(2).await.until_caught_up();
    good.run_until(std::future::pending()).await.expect("a run with 2 partitions");
    let checkpoints = |status: pupsource::runner::Status| {
        status.projections[0].partitions.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(checkpoints(good.status().await.expect("status")), ["0/2", "1/2"]);

    let expected = "invalid partition count 2000: a projection has 1 to 1024 partitions";
    let bad = good.clone().partitions(2000);
    let err = bad.run_until(std::future::pending()).await.expect_err("run");
    assert_eq!(err.to_string(), expected);
    let err = bad.rebuild("parts").await.expect_err("rebuild");
    assert_eq!(err.to_string(), expected);
    let err = bad.replay_parked("parts").await.expect_err("replay");
    assert_eq!(err.to_string(), expected);
    assert_eq!(
        checkpoints(good.status().await.expect("status")),
        ["0/2", "1/2"],
        "no checkpoint row was created or deleted"
    );
}

/// Runs the `counter` example with `args` in `dir`; returns its exit code and stderr.
fn counter(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::example_binary("counter"))
        .current_dir(dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run the counter example");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Each refusal names its own flag and the limit, on one line, with exit code 2; values at the
/// limits run.
#[test]
fn cli_refuses_each_bad_limit_naming_its_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, expected) in [
        (
            &["--heartbeat", "0ms"][..],
            "error: invalid value '0ms' for '--heartbeat <HEARTBEAT>': heartbeat of 0ms is out of range (10ms to 1h) (see --help)",
        ),
        (
            &["--heartbeat", "9ms"],
            "error: invalid value '9ms' for '--heartbeat <HEARTBEAT>': heartbeat of 9ms is out of range (10ms to 1h) (see --help)",
        ),
        (
            &["--heartbeat", "61m"],
            "error: invalid value '61m' for '--heartbeat <HEARTBEAT>': heartbeat of 61m is out of range (10ms to 1h) (see --help)",
        ),
        (
            &["--heartbeat", "18446744073709551615m"],
            "error: invalid value '18446744073709551615m' for '--heartbeat <HEARTBEAT>': heartbeat of 18446744073709551615s is out of range (10ms to 1h) (see --help)",
        ),
        (
            &["--poll-interval", "0ms"],
            "error: invalid value '0ms' for '--poll-interval <POLL_INTERVAL>': poll interval of 0ms is out of range (1ms to 1h) (see --help)",
        ),
        (
            &["--poll-interval", "2h"],
            "error: invalid value '2h' for '--poll-interval <POLL_INTERVAL>': poll interval of 2h is out of range (1ms to 1h) (see --help)",
        ),
        (
            &["--workers", "1025"],
            "error: invalid value '1025' for '--workers <WORKERS>': 1025 is not in 1..=1024 (see --help)",
        ),
        (
            &["--partition-key", "0", "--total-partitions", "0"],
            "error: invalid value '0' for '--total-partitions <N>': 0 is not in 1..=1024 (see --help)",
        ),
    ] {
        let (code, stderr) = counter(dir.path(), args);
        assert_eq!((code, stderr.trim_end()), (Some(2), expected), "{args:?}");
    }
    let (code, stderr) =
        counter(dir.path(), &["--until-caught-up", "--heartbeat", "1h", "--poll-interval", "1ms"]);
    assert_eq!(code, Some(0), "{stderr}");
}
