//! The examples' binaries, run as a user runs them, each in a temporary working directory.
//! Their output is checked against what must hold: counts consistent with what was appended,
//! and with the database where it outlives the run. The counter example runs on SQLite (the
//! default database file in the working directory) and on PostgreSQL.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;

use pupsource::{Event, EventStore, ExpectedVersion, SqliteStore, StreamId};
use serde_json::json;

use common::example_binary;

struct Output {
    stdout: String,
    stderr: String,
    success: bool,
    code: Option<i32>,
}

/// Runs example `name` in `dir` with `args`; `DATABASE_URL` and `RUST_LOG` are unset unless
/// `env` sets them.
fn run_example(name: &str, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(example_binary(name));
    command.current_dir(dir).args(args).env_remove("DATABASE_URL").env_remove("RUST_LOG");
    command.envs(env.iter().copied());
    let output = command.output().unwrap_or_else(|e| panic!("run the {name} example: {e}"));
    Output {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
        code: output.status.code(),
    }
}

/// Runs an example that must succeed; returns its stdout.
fn stdout_of(name: &str, dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = run_example(name, dir, env, args);
    assert!(out.success, "{name} {args:?} failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{name} {args:?}: {}", out.stderr);
    out.stdout
}

fn run_counter(dir: &Path, database_url: Option<&str>, args: &[&str]) -> Output {
    let env: Vec<(&str, &str)> =
        database_url.map(|url| ("DATABASE_URL", url)).into_iter().collect();
    run_example("counter", dir, &env, args)
}

/// The first line of `text` that starts with `prefix`.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with `{prefix}` in:\n{text}"))
}

/// The number right after the first occurrence of `before` in `text`.
fn number_after(text: &str, before: &str) -> u64 {
    text.find(before)
        .map(|at| &text[at + before.len()..])
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{before}` in:\n{text}"))
}

/// The text between `start` and the next `end` in `text`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    text.split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(inside, _)| inside)
        .unwrap_or_else(|| panic!("no `{start}…{end}` in:\n{text}"))
}

/// The positions of a SQLite file's log, as the examples print them.
async fn log_positions(file: &Path) -> Vec<String> {
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    let log = common::whole_log(&store).await;
    store.pool().close().await;
    log.iter().map(|e| e.position.to_string()).collect()
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
        (
            &[][..],
            Some("oracle://localhost/x"),
            "error: invalid database URL `oracle://localhost/x`",
        ),
        (
            &[][..],
            Some("sqlite:"),
            "error: invalid database URL `sqlite:`: a SQLite URL needs a file name",
        ),
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
    assert_eq!(run(&["list"]), "welcome_emails\t1 partition; not run yet\n");

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
    assert_eq!(run(&["list"]), "welcome_emails\t1 partition; last run with 1 partition\n");
}

/// `basic`: what it appends it reads back, and its projection handles exactly the events not
/// handled before: on the second run, only the second run's (the checkpoint is in the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_example_reads_back_and_projects_each_event_once_across_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut handled = Vec::new();
    for _ in 0..2 {
        let out = stdout_of("basic", dir.path(), &[], &[]);
        let appended = number_after(&out, "appended ");
        assert!(appended > 0, "{out}");
        let stream = between(line(&out, "appended "), " events to ", ": versions ");
        assert_eq!(number_after(&out, "read back "), appended, "{out}");
        assert_eq!(number_after(&out, ", stream version "), appended, "{out}");
        let listed: Vec<&str> = out.lines().filter(|l| l.starts_with("  v")).collect();
        assert_eq!(listed.len() as u64, appended, "{out}");

        assert_eq!(number_after(&out, "projection user_directory handled "), appended, "{out}");
        let this_run: Vec<&str> = out.lines().filter(|l| l.starts_with("  position ")).collect();
        assert_eq!(this_run.len() as u64, appended, "{out}");
        assert!(this_run.iter().all(|l| l.contains(stream)), "only this run's user:\n{out}");
        assert!(this_run[0].ends_with("registered with ada@example.com"), "{out}");
        assert!(this_run[1].ends_with("renamed to Ada Lovelace"), "in version order:\n{out}");
        handled.extend(this_run.iter().map(|l| between(l, "  position ", ":").to_owned()));
    }
    assert_eq!(handled, log_positions(&dir.path().join("pupsource-basic.db")).await);
}

