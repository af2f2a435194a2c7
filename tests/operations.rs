//! Operating a `pupsource::main!()` binary, as its operator sees it: a database that cannot be
//! reached is named with the cause within the connect timeout; `--on-error`, `--retries`,
//! `status --json`, `list` and `replay` cover what the library does; refusals name their flag.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pupsource::store::ConnectOptions;
use pupsource::{
    ConnectFailure, Error, Event, EventStore, ExpectedVersion, Scope, SqliteStore, Store, StreamId,
};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;

use common::{PgSchema, eventually, example_binary};

/// Runs example `name` in `dir` with `args` and `env` (`DATABASE_URL`, `RUST_LOG` and
/// `PUPSOURCE_CONNECT_TIMEOUT` unset otherwise); its exit code, stdout, stderr and how long
/// it took.
fn run(
    name: &str,
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String, String, Duration) {
    let started = Instant::now();
    let output = Command::new(example_binary(name))
        .current_dir(dir)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("PUPSOURCE_CONNECT_TIMEOUT")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run the {name} example: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

/// A local port with nothing listening on it.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The test server's `host:port`, as the error names it.
fn server_address() -> String {
    let options = PgConnectOptions::from_str(&common::postgres_url()).expect("a valid URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// The test server's URL with another user and database.
fn server_url_as(user: &str, database: &str) -> String {
    format!("postgres://{user}@{}/{database}", server_address())
}

#[test]
fn a_port_with_nothing_listening_is_named_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let (code, _, stderr, took) =
        run("counter", dir.path(), &[("DATABASE_URL", &url)], &["--until-caught-up"]);
    assert_eq!(
        (code, stderr.trim_end()),
        (
            Some(1),
            &*format!(
                "error: cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"
            )
        )
    );
    // A refused connection is final: no waiting for the timeout (5 s by default).
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn a_server_that_never_answers_fails_after_the_connect_timeout_flag_or_env() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Accepts connections (the kernel's backlog does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    for (env, args, timeout) in [
        (vec![("DATABASE_URL", url.as_str())], vec!["--connect-timeout", "300ms"], "300ms"),
        (
            vec![("DATABASE_URL", url.as_str()), ("PUPSOURCE_CONNECT_TIMEOUT", "200ms")],
            vec![],
            "200ms",
        ),
    ] {
        let (code, _, stderr, took) = run("counter", dir.path(), &env, &args);
        assert_eq!(
            (code, stderr.trim_end()),
            (
                Some(1),
                &*format!(
                    "error: cannot connect to PostgreSQL at 127.0.0.1:{port}: no answer within {timeout}"
                )
            )
        );
        assert!(took < Duration::from_secs(4), "{timeout}: took {took:?}");
    }
}

#[test]
fn a_missing_database_an_unknown_role_and_an_unknown_host_are_named_with_the_cause() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = server_address();
    let missing = format!("pupsource_missing_{}", uuid::Uuid::new_v4().simple());
    for (url, expected) in [
        (
            server_url_as("postgres", &missing),
            format!(
                "cannot connect to PostgreSQL at {address}: database \"{missing}\" does not exist"
            ),
        ),
        (
            server_url_as("pupsource_nobody", "test"),
            format!(
                "cannot connect to PostgreSQL at {address}: role \"pupsource_nobody\" does not exist"
            ),
        ),
        (
            "postgres://postgres@pupsource-test.invalid:5432/test".to_owned(),
            "cannot connect to PostgreSQL at pupsource-test.invalid:5432: name not found"
                .to_owned(),
        ),
    ] {
        let (code, _, stderr, _) = run("counter", dir.path(), &[("DATABASE_URL", &url)], &["list"]);
        assert_eq!((code, stderr.trim_end()), (Some(1), &*format!("error: {expected}")), "{url}");
    }
}

#[test]
fn a_sqlite_file_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("no-such-directory").join("app.db");
    let url = format!("sqlite://{}", file.display());
    let (code, _, stderr, _) = run("counter", dir.path(), &[("DATABASE_URL", &url)], &["list"]);
    assert_eq!(
        (code, stderr.trim_end()),
        (
            Some(1),
            &*format!(
                "error: cannot connect to SQLite at {}: unable to open database file",
                file.display()
            )
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_connect_with_returns_the_cause_as_typed_values() {
    let options = ConnectOptions::default().timeout(Duration::from_secs(3));
    let port = closed_port();
    let refused = Store::connect_with(&format!("postgres://postgres@127.0.0.1:{port}/x"), options)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            &refused,
            Error::Connect { database: "PostgreSQL", address, cause: ConnectFailure::Io(kind) }
                if *address == format!("127.0.0.1:{port}")
                    && *kind == std::io::ErrorKind::ConnectionRefused
        ),
        "{refused:?}"
    );
    let missing = format!("pupsource_missing_{}", uuid::Uuid::new_v4().simple());
    let err = Store::connect_with(&server_url_as("postgres", &missing), options)
        .await
        .expect_err("no such database");
    assert!(
        matches!(&err, Error::Connect { cause: ConnectFailure::NoSuchDatabase(name), .. } if *name == missing),
        "{err:?}"
    );
    assert!(refused.is_retryable() && !err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connect_failures_are_typed_values_naming_the_server() {
    let options = ConnectOptions::default().timeout(Duration::from_secs(3));
    let port = closed_port();
    let refused = Store::connect_with(&format!("mysql://root@127.0.0.1:{port}/x"), options)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(
            &refused,
            Error::Connect { database: "MySQL", address, cause: ConnectFailure::Io(kind) }
                if *address == format!("127.0.0.1:{port}")
                    && *kind == std::io::ErrorKind::ConnectionRefused
        ),
        "{refused:?}"
    );
    assert_eq!(
        refused.to_string(),
        format!("cannot connect to MySQL at 127.0.0.1:{port}: connection refused")
    );
    let server = common::mysql_url();
    let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
    let missing = format!("pupsource_missing_{}", uuid::Uuid::new_v4().simple());
    let err = Store::connect_with(&format!("{base}/{missing}"), options)
        .await
        .expect_err("no such database");
    assert!(
        matches!(&err, Error::Connect { cause: ConnectFailure::NoSuchDatabase(name), .. } if *name == missing),
        "{err:?}"
    );
    let stranger = format!("pupsource_nobody_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let url = base.replacen("://root@", &format!("://{stranger}:wrong@"), 1);
    let err = Store::connect_with(&format!("{url}/test"), options).await.expect_err("unknown user");
    assert!(
        matches!(&err, Error::Connect { cause: ConnectFailure::PasswordRejected, .. }),
        "{err:?}"
    );
    assert!(refused.is_retryable() && !err.is_retryable());
}

/// `n` registrations in a SQLite file's log, the `k`-th (1-based) with an address that cannot
/// be mailed; the partition hash of that event.
async fn registrations(file: &Path, n: u64, poison: u64) -> u64 {
    let store = SqliteStore::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    store.migrate().await.expect("migrate");
    for i in 1..=n {
        let email = if i == poison { format!("user {i}") } else { format!("u{i}@example.com") };
        let user = StreamId::new("Identity", "User", format!("u{i}"));
        let event = Event::new(&user, "UserRegistered", json!({ "email": email }));
        store.append_and_commit(ExpectedVersion::NoStream, &[event]).await.expect("append");
    }
    let log = common::whole_log(&store).await;
    store.pool().close().await;
    log[usize::try_from(poison - 1).expect("index")].partition_hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_retries_status_json_list_and_replay_cover_a_poison_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hash = registrations(&dir.path().join("pupsource.db"), 5, 3).await;
    let cli = |args: &[&str]| run("single_worker", dir.path(), &[], args);

    let (code, stdout, stderr, _) = cli(&["list"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "welcome_emails\t1 partition; not run yet\n"),
        "{stderr}"
    );

    // Stop (the default) after 1 + 2 retries: the partition halts, the run says why, last.
    let halted = |attempts: u32| {
        let plural = if attempts == 1 { "" } else { "s" };
        format!(
            "error: projection `welcome_emails` partition 0/1 failed on event `UserRegistered` at \
             position 3 after {attempts} attempt{plural}: `user 3` is not an email address"
        )
    };
    for (args, attempts) in [
        (&["--until-caught-up", "--retries", "2"][..], 3),
        (&["--until-caught-up", "--retries", "0", "--on-error", "stop"], 1),
    ] {
        let (code, _, stderr, _) = cli(args);
        assert_eq!((code, stderr.lines().last()), (Some(1), Some(&*halted(attempts))), "{stderr}");
        let tried = stderr.lines().filter(|l| l.contains("WARN pupsource::runner: handler failed"));
        assert_eq!(tried.count(), attempts as usize, "{stderr}");
    }

    // Park, with 3 partitions: the others are mailed, the poison event is set aside.
    let (code, stdout, stderr, _) =
        cli(&["--until-caught-up", "--retries", "0", "--on-error", "park", "--workers", "3"]);
    assert_eq!(code, Some(0), "{stderr}");
    let mailed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("welcome email")).collect();
    assert_eq!(mailed.len(), 2, "u4 and u5 (u1 and u2 were mailed by the halted runs):\n{stdout}");

    let (code, stdout, _, _) = cli(&["list"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "welcome_emails\t1 partition; last run with 3 partitions\n")
    );

    let (code, stdout, stderr, _) = cli(&["status", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let status: Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    assert_eq!(status["fence"], Value::Null);
    let projection = &status["projections"][0];
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(
        keys(projection).expect("an object"),
        ["declared_partitions", "last_run_partitions", "name", "parked", "partitions", "workers"]
    );
    assert_eq!(
        (
            &projection["name"],
            &projection["declared_partitions"],
            &projection["last_run_partitions"]
        ),
        (&json!("welcome_emails"), &json!(1), &json!(3))
    );
    assert_eq!((&projection["parked"], &projection["workers"]), (&json!(1), &json!([])));
    let partitions = projection["partitions"].as_array().expect("partitions");
    // The 1-partition layout (retired once the new one passed it) and the 3-partition one.
    let current: Vec<&Value> =
        partitions.iter().filter(|p| p["partition_count"] == json!(3)).collect();
    assert_eq!(current.len(), 3, "{partitions:?}");
    for (index, partition) in current.iter().enumerate() {
        assert_eq!(
            keys(partition).expect("an object"),
            [
                "checkpoint",
                "epoch",
                "lag",
                "last_error",
                "lease_until",
                "oldest_unhandled_at",
                "owner",
                "partition",
                "partition_count",
                "transaction_id",
                "updated_at",
            ]
        );
        assert_eq!(partition["partition"], json!(index));
        // Caught up, the leases given back at the end of the run.
        assert_eq!(
            (&partition["checkpoint"], &partition["lag"], &partition["owner"]),
            (&json!(5), &json!(0), &Value::Null),
            "{partition}"
        );
        let updated = partition["updated_at"].as_str().expect("a time");
        // RFC 3339, in UTC: `2026-11-29T09:07:54.123456Z`.
        assert!(
            updated.len() >= 20 && &updated[10..11] == "T" && updated.ends_with('Z'),
            "{updated}"
        );
    }

    // Replay hands it to the handler again, in the layout the projection last ran with.
    let index = pupsource::partition::partition_of(hash, 3);
    let (code, _, stderr, _) = cli(&["replay", "welcome_emails"]);
    assert_eq!(
        (code, stderr.lines().last()),
        (
            Some(1),
            Some(&*format!(
                "error: projection `welcome_emails` partition {index}/3 failed on event \
                 `UserRegistered` at position 3 after 1 attempt: `user 3` is not an email address"
            ))
        ),
        "{stderr}"
    );

    // The fix (here the stored address is corrected, standing in for a handler that accepts
    // it): the replay mails it and says which partition of the current layout it was in.
    let store =
        SqliteStore::connect(&format!("sqlite://{}", dir.path().join("pupsource.db").display()))
            .await
            .expect("open");
    sqlx::query(
        "UPDATE events SET payload = '{\"email\":\"u3@example.com\"}' WHERE global_position = 3",
    )
    .execute(store.pool())
    .await
    .expect("correct the address");
    store.pool().close().await;
    let (code, stdout, stderr, _) = cli(&["replay", "welcome_emails"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("welcome email #1 to u3@example.com"), "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some(&*format!("replayed 1 parked event of `welcome_emails` (partition {index} of 3)"))
    );
    let (_, stdout, _, _) = cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    assert_eq!(status["projections"][0]["parked"], json!(0));
}

/// The refusals `Runner::check` makes once every flag is known name the flag too.
#[test]
fn refusals_of_related_flags_name_the_flag() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (args, expected) in [
        (
            &["--partition-key", "3", "--total-partitions", "3"][..],
            "error: invalid value for `--partition-key`: invalid partition key 3: with 3 \
             partitions the keys are 0 to 2",
        ),
        (
            &["--worker-id", ""],
            "error: invalid value for `--worker-id`: invalid worker id \"\": is empty",
        ),
        (
            &["--projection", "nope"],
            "error: invalid value for `--projection`: no projection is named `nope`; known: counter",
        ),
        (
            &["--connect-timeout", "0s"],
            "error: invalid value '0s' for '--connect-timeout <DURATION>': the connect timeout \
             must be positive (see --help)",
        ),
        (
            &["--on-error", "retry"],
            "error: invalid value 'retry' for '--on-error <ON_ERROR>' [possible values: stop, \
             park] (see --help)",
        ),
        (
            &["--retries", "1001"],
            "error: invalid value '1001' for '--retries <N>': 1001 is not in 0..=1000 (see --help)",
        ),
    ] {
        let (code, _, stderr, _) = run("counter", dir.path(), &[], args);
        assert_eq!((code, stderr.trim_end()), (Some(2), expected), "{args:?}");
    }
}

/// A TCP proxy in front of PostgreSQL that can go down: while it is, it accepts connections
/// and closes them at once (as a load balancer with no server behind it does), and it has cut
/// every connection it was relaying.
struct Flaky {
    port: u16,
    down: Arc<AtomicBool>,
    /// Connections closed while down.
    dropped: Arc<AtomicUsize>,
    /// The relays of the current up period.
    relays: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Flaky {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let (down, dropped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let relays = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let (d, n, r) = (Arc::clone(&down), Arc::clone(&dropped), Arc::clone(&relays));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                r.lock().expect("relays").spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Flaky { port, down, dropped, relays, accept }
    }

    /// Goes down: cuts every relayed connection, and closes every new one.
    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.relays.lock().expect("relays").abort_all();
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A database outage while a process runs is logged once, with the cause and the retry
/// schedule, at each place that waits for it, and once when the database is back; the
/// failures in between are not logged (at the default level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_where_it_is_waited_out_and_once_when_it_ends() {
    let schema = PgSchema::create().await;
    let pool = schema.pool(2).await;
    let server = PgConnectOptions::from_str(&common::postgres_url()).expect("a valid URL");
    let upstream = tokio::net::lookup_host((server.get_host(), server.get_port()))
        .await
        .expect("the server's address")
        .next()
        .expect("an address");
    let proxy = Flaky::start(upstream).await;
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?options=-c%20search_path%3D{}",
        server.get_username(),
        proxy.port,
        server.get_database().unwrap_or("postgres"),
        schema.name
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_file = dir.path().join("stderr");
    let mut child = Command::new(example_binary("scaling"))
        .current_dir(dir.path())
        .args(["--heartbeat", "100ms", "--poll-interval", "20ms"])
        .env("DATABASE_URL", &url)
        .env("SCALING_SEED_EVENTS", "200")
        .env("SCALING_HANDLER_DELAY_MS", "0")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("start the scaling example");
    let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM scaling_applied")
            .fetch_one(&pool)
            .await
            .unwrap_or(0)
    };
    eventually("the seeded events are applied", Duration::from_secs(60), || async {
        (applied().await == 200).then_some(())
    })
    .await;

    proxy.go_down();
    // Down for as long as it takes the process to try again and again (heartbeats every
    // 100 ms, polls every 20 ms, the retries' backoff).
    eventually("the process tried 30 times", Duration::from_secs(60), || async {
        (proxy.dropped.load(Ordering::SeqCst) >= 30).then_some(())
    })
    .await;
    proxy.come_back();
    eventually("the heartbeats work again", Duration::from_secs(60), || async {
        stderr().contains("heartbeats work again").then_some(())
    })
    .await;
    let store = pupsource::PostgresStore::new(pool.clone());
    let meter = StreamId::new("Metering", "Meter", "after-the-outage");
    let reading = Event::new(&meter, "MeterRead", json!({ "value": 1 }));
    store.append_and_commit(ExpectedVersion::Any, &[reading]).await.expect("append");
    eventually(
        "the event appended after the outage is applied",
        Duration::from_secs(60),
        || async { (applied().await == 201).then_some(()) },
    )
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("exit");
    assert!(status.success(), "{}", stderr());

    // Each line without its time and its fields that vary (how long, how many failures).
    let log = stderr();
    let lines: Vec<&str> = log
        .lines()
        .map(|l| l.split_once("  WARN ").map_or(l, |(_, rest)| rest))
        .map(|l| l.split_once(" failures=").map_or(l, |(line, _)| line))
        .map(|l| l.split_once(" error=").map_or(l, |(line, _)| line))
        .collect();
    let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(
        count("heartbeat failed; retrying every 100ms, until the database answers"),
        1,
        "{log}"
    );
    assert_eq!(count("heartbeats work again"), 1, "{log}");
    let started =
        count("; retrying in 100ms, then doubling up to every 5s, until the database answers");
    assert!(started >= 1, "{log}");
    assert_eq!(
        count("the database is back: could "),
        started,
        "each outage line has its end: {log}"
    );
    let mut distinct = lines.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), lines.len(), "no line repeated: {log}");
    pool.close().await;
}

/// The Prometheus text of `addr` (a plain HTTP/1.0 GET), or `None` while nothing answers.
fn scrape(addr: SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`.
fn sum_of(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `--metrics-addr`: a running `counter` serves its metrics; once it has caught up they agree
/// with the log (every event handled once, none behind its checkpoint, a claim per partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_of_a_running_binary_agrees_with_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let stderr_file = dir.path().join("stderr");
    let mut child = Command::new(example_binary("counter"))
        .current_dir(dir.path())
        .args(["--workers", "4", "--metrics-addr", &addr.to_string(), "--lag-interval", "50ms"])
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("start the counter example");
    // The demo workload is appended in one transaction: once there, it is whole.
    let events = eventually("the demo workload", Duration::from_secs(60), || async {
        let url = format!("sqlite:{}", dir.path().join("pupsource.db").display());
        let store = SqliteStore::connect(&url).await.ok()?;
        let log = store.read_all(pupsource::Position::START, 1 << 20, &Scope::all()).await.ok()?;
        (!log.is_empty()).then_some(log.len() as f64)
    })
    .await;
    let counter = r#"projection="counter""#;
    let text = eventually("metrics that agree with the log", Duration::from_secs(60), || async {
        let text = scrape(addr)?;
        let handled = sum_of(&text, "pupsource_events_handled_total", &[counter]);
        let lag = sum_of(&text, "pupsource_lag_events", &[counter, r#"partitions="4""#]);
        let lagging = text.lines().any(|l| l.starts_with("pupsource_lag_events{"));
        (handled == events && lagging && lag == 0.0).then_some(text)
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("exit");
    let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
    assert!(status.success(), "{stderr}");

    assert_eq!(sum_of(&text, "pupsource_lease_claims_total", &[counter]), 4.0, "{text}");
    for partition in 0..4 {
        let labels = [counter, &format!(r#"partition="{partition}""#)];
        assert!(sum_of(&text, "pupsource_batches_total", &labels) >= 1.0, "{text}");
        assert_eq!(sum_of(&text, "pupsource_lag_seconds", &labels), 0.0, "{text}");
    }
    assert_eq!(sum_of(&text, "pupsource_handler_failures_total", &[counter]), 0.0, "{text}");
    assert_eq!(sum_of(&text, "pupsource_parked_events", &[counter]), 0.0, "{text}");
    assert!(sum_of(&text, "pupsource_reader_pages_total", &[counter]) >= 1.0, "{text}");
    assert!(sum_of(&text, "pupsource_reader_bytes_total", &[counter]) > events * 10.0, "{text}");
    assert!(text.contains("pupsource_batch_duration_seconds"), "{text}");
    assert!(text.contains("pupsource_fence_age_seconds 0"), "SQLite has no fence: {text}");
}

/// A run that starts behind says how far behind it is, then once, at the head of the log,
/// that it caught up and waits (stderr is not a terminal here: log lines, no bars).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_starts_behind_says_so_and_says_once_when_it_caught_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr_file = dir.path().join("stderr");
    let mut child = Command::new(example_binary("counter"))
        .current_dir(dir.path())
        .args(["--workers", "2"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "pupsource::cli=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file).expect("stderr file"))
        .spawn()
        .expect("start the counter example");
    let stderr = || std::fs::read_to_string(&stderr_file).unwrap_or_default();
    let caught_up = eventually("the caught-up line", Duration::from_secs(60), || async {
        stderr()
            .lines()
            .find(|l| l.starts_with("counter: caught up at position "))
            .map(str::to_owned)
    })
    .await;
    let url = format!("sqlite:{}", dir.path().join("pupsource.db").display());
    let store = SqliteStore::connect(&url).await.expect("open");
    let log =
        store.read_all(pupsource::Position::START, 1 << 20, &Scope::all()).await.expect("log");
    let head = log.last().expect("the demo workload").position.global_position;
    assert_eq!(
        caught_up,
        format!("counter: caught up at position {head}; waiting for new events, Ctrl-C to stop")
    );
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("exit");
    let log_text = stderr();
    assert!(status.success(), "{log_text}");
    let behind = format!("catching up projection=counter behind={}", log.len());
    assert_eq!(log_text.matches(&behind).count(), 1, "{log_text}");
    assert_eq!(log_text.matches("caught up at position").count(), 1, "{log_text}");
}
