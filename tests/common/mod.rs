//! Test databases: each test gets a PostgreSQL schema or a SQLite database of its own, so tests
//! run in parallel and leave nothing behind.
#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::path::{Path, PathBuf};
use std::str::FromStr;

use pupsource::{EventStore, MySqlStore, PostgresStore, SqliteStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The server the PostgreSQL tests use: `PUPSOURCE_TEST_POSTGRES_URL`, or the local default.
pub(crate) fn postgres_url() -> String {
    std::env::var("PUPSOURCE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `sql` on the test server; returns the server's connect options. Panics if the server
/// cannot be reached: PostgreSQL tests never skip silently.
async fn on_server(sql: &str) -> PgConnectOptions {
    let url = postgres_url();
    let admin =
        PgConnectOptions::from_str(&url).expect("PUPSOURCE_TEST_POSTGRES_URL is a valid URL");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for these tests: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await.expect(sql);
    pool.close().await;
    admin
}

/// A PostgreSQL schema of one test; dropped (with everything in it) when this is dropped.
pub(crate) struct PgSchema {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
}

impl PgSchema {
    /// Creates a fresh schema. Panics if the server cannot be reached: PostgreSQL tests never
    /// skip silently.
    pub(crate) async fn create() -> Self {
        let name = format!("pupsource_test_{}", uuid::Uuid::new_v4().simple());
        let admin = on_server(&format!("CREATE SCHEMA {name}")).await;
        let options = admin.options([("search_path", name.as_str())]);
        PgSchema { name, options }
    }

    /// A pool whose connections use this schema.
    pub(crate) async fn pool(&self, max_connections: u32) -> sqlx::PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .expect("connect to the test schema")
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        drop_on_server(&sql, &format!("test schema {}", self.name));
    }
}

/// A PostgreSQL database of one test on the test server; dropped (its sessions ended) when
/// this is dropped.
pub(crate) struct PgDatabase {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
}

impl PgDatabase {
    /// Creates a fresh database. Panics if the server cannot be reached.
    pub(crate) async fn create() -> Self {
        let name = format!("pupsource_test_{}", uuid::Uuid::new_v4().simple());
        let options = on_server(&format!("CREATE DATABASE {name}")).await.database(&name);
        PgDatabase { name, options }
    }

    /// A pool whose connections use this database.
    pub(crate) async fn pool(&self, max_connections: u32) -> sqlx::PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .expect("connect to the test database")
    }

    /// Its URL, for processes.
    pub(crate) fn url(&self) -> String {
        let server = postgres_url();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        drop_on_server(&sql, &format!("test database {}", self.name));
    }
}

/// Runs `sql` (a `DROP` of `what`) on the test server, from a `Drop` impl: outside any async
/// context we could borrow, so on a runtime of its own. Warns if it fails.
fn drop_on_server(sql: &str, what: &str) {
    let sql = sql.to_owned();
    let dropped = std::thread::spawn(move || {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let pool = PgPoolOptions::new().max_connections(1).connect(&postgres_url()).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(())
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("warning: could not drop {what}");
    }
}

/// A migrated PostgreSQL store in a schema of its own.
pub(crate) struct PgTest {
    pub(crate) store: PostgresStore,
    pub(crate) schema: PgSchema,
}

pub(crate) async fn postgres() -> PgTest {
    let schema = PgSchema::create().await;
    let store = PostgresStore::new(schema.pool(20).await);
    store.migrate().await.expect("migrate");
    PgTest { store, schema }
}

/// The server the MySQL tests use: `PUPSOURCE_TEST_MYSQL_URL`, or the local MariaDB.
pub(crate) fn mysql_url() -> String {
    std::env::var("PUPSOURCE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A MySQL database of one test on the test server; dropped when this is dropped.
pub(crate) struct MySqlDatabase {
    pub(crate) name: String,
}

impl MySqlDatabase {
    /// Creates a fresh database. Panics if the server cannot be reached: MySQL tests never
    /// skip silently.
    pub(crate) async fn create() -> Self {
        let name = format!("pupsource_test_{}", uuid::Uuid::new_v4().simple());
        on_mysql_server(&format!("CREATE DATABASE {name}")).await;
        MySqlDatabase { name }
    }

    /// Its URL, for pools and processes.
    pub(crate) fn url(&self) -> String {
        let server = mysql_url();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
        format!("{base}/{}", self.name)
    }
}

impl Drop for MySqlDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {}", self.name);
        let what = format!("test database {}", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(on_mysql_server(&sql));
        })
        .join();
        if dropped.is_err() {
            eprintln!("warning: could not drop {what}");
        }
    }
}

/// Runs `sql` on the MySQL test server. Panics if the server cannot be reached.
async fn on_mysql_server(sql: &str) {
    use sqlx::Connection as _;
    let url = mysql_url();
    let mut conn = sqlx::MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("MySQL at {url} is required for these tests: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.expect(sql);
    let _ = conn.close().await;
}

/// A migrated MySQL store in a database of its own.
pub(crate) struct MySqlTest {
    pub(crate) store: MySqlStore,
    pub(crate) database: MySqlDatabase,
}

pub(crate) async fn mysql() -> MySqlTest {
    let database = MySqlDatabase::create().await;
    let store = MySqlStore::connect(&database.url()).await.expect("connect to MySQL");
    store.migrate().await.expect("migrate");
    MySqlTest { store, database }
}

/// A migrated SQLite store in a temporary file, deleted with the returned directory.
pub(crate) async fn sqlite_file() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("events.db").display());
    let store = SqliteStore::connect(&url).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    (store, dir)
}