/// Partition lines (`  partition i/n: k events`) under each projection's heading, by name.
fn partitions_by_projection(out: &str) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut sections: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if let Some(partition) = line.strip_prefix("  partition ") {
            let name: &String = current.as_ref().expect("a heading before its partitions");
            let (partition, rest) = partition.split_once(": ").expect("`i/n: k events`");
            let events = number_after(rest, "");
            sections.entry(name.clone()).or_default().push((partition.to_owned(), events));
        } else {
            current = line.split_once(" (").map(|(name, _)| name.to_owned());
        }
    }
    sections
}

#[test]
fn multiple_projections_example_splits_each_projection_its_own_way() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of("multiple_projections", dir.path(), &[], &[]);
    let appended = line(&out, "appended ");
    let users = number_after(appended, "events: ");
    let changes = number_after(appended, "users registered, ");
    let orders = number_after(appended, "email changes, ");
    let shipped = number_after(appended, "orders placed, ");
    let revenue = number_after(appended, "orders shipped, revenue ");
    assert_eq!(number_after(appended, "appended "), users + changes + orders + shipped);
    assert!(users > 0 && changes > 0 && orders > 0 && shipped > 0, "{out}");

    let directory = line(&out, "user_directory (1 partition): ");
    assert_eq!(number_after(directory, "): "), users, "{out}");
    assert_eq!(number_after(directory, "users, "), changes, "{out}");
    let sales = line(&out, "sales_report (4 partitions): ");
    assert_eq!(number_after(sales, "): "), orders, "{out}");
    assert_eq!(number_after(sales, "placed, "), shipped, "{out}");
    assert_eq!(number_after(sales, "revenue "), revenue, "{out}");
    let shipping = line(&out, "shipping_board (2 partitions): ");
    assert_eq!(number_after(shipping, "): "), shipped, "{out}");

    // Each projection's events were split among its own partitions, each handled once.
    let sections = partitions_by_projection(&out);
    for (name, count, events) in [
        ("user_directory", 1, users + changes),
        ("sales_report", 4, orders + shipped),
        ("shipping_board", 2, shipped),
    ] {
        let partitions = &sections[name];
        for (partition, _) in partitions {
            let (index, of) = partition.split_once('/').expect("i/n");
            assert_eq!(of, count.to_string(), "{name}: {out}");
            assert!(index.parse::<u32>().expect("index") < count, "{name}: {out}");
        }
        assert_eq!(partitions.iter().map(|p| p.1).sum::<u64>(), events, "{name}: {out}");
    }
}

/// `name: N events: A=1 B=2`: the total and the count of each event type.
fn received(out: &str, name: &str) -> (u64, BTreeMap<String, u64>) {
    let prefix = format!("{name}: ");
    let line = line(out, &prefix);
    let (total, by_type) =
        line[prefix.len()..].split_once(" events: ").unwrap_or_else(|| panic!("`{line}`"));
    let by_type = by_type
        .split_whitespace()
        .map(|pair| pair.split_once('=').expect("TYPE=N"))
        .map(|(t, n)| (t.to_owned(), n.parse().expect("a count")))
        .collect();
    (total.parse().expect("a total"), by_type)
}

