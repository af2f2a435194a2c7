//! The examples' binaries, run as a user runs them. The counter example: its binary, on SQLite (the default database
//! file in the working directory) and on PostgreSQL; its printed totals are checked against
//! counts taken from the database.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use pupsource::{Event, EventStore, ExpectedVersion, SqliteStore, StreamId};
use serde_json::json;

/// An example's binary, built by `cargo build --examples` (the README's test command builds
/// every target).
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe.parent().and_then(Path::parent).expect("target dir");
    let binary = target.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --examples` (or run the README's test command)",
        binary.display()
    );
    binary
}

struct Output {
    stdout: String,
    stderr: String,
    success: bool,
}

fn run_counter(dir: &Path, database_url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(example_binary("counter"));
    command.current_dir(dir).args(args).env_remove("DATABASE_URL").env_remove("RUST_LOG");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().expect("run the counter example");
    Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    }
}

/// The number after `label` on the summary line that starts with it.
fn figure(stdout: &str, label: &str) -> i64 {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` figure in:\n{stdout}"))
}

/// Checks one run's summary against the database: the read model's total and the log size.
fn assert_exact(out: &Output, events_in_log: i64, read_model_total: i64) {
    assert!(out.success, "the example failed:\n{}\n{}", out.stdout, out.stderr);
    assert_eq!(figure(&out.stdout, "log"), events_in_log, "{}", out.stdout);
    assert_eq!(figure(&out.stdout, "total"), read_model_total, "{}", out.stdout);
    assert_eq!(read_model_total, events_in_log, "the read model counts every event once");
    assert!(out.stdout.contains("totals match the log"), "{}", out.stdout);
}

async fn counts_sqlite(file: &Path) -> (i64, i64) {
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    let log: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("log");
    let total: i64 = sqlx::query_scalar("SELECT CAST(SUM(events) AS BIGINT) FROM counter_events")
        .fetch_one(store.pool())
        .await
        .expect("read model");
    store.pool().close().await;
    (log, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_example_is_exact_on_the_default_sqlite_file_across_worker_counts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pupsource.db");

    let first = run_counter(dir.path(), None, &["--workers", "8", "--until-caught-up"]);
    assert!(file.exists(), "the default database file is created in the working directory");
    assert!(first.stdout.contains("appended a demo workload of"), "{}", first.stdout);
    let (log, total) = counts_sqlite(&file).await;
    assert!(log > 0);
    assert_exact(&first, log, total);
    assert_eq!(figure(&first.stdout, "handled by this process (shared AtomicU64):"), log);
    for partition in 0..8 {
        assert!(
            first.stdout.contains(&format!("{partition}/8")),
            "partition {partition} listed:\n{}",
            first.stdout
        );
    }

    // Again, with 3 workers: nothing new to do, nothing counted twice.
    let again = run_counter(dir.path(), None, &["--workers", "3", "--until-caught-up"]);
    assert_exact(&again, log, total);
    assert_eq!(figure(&again.stdout, "handled by this process (shared AtomicU64):"), 0);

    // New events: only they are handled.
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    for i in 0..10 {
        let user = StreamId::new("Identity", "User", format!("late-{i}"));
        let event = Event::new(&user, "UserRegistered", json!({ "email": "late@example.com" }));
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
    }
    store.pool().close().await;
    let resumed = run_counter(dir.path(), None, &["--workers", "3", "--until-caught-up"]);
    let (log, total) = counts_sqlite(&file).await;
    assert_exact(&resumed, log, total);
    assert_eq!(figure(&resumed.stdout, "handled by this process (shared AtomicU64):"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_example_is_exact_on_postgres() {
    let schema = common::PgSchema::create().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), schema.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_counter(dir.path(), Some(&url), &["--workers", "8", "--until-caught-up"]);
    let pool = schema.pool(1).await;
    let log: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.expect("log");
    let total: i64 = sqlx::query_scalar("SELECT CAST(SUM(events) AS BIGINT) FROM counter_events")
        .fetch_one(&pool)
        .await
        .expect("read model");
    assert_exact(&out, log, total);
    assert!(
        !dir.path().join("pupsource.db").exists(),
        "no SQLite file when DATABASE_URL is PostgreSQL"
    );

    let again = run_counter(dir.path(), Some(&url), &["--workers", "3", "--until-caught-up"]);
    assert_exact(&again, log, total);
    pool.close().await;
}

#[test]
fn bad_flags_and_urls_are_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, url, expected) in [
        (&["--workers", "0"][..], None, "error: invalid value '0' for '--workers <WORKERS>'"),
        (&["--bogus"][..], None, "error: unexpected argument '--bogus' found"),
        (&[][..], Some("mysql://localhost/x"), "error: invalid database URL `mysql://localhost/x`"),
        (&["rebuild", "nope"][..], None, "error: no projection is named `nope`; known: counter"),
    ] {
        let out = run_counter(dir.path(), url, args);
        assert!(!out.success, "{args:?} must fail");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr for {args:?}: {:?}", out.stderr);
        assert!(lines[0].starts_with(expected), "{args:?}: {:?}", lines[0]);
        assert!(!out.stderr.contains("panicked"));
    }
}

/// `pupsource::main!()` as a user writes it: the `single_worker` example lists its projection
/// and handles exactly the events of its type, once, across runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_macro_binary_lists_and_runs_its_projection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = example_binary("single_worker");
    let run = |args: &[&str]| {
        let output = Command::new(&binary)
            .current_dir(dir.path())
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run single_worker");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(run(&["list"]), "welcome_emails\t1 partitions\n");

    let store =
        SqliteStore::connect(&format!("sqlite://{}", dir.path().join("pupsource.db").display()))
            .await
            .expect("open");
    for i in 0..5 {
        let user = StreamId::new("Identity", "User", format!("u{i}"));
        let events = [
            Event::new(&user, "UserRegistered", json!({ "email": format!("u{i}@example.com") })),
            Event::new(&user, "UserRenamed", json!({ "name": "x" })),
        ];
        store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    }
    let first = run(&["--until-caught-up"]);
    let emails: Vec<&str> = first.lines().filter(|l| l.starts_with("welcome email")).collect();
    assert_eq!(emails.len(), 5, "{first}");
    for i in 0..5 {
        assert!(first.contains(&format!("to u{i}@example.com")), "{first}");
    }
    assert_eq!(run(&["--until-caught-up"]), "", "nothing is sent twice");
}