/// A migrated in-memory SQLite store.
pub(crate) async fn sqlite_memory() -> SqliteStore {
    let store = SqliteStore::connect("sqlite::memory:").await.expect("open SQLite memory");
    store.migrate().await.expect("migrate");
    store
}

/// Runs `$body` with `$pool` bound to the pool of a [`pupsource::Store`], whichever database
/// it is.
#[macro_export]
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            pupsource::Store::Postgres(s) => {
                let $pool = s.pool();
                $body
            }
            pupsource::Store::Sqlite(s) => {
                let $pool = s.pool();
                $body
            }
            pupsource::Store::MySql(s) => {
                let $pool = s.pool();
                $body
            }
            _ => unreachable!("every backend is listed"),
        }
    };
}

/// Runs each listed generic test (`async fn name<S: EventStore>(store: S)`) once per backend:
/// PostgreSQL, a SQLite file, SQLite `:memory:` and MySQL.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_backends!([postgres, sqlite_file, sqlite_memory, mysql], { $($name),* });
    };
}

/// Runs each listed generic test once on each listed backend (`postgres`, `sqlite_file`,
/// `sqlite_memory`, `mysql`): `on_backends!([postgres, sqlite_file], { test_a, test_b })`.
#[macro_export]
macro_rules! on_backends {
    ([$($backend:ident),* $(,)?], $names:tt) => {
        $( $crate::on_backend!($backend, $names); )*
    };
}

/// One backend's module of [`on_backends!`].
#[macro_export]
macro_rules! on_backend {
    (postgres, { $($name:ident),* $(,)? }) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::postgres().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
    };
    (mysql, { $($name:ident),* $(,)? }) => {
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::common::mysql().await;
                    super::$name(db.store.clone()).await;
                }
            )*
        }
    };
    (sqlite_file, { $($name:ident),* $(,)? }) => {
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = $crate::common::sqlite_file().await;
                    super::$name(store).await;
                }
            )*
        }
    };
    (sqlite_memory, { $($name:ident),* $(,)? }) => {
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::sqlite_memory().await).await;
                }
            )*
        }
    };
}