#[test]
fn scoped_projections_example_delivers_each_projection_its_scope_and_the_publisher_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of("scoped_projections", dir.path(), &[], &[]);
    let (total, appended) = received(&out, "appended");
    assert_eq!(appended.values().sum::<u64>(), total);
    for event_type in ["UserCreated", "UserDeactivated", "OrderPlaced", "ProductAdded"] {
        assert!(appended.get(event_type).is_some_and(|&n| n > 0), "{event_type}: {out}");
    }
    let only = |types: &[&str]| -> BTreeMap<String, u64> {
        appended
            .iter()
            .filter(|(t, _)| types.contains(&t.as_str()))
            .map(|(t, n)| (t.clone(), *n))
            .collect()
    };
    for (projection, expected) in [
        ("user_read_model", only(&["UserCreated"])),
        ("order_read_model", only(&["OrderPlaced"])),
        // contexts("Sales", "Catalog")
        ("commerce_audit", only(&["OrderPlaced", "ProductAdded"])),
        ("integration_publisher", appended.clone()),
    ] {
        let (handled, by_type) = received(&out, projection);
        assert_eq!(by_type, expected, "{projection}: {out}");
        assert_eq!(handled, expected.values().sum::<u64>(), "{projection}: {out}");
    }
    let keys: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("publish "))
        .map(|l| between(l, "(key ", ")"))
        .collect();
    assert_eq!(keys.len() as u64, total, "one publication per event:\n{out}");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "distinct keys:\n{out}");
}

/// The positions a `stop_resume process` run printed, in order.
fn processed(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.starts_with("processed #"))
        .map(|l| between(l, " at position ", ":").to_owned())
        .collect()
}

/// `stop_resume`: stopped after a few events, resumed, given more events: every event of the
/// log is processed exactly once, in order, and status agrees with each run's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_resume_example_resumes_exactly_after_its_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("pupsource-stop-resume.db");
    let run = |args: &[&str]| stdout_of("stop_resume", dir.path(), &[], args);
    assert_eq!(run(&["status"]), "reliable_projection: not started\n");
    assert!(run(&["append", "50"]).starts_with("appended 50 events"));
    let log = log_positions(&file).await;
    assert_eq!(log.len(), 50);

    let first = run(&["process", "--stop-after", "4"]);
    assert!(first.starts_with("starting from the beginning of the log\n"), "{first}");
    let first_positions = processed(&first);
    // On shutdown each worker finishes its batch in flight (of one event here) and no more
    // (`pupsource::runner`): the run stops well short of 50.
    assert!((4..50).contains(&first_positions.len()), "{first}");
    assert_eq!(first_positions, log[..first_positions.len()], "in log order, from the start");
    let checkpoint = first_positions.last().expect("some processed");
    let to_go = 50 - first_positions.len() as u64;
    let summary = format!(
        "processed {} events in this run; checkpoint {checkpoint}, {to_go} events to go\n",
        first_positions.len()
    );
    assert!(first.ends_with(&summary), "{first}");
    assert_eq!(
        run(&["status"]),
        format!("reliable_projection: checkpoint {checkpoint}, {to_go} events to go\n")
    );

    let second = run(&["process"]);
    assert!(second.starts_with(&format!("resuming after checkpoint {checkpoint}\n")), "{second}");
    let second_positions = processed(&second);
    assert_eq!(second_positions, log[first_positions.len()..], "exactly the rest:\n{second}");
    assert!(second.ends_with(", 0 events to go\n"), "{second}");

    assert!(run(&["append", "5"]).starts_with("appended 5 events"));
    let log = log_positions(&file).await;
    let third = run(&["process"]);
    assert_eq!(processed(&third), log[50..], "only the new events:\n{third}");
    let fourth = run(&["process"]);
    assert!(processed(&fourth).is_empty(), "{fourth}");
    assert!(fourth.contains(&format!("resuming after checkpoint {}\n", log[54])), "{fourth}");

    let bad = run_example("stop_resume", dir.path(), &[], &["process", "--stop-after", "x"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.starts_with("usage: stop_resume "), "{}", bad.stderr);
}

/// `with_logging`: the runner's `projection.batch` spans and a handler's retry show up in the
/// log, with fields that account for every event; the summary is on stdout.
#[test]
fn with_logging_example_logs_batches_and_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_example("with_logging", dir.path(), &[("RUST_LOG", "info,pupsource=debug")], &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    let users = number_after(&out.stdout, "users registered: ");
    assert!(users > 0);
    assert_eq!(number_after(&out.stdout, "welcome emails delivered: "), users, "{}", out.stdout);
    assert_eq!(number_after(&out.stdout, "events handled: "), users, "{}", out.stdout);

    // One closed span per batch; their `events` fields add up to every event, once.
    let closed: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(" projection.batch{") && l.contains("pupsource::runner: close"))
        .collect();
    assert!(!closed.is_empty(), "{}", out.stderr);
    let mut batched = 0;
    for line in &closed {
        let fields = between(line, "projection.batch{", "}");
        assert!(fields.starts_with("projection=welcome_emails partition="), "{line}");
        let partition = between(fields, "partition=", " ");
        assert!(["0/2", "1/2"].contains(&partition), "{line}");
        number_after(fields, "position=");
        batched += number_after(fields, "events=");
    }
    assert_eq!(batched, users, "{}", out.stderr);

    let in_span = |level: &str, message: &str| {
        out.stderr.lines().any(|l| {
            l.contains(level)
                && l.contains("projection.batch{projection=welcome_emails")
                && l.contains(message)
        })
    };
    assert!(in_span("INFO", "with_logging: welcome email sent"), "{}", out.stderr);
    assert!(in_span("DEBUG", "handler failed in batch"), "{}", out.stderr);
    assert!(in_span("WARN", "attempt=1 error=mail server busy"), "{}", out.stderr);
    assert!(out.stderr.contains("projection stopped projection=welcome_emails"), "{}", out.stderr);
    assert!(!out.stdout.contains("INFO"), "logs go to stderr");
}

/// `sqlite_basic`: on a given file that outlives it, twice; and on a temporary one that does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_basic_example_appends_reads_and_refuses_a_stale_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("orders.db");
    let path = file.to_str().expect("a UTF-8 path");
    let mut version = 0;
    for run in 1..=2 {
        let out = stdout_of("sqlite_basic", dir.path(), &[], &[path]);
        assert_eq!(line(&out, "event store: "), format!("event store: {path}"));
        let appended = line(&out, "appended to ");
        let stream = between(appended, "appended to ", ": versions ");
        version = number_after(appended, "..=");
        assert_eq!(
            line(&out, "stream "),
            format!("stream {stream} is at version {version} with {version} events:")
        );
        let listed: Vec<&str> = out.lines().filter(|l| l.starts_with("  v")).collect();
        assert_eq!(listed.len() as u64, version, "{out}");
        let event_type = |l: &&str| l.split_whitespace().nth(1).expect("a type").to_owned();
        let types: Vec<String> = listed.iter().map(event_type).collect();
        assert_eq!(
            line(&out, "versions 2..=3: "),
            format!("versions 2..=3: {}", types[1..3].join(", "))
        );
        let refused = format!(
            "refused a stale writer: it expected version 1, the stream is at version {version}"
        );
        assert_eq!(line(&out, "refused "), refused);
        assert_eq!(
            line(&out, "reopened the file: "),
            format!("reopened the file: {stream} is at version {version}")
        );
        // Each run writes one order of its own: the log grows by as much every run.
        let items = types.iter().filter(|t| *t == "ItemAdded").count() as u64;
        assert_eq!(number_after(&out, "the log holds "), run * version, "{out}");
        assert_eq!(number_after(&out, "ItemAdded events in the log: "), run * items, "{out}");
    }
    assert_eq!(log_positions(&file).await.len() as u64, 2 * version);

    let out = stdout_of("sqlite_basic", dir.path(), &[], &[]);
    let temporary = line(&out, "event store: ").trim_start_matches("event store: ");
    assert!(!Path::new(temporary).starts_with(dir.path()), "{out}");
    assert!(!Path::new(temporary).exists(), "the temporary file is deleted at exit");
}