/// `sql`, written with PostgreSQL's `$1`, `$2`, … placeholders (each used once, in order), as
/// the database takes it: MySQL's are `?`.
pub(crate) fn placeholders(mysql: bool, sql: &str) -> String {
    if !mysql {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `store` is MySQL (whose SQL differs: `?` placeholders, upserts, casts).
pub(crate) fn is_mysql(store: &pupsource::Store) -> bool {
    matches!(store, pupsource::Store::MySql(_))
}

/// Every event in the log, in log order.
pub(crate) async fn whole_log<S: EventStore>(store: &S) -> Vec<pupsource::PersistedEvent> {
    store
        .read_all(pupsource::Position::START, usize::MAX >> 1, &pupsource::Scope::all())
        .await
        .expect("read the log")
}

/// Reads the log until it holds at least `expected` events (PostgreSQL fences reads below the
/// oldest transaction in flight in the database, which may belong to another test), for at
/// most 30 seconds.
pub(crate) async fn log_of_at_least<S: EventStore>(
    store: &S,
    expected: usize,
) -> Vec<pupsource::PersistedEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = whole_log(store).await;
        if log.len() >= expected || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An example's binary, built by `cargo build --examples` (the README's test command builds
/// every target).
pub(crate) fn example_binary(name: &str) -> PathBuf {
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

/// A process of the `scaling` example, killed if the test ends without stopping it.
pub(crate) struct Worker {
    pub(crate) id: String,
    child: Option<std::process::Child>,
    pub(crate) stderr: PathBuf,
}

impl Worker {
    pub(crate) fn start(dir: &Path, url: &str, id: &str, heartbeat: &str, delay_ms: u64) -> Self {
        Self::start_with(dir, url, id, heartbeat, delay_ms, &[], 0)
    }

    /// With more arguments, seeding `seed` events if the log is empty.
    pub(crate) fn start_with(
        dir: &Path,
        url: &str,
        id: &str,
        heartbeat: &str,
        delay_ms: u64,
        args: &[&str],
        seed: u64,
    ) -> Self {
        let stderr = dir.join(format!("{id}.stderr"));
        let child = std::process::Command::new(example_binary("scaling"))
            .current_dir(dir)
            .args(["--worker-id", id, "--heartbeat", heartbeat, "--poll-interval", "50ms"])
            .args(args)
            .env("DATABASE_URL", url)
            .env("SCALING_SEED_EVENTS", seed.to_string())
            .env("SCALING_HANDLER_DELAY_MS", delay_ms.to_string())
            .env("RUST_LOG", "pupsource=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start the scaling example");
        Worker { id: id.to_owned(), child: Some(child), stderr }
    }

    pub(crate) fn pid(&self) -> String {
        self.child.as_ref().map(|c| c.id().to_string()).expect("running")
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status =
            std::process::Command::new("kill").args([signal, &self.pid()]).status().expect("kill");
        assert!(status.success(), "kill {signal} {}", self.id);
    }

    /// SIGTERM, then the exit status, stdout and stderr.
    pub(crate) fn stop(mut self) -> (std::process::ExitStatus, String, String) {
        self.signal("-TERM");
        let output = self.child.take().expect("running").wait_with_output().expect("wait");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        (output.status, String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
    }

    /// Waits until it exits by itself; its exit status, stdout and stderr.
    pub(crate) async fn exit(mut self) -> (std::process::ExitStatus, String, String) {
        let status =
            eventually(&format!("{} exits", self.id), std::time::Duration::from_secs(60), || {
                let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                async move { exited }
            })
            .await;
        let mut stdout = String::new();
        if let Some(mut out) = self.child.take().and_then(|mut c| c.stdout.take()) {
            let _ = std::io::Read::read_to_string(&mut out, &mut stdout);
        }
        (status, stdout, std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    /// SIGKILL: no shutdown, no lease given back.
    pub(crate) fn crash(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A runner running in the background until [`Running::stop`].
pub(crate) struct Running {
    stop: std::sync::Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<pupsource::Result<()>>,
}

impl Running {
    /// Starts `runner` (a clone of it keeps working in the background).
    pub(crate) fn start(runner: &pupsource::Runner) -> Self {
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let (runner, notified) = (runner.clone(), std::sync::Arc::clone(&stop));
        let task = tokio::spawn(async move {
            runner.run_until(async move { notified.notified().await }).await
        });
        Running { stop, task }
    }

    /// Asks the runner to stop and returns how its run ended.
    pub(crate) async fn stop(self) -> pupsource::Result<()> {
        self.stop.notify_one();
        self.task.await.expect("the runner task")
    }
}

/// Polls `check` every 50 ms until it returns `Some`, and returns that; panics with `what`
/// after `limit`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