/// `postgres_basic`, in a schema of its own: the caller's transaction, a rollback, a stale
/// writer, and the read fence; checked against the schema's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_basic_example_on_a_schema_of_its_own() {
    let schema = common::PgSchema::create().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), schema.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of("postgres_basic", dir.path(), &[("DATABASE_URL", &url)], &[]);

    let appended = line(&out, "appended to ");
    let stream = between(appended, "appended to ", " in one transaction");
    let version = number_after(appended, "..=");
    assert_eq!(
        line(&out, "rolled back an append: "),
        format!("rolled back an append: {stream} is still at version {version}")
    );
    assert_eq!(
        line(&out, "refused "),
        format!(
            "refused a stale writer: it expected version 1, the stream is at version {version}"
        )
    );
    assert_eq!(
        line(&out, "stream "),
        format!("stream {stream} is at version {version} with {version} events:")
    );
    let listed: Vec<&str> = out.lines().filter(|l| l.starts_with("  v")).collect();
    assert_eq!(listed.len() as u64, version, "{out}");
    assert!(
        listed.iter().all(|l| l.contains("@tx")),
        "PostgreSQL positions name their transaction"
    );

    // The second order committed first, yet neither is visible while the first's
    // transaction is open; then both are, the first one first.
    assert_eq!(
        line(&out, "while the first order's transaction is open, "),
        "while the first order's transaction is open, readers see 0 of the 2 new orders"
    );
    let seen = line(&out, "once it committed, readers see: ");
    let first = seen.find("first at ").expect("the first order is seen");
    let second = seen.find("second at ").expect("the second order is seen");
    assert!(first < second, "{seen}");

    let pool = schema.pool(1).await;
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM events GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&pool)
    .await
    .expect("count events");
    pool.close().await;
    // The order's events as listed, and the two orders of the fence.
    let listed_of = |t: &str| listed.iter().filter(|l| l.contains(&format!(" {t} at "))).count();
    let expected = vec![
        ("ItemAdded".to_owned(), listed_of("ItemAdded") as i64),
        ("OrderPlaced".to_owned(), listed_of("OrderPlaced") as i64 + 2),
    ];
    assert_eq!(stored, expected, "nothing of the rollback or the stale writer is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_example_is_exact_on_mysql() {
    let database = common::MySqlDatabase::create().await;
    let url = database.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_counter(dir.path(), Some(&url), &["--workers", "8", "--until-caught-up"]);
    let store = pupsource::MySqlStore::connect(&url).await.expect("connect");
    let log: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("log");
    let total: i64 = sqlx::query_scalar("SELECT CAST(SUM(events) AS SIGNED) FROM counter_events")
        .fetch_one(store.pool())
        .await
        .expect("read model");
    assert_exact(&out, log, total);
    let again = run_counter(dir.path(), Some(&url), &["--workers", "3", "--until-caught-up"]);
    assert_exact(&again, log, total);
}

/// `mysql_basic`, in a database of its own: the caller's transaction, a rollback, a stale
/// writer, and commit order; checked against the database's tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_basic_example_on_a_database_of_its_own() {
    let database = common::MySqlDatabase::create().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of("mysql_basic", dir.path(), &[("DATABASE_URL", &database.url())], &[]);

    let appended = line(&out, "appended to ");
    let stream = between(appended, "appended to ", " in one transaction");
    let version = number_after(appended, "..=");
    assert_eq!(version, 3, "{out}");
    assert_eq!(
        line(&out, "rolled back an append: "),
        format!("rolled back an append: {stream} is still at version 3")
    );
    assert_eq!(
        line(&out, "refused "),
        "refused a stale writer: it expected version 1, the stream is at version 3"
    );
    let listed: Vec<&str> = out.lines().filter(|l| l.starts_with("  v")).collect();
    assert_eq!(listed.len(), 3, "{out}");
    assert_eq!(
        line(&out, "while the first order's transaction is open, "),
        "while the first order's transaction is open, readers see 0 of the 2 new orders"
    );
    // Positions 1..=3 are the order's (the rolled-back append gave its position back), so the
    // first order, committed first, is at 4, and the second, which waited for it, at 5.
    assert_eq!(
        line(&out, "once it committed, readers see: "),
        "once it committed, readers see: first at 4, second at 5"
    );

    let store = pupsource::MySqlStore::connect(&database.url()).await.expect("connect");
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT global_position, CONVERT(event_type USING utf8mb4) FROM events \
         ORDER BY global_position",
    )
    .fetch_all(store.pool())
    .await
    .expect("read the events table");
    let expected: Vec<(i64, String)> = [
        (1, "OrderPlaced"),
        (2, "ItemAdded"),
        (3, "ItemAdded"),
        (4, "OrderPlaced"),
        (5, "OrderPlaced"),
    ]
    .into_iter()
    .map(|(p, t)| (p, t.to_owned()))
    .collect();
    assert_eq!(stored, expected, "nothing of the rollback or the stale writer is stored");
}

#[test]
fn postgres_basic_example_without_a_postgres_url_is_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("temp dir");
    for env in [&[][..], &[("DATABASE_URL", "sqlite::memory:")][..]] {
        let out = run_example("postgres_basic", dir.path(), env, &[]);
        assert_eq!(out.code, Some(2), "{env:?}: {}", out.stderr);
        assert_eq!(out.stdout, "");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{env:?}: {}", out.stderr);
        assert!(lines[0].starts_with("error: postgres_basic needs DATABASE_URL=postgres://"));
    }
}

/// `optimistic_concurrency`: concurrent withdrawals, each retried on conflicts, all applied
/// exactly once; an overdraft refused.
#[test]
fn optimistic_concurrency_example_loses_no_withdrawal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (tasks, per_task) = (6, 20);
    let args = [tasks.to_string(), per_task.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = stdout_of("optimistic_concurrency", dir.path(), &[], &args);
    let opened = number_after(line(&out, "opened account "), " with ");
    let plan = line(&out, &format!("{tasks} tasks withdraw {per_task} times "));
    let amount = number_after(plan, " times ");
    let expected = opened - tasks * per_task * amount;

    let result = line(&out, "final balance ");
    assert_eq!(number_after(result, "final balance "), expected, "{out}");
    assert_eq!(number_after(result, "(expected "), expected, "{out}");
    let version = 1 + tasks * per_task;
    assert_eq!(number_after(result, "stream version "), version, "one event per withdrawal");
    // How many conflicts depends on the interleaving; that it is reported does not.
    number_after(result, &format!("stream version {version}, "));
    assert!(result.ends_with(" conflicts retried"), "{result}");
    assert_eq!(
        line(&out, "withdrawing "),
        format!("withdrawing {} cents: refused, the balance is {expected}", expected + 1)
    );

    // The same workload through `#[aggregate]` and `execute`.
    let result = line(&out, "with execute: final balance ");
    assert_eq!(number_after(result, "final balance "), expected, "{out}");
    assert_eq!(number_after(result, "stream version "), version, "{out}");
    assert!(number_after(result, &format!("stream version {version}, ")) >= tasks * per_task);
    assert_eq!(
        line(&out, "with execute, withdrawing "),
        format!(
            "with execute, withdrawing {} cents: refused, the balance is {expected}",
            expected + 1
        )
    );
}

/// `bank_account`: concurrent commands on aggregates with snapshots, a transfer in one
/// transaction and a projection of the same events agree on every balance, on the SQLite
/// default and on PostgreSQL.
#[test]
fn bank_account_example_aggregates_and_projection_agree() {
    let postgres = common::postgres_url();
    for env in [vec![], vec![("DATABASE_URL", postgres.as_str())]] {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = stdout_of("bank_account", dir.path(), &env, &["6", "30"]);
        assert_eq!(
            line(&out, "opening alice's account again: "),
            "opening alice's account again: the account is open already"
        );
        let summary = line(&out, "180 commands: ");
        let applied = number_after(summary, "180 commands: ");
        assert_eq!(applied + number_after(summary, " attempts (conflicts decided again), "), 180);
        for name in ["alice", "bob", "carol"] {
            let account = line(&out, &format!("{name}: balance "));
            let balance = number_after(account, "balance ");
            assert_eq!(number_after(account, "; projection "), balance, "{env:?}: {account}");
            assert_eq!(number_after(account, "; expected "), balance, "{env:?}: {account}");
        }
        // With 6 * 30 commands over 3 accounts, each account passes version 10: loads start
        // from a snapshot.
        assert!(out.contains("(snapshot version "), "{out}");
        assert!(out.lines().any(|l| l == "aggregates, projection and commands agree"), "{out}");
    }
}

/// `typed_events`: a version 1 event stored as raw JSON decodes as version 2 through the
/// upcast; what cannot be decoded is refused with the reason.
#[test]
fn typed_events_example_upcasts_v1_and_refuses_what_it_cannot_decode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = stdout_of("typed_events", dir.path(), &[], &[]);
    let current = number_after(&out, "current schema version ");
    assert!(current > 1, "{out}");

    let v1: serde_json::Value = serde_json::from_str(
        line(&out, "appending v1 as raw JSON: ").trim_start_matches("appending v1 as raw JSON: "),
    )
    .expect("the raw payload is JSON");
    let name = v1["name"].as_str().expect("v1 has a full name");
    let (first, last) = name.split_once(' ').expect("first and last name");
    let ada = line(&out, "ada: ");
    assert!(ada.starts_with("ada: stored as v1, decoded as UserRegistered {"), "{ada}");
    assert!(ada.contains(&format!("first_name: {first:?}, last_name: {last:?}")), "{ada}");
    assert!(ada.contains(&format!("email: {:?}", v1["email"].as_str().expect("email"))), "{ada}");
    assert!(ada.contains("(upcast from v1)"), "{ada}");

    let grace = line(&out, "grace: ");
    assert!(
        grace.starts_with(&format!("grace: stored as v{current}, decoded as UserRegistered {{"))
    );
    assert!(!grace.contains("upcast"), "{grace}");
    assert!(grace.ends_with("correlation id Some(\"signup-42\")"), "metadata travels: {grace}");

    let future = line(&out, "future: ");
    assert!(future.starts_with("future: stored as v3, refused: "), "{future}");
    assert!(future.contains("no decoder for schema version 3"), "{future}");
    let drifted = line(&out, "drifted: ");
    assert!(drifted.starts_with(&format!("drifted: stored as v{current}, refused: ")), "{drifted}");
    assert!(drifted.contains("does not match its type"), "{drifted}");

    let wrong = line(&out, "decoding ada's event as UserRenamed: ");
    assert!(wrong.ends_with("refused: expected event `UserRenamed`, found `UserRegistered`"));
    let old = line(&out, "decoding ada's event as UserRegisteredV1: ");
    assert!(old.contains(&format!("name: {name:?}")), "the old type reads the old shape: {old}");
}

/// The partitions, among 3, of the events in the log, from the aggregate ids `rows` counts
/// (`aggregate_id, count(*)`): what each process of the `partitioned` example must handle.
fn events_per_partition_of_three(rows: &[(String, i64)]) -> [i64; 3] {
    let mut events = [0; 3];
    for (aggregate_id, count) in rows {
        let hash = pupsource::partition::partition_hash(aggregate_id);
        events[pupsource::partition::partition_of(hash, 3) as usize] += count;
    }
    events
}

const EVENTS_PER_AGGREGATE: &str =
    "SELECT aggregate_id, count(*) FROM events GROUP BY aggregate_id";
const PARTITIONED_READ_MODEL: &str = "SELECT CAST(partition AS BIGINT), events \
    FROM partitioned_events WHERE partition_count = 3 ORDER BY partition";

/// One `partitioned` process's summary: it succeeded, ran partition `key` of 3 and no other,
/// and found that partition's read model equal to the log. Returns how many events it handled.
fn assert_partition_matches_the_log(out: &Output, key: u32) -> i64 {
    assert!(out.success, "key {key} failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "key {key}: {}", out.stderr);
    let ours = format!("partition {key}/3");
    assert_eq!(
        line(&out.stdout, "this process ran "),
        format!("this process ran {ours} (static assignment)")
    );
    assert!(
        out.stdout.lines().filter(|l| l.starts_with("partition ")).all(|l| l.starts_with(&ours)),
        "only its own partition:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("{ours} matches the log\n")), "{}", out.stdout);
    figure(&out.stdout, "handled by this process:")
}

/// `partitioned` on the default SQLite file: the processes of keys 0, 1 and 2 of 3, one after
/// the other, each handle exactly the events of their partition, and together the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_example_keys_run_in_turn_on_sqlite_handle_each_event_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut outputs = Vec::new();
    for key in 0..3u32 {
        let key = key.to_string();
        let args = ["--partition-key", &key, "--total-partitions", "3", "--until-caught-up"];
        outputs.push(run_example("partitioned", dir.path(), &[], &args));
    }
    let handled: Vec<i64> = (0..3u32)
        .zip(&outputs)
        .map(|(key, out)| assert_partition_matches_the_log(out, key))
        .collect();

    let file = dir.path().join("pupsource.db");
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    let log: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .expect("log");
    let rows: Vec<(String, i64)> =
        sqlx::query_as(EVENTS_PER_AGGREGATE).fetch_all(store.pool()).await.expect("aggregates");
    let read_model: Vec<(i64, i64)> =
        sqlx::query_as(PARTITIONED_READ_MODEL).fetch_all(store.pool()).await.expect("read model");
    store.pool().close().await;

    assert!(log > 0);
    assert_eq!(figure(&outputs[0].stdout, "appended a demo workload of"), log);
    assert!(outputs[1..].iter().all(|out| !out.stdout.contains("appended")), "seeded once");
    assert_eq!(handled.iter().sum::<i64>(), log, "every event of the log, once");
    let expected = events_per_partition_of_three(&rows);
    assert_eq!(handled, expected, "each process handled exactly its partition's events");
    assert_eq!(read_model, vec![(0, expected[0]), (1, expected[1]), (2, expected[2])]);
}

/// `partitioned` on PostgreSQL: the three processes start at the same moment on a fresh
/// schema; one of them seeds, each handles its leased partition, together the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_example_three_processes_started_together_on_postgres_seed_once() {
    let schema = common::PgSchema::create().await;
    let url = format!("{}?options=-c%20search_path%3D{}", common::postgres_url(), schema.name);
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = example_binary("partitioned");
    let children: Vec<std::process::Child> = (0..3u32)
        .map(|key| {
            Command::new(&binary)
                .current_dir(dir.path())
                .args(["--partition-key", &key.to_string(), "--total-partitions", "3"])
                .arg("--until-caught-up")
                .env("DATABASE_URL", &url)
                .env_remove("RUST_LOG")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start a partitioned process")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|child| {
            let output = child.wait_with_output().expect("wait for a partitioned process");
            Output {
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                success: output.status.success(),
                code: output.status.code(),
            }
        })
        .collect();
    let handled: Vec<i64> = (0..3u32)
        .zip(&outputs)
        .map(|(key, out)| assert_partition_matches_the_log(out, key))
        .collect();
    // Each claim takes a fencing epoch no other claim ever had.
    let mut epochs: Vec<u64> = outputs
        .iter()
        .map(|out| number_after(line(&out.stdout, "leased by worker "), "(epoch "))
        .collect();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), 3, "three claims, three epochs: {epochs:?}");

    let pool = schema.pool(1).await;
    let log: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.expect("log");
    let rows: Vec<(String, i64)> =
        sqlx::query_as(EVENTS_PER_AGGREGATE).fetch_all(&pool).await.expect("aggregates");
    let read_model: Vec<(i64, i64)> =
        sqlx::query_as(PARTITIONED_READ_MODEL).fetch_all(&pool).await.expect("read model");
    pool.close().await;

    let seeded: Vec<i64> = outputs
        .iter()
        .filter(|out| out.stdout.contains("appended"))
        .map(|out| figure(&out.stdout, "appended a demo workload of"))
        .collect();
    assert_eq!(seeded, vec![log], "exactly one process seeded, and the log is that workload");
    assert_eq!(handled.iter().sum::<i64>(), log, "every event of the log, once");
    let expected = events_per_partition_of_three(&rows);
    assert_eq!(handled, expected, "each process handled exactly its partition's events");
    assert_eq!(read_model, vec![(0, expected[0]), (1, expected[1]), (2, expected[2])]);
}

/// A key outside the partition count and a key without a count are argument errors (exit 2,
/// one line naming the flag).
#[test]
fn partitioned_example_refuses_a_key_outside_the_count_and_a_key_without_a_count() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_example(
        "partitioned",
        dir.path(),
        &[],
        &["--partition-key", "3", "--total-partitions", "3"],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: invalid value for `--partition-key`: invalid partition key 3: with 3 partitions \
         the keys are 0 to 2\n"
    );

    let out = run_example("partitioned", dir.path(), &[], &["--partition-key", "1"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", lines[0]);
}
