//! Benchmarks of pupsource against a raw-SQL baseline, in one run, printed as a markdown table.
//!
//! Every workload runs twice on the same database server (or SQLite directory): through
//! pupsource's public API, and through hand-written sqlx code doing the minimum work for the
//! same result on the same schema (the tables of pupsource's own migrations, in a schema or
//! file of its own), with the same durability settings.
//!
//! ```text
//! cargo run --release -p pupsource-bench                      # full run, a few minutes
//! cargo run --release -p pupsource-bench -- --smoke           # seconds; CI runs this
//! cargo run --release -p pupsource-bench -- --write BENCHMARKS.md
//! ```

mod aggregates;
mod baseline;
mod mysql;
mod report;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use pupsource::{PostgresStore, SqliteStore, Store};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use report::Row;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks pupsource against a raw-SQL baseline")]
struct Args {
    /// PostgreSQL server; the benchmark (re)creates the schemas `pupsource_bench_lib` and
    /// `pupsource_bench_raw` there and drops them at the end.
    #[arg(
        long,
        env = "PUPSOURCE_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres_url: String,
    /// Skip the PostgreSQL workloads.
    #[arg(long)]
    no_postgres: bool,
    /// Internal: run only the 8-partition catch-up of the no-op projection on the store at
    /// this URL (after resetting it) and print the process's peak resident set.
    #[arg(long, hide = true, value_name = "URL")]
    runner_only: Option<String>,
    /// Skip the SQLite workloads.
    #[arg(long)]
    no_sqlite: bool,
    /// MySQL or MariaDB server; the benchmark (re)creates the databases `pupsource_bench_lib`,
    /// `pupsource_bench_raw` and `pupsource_bench_autoinc` there and drops them at the end.
    #[arg(
        long,
        env = "PUPSOURCE_BENCH_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql_url: String,
    /// Skip the MySQL / MariaDB workloads.
    #[arg(long)]
    no_mysql: bool,
    /// Events preloaded for the catch-up workloads on MySQL / MariaDB (default: as
    /// `--catch-up-events`).
    #[arg(long, value_name = "N")]
    mysql_catch_up_events: Option<u64>,
    /// Directory for the SQLite files (recreated).
    #[arg(long, default_value = "target/bench-sqlite")]
    sqlite_dir: PathBuf,
    /// Seconds per append workload and round.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds of each append and catch-up workload (pupsource and the baseline in turn): the
    /// table shows medians and the ratio's spread.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Events preloaded for the catch-up workloads.
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,
    /// Events of the catch-up with a SQL read model (one upsert per event).
    #[arg(long, default_value_t = 100_000)]
    read_model_events: u64,
    /// Appends of the idle-latency workload.
    #[arg(long, default_value_t = 1_000)]
    latency_appends: u32,
    /// A short run (CI): 0.5 s per append workload, 20,000 catch-up events, 2,000 read-model
    /// events, 100 latency appends.
    #[arg(long)]
    smoke: bool,
    /// At most N events per batch transaction of the projections (`Runner::batch_size`);
    /// unset, pupsource's adaptive batches.
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// Run only these workloads (repeatable): append, latency, read-model, catch-up, aggregate.
    #[arg(long = "only", value_name = "WORKLOAD")]
    only: Vec<String>,
    /// Also write the report (method, machine, command, table) to this markdown file.
    #[arg(long)]
    write: Option<PathBuf>,
}

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) batch_size: Option<usize>,
    pub(crate) append_time: Duration,
    pub(crate) rounds: u32,
    pub(crate) catch_up_events: u64,
    pub(crate) read_model_events: u64,
    pub(crate) latency_appends: u32,
}

/// One backend's two sides: pupsource's store and the baseline's pool. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Side {
    Postgres { lib: PostgresStore, raw: sqlx::PgPool, url: String },
    Sqlite { lib: SqliteStore, raw: sqlx::SqlitePool, url: String },
    MySql(mysql::Databases),
}

impl Side {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Side::Postgres { .. } => "PostgreSQL",
            Side::Sqlite { .. } => "SQLite",
            Side::MySql(mysql) => mysql.name,
        }
    }

    pub(crate) fn store(&self) -> Store {
        match self {
            Side::Postgres { lib, .. } => lib.clone().into(),
            Side::Sqlite { lib, .. } => lib.clone().into(),
            Side::MySql(mysql) => mysql.lib.clone().into(),
        }
    }

    /// The URL of pupsource's store, for a process of its own.
    pub(crate) fn url(&self) -> &str {
        match self {
            Side::Postgres { url, .. } | Side::Sqlite { url, .. } => url,
            Side::MySql(mysql) => &mysql.url,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn run(args: Args) -> BenchResult<()> {
    if let Some(url) = &args.runner_only {
        let peak = workloads::runner_only(url).await?;
        println!("peak_rss_bytes {peak}");
        return Ok(());
    }
    let sizes = if args.smoke {
        Sizes {
            batch_size: args.batch_size,
            append_time: Duration::from_millis(500),
            rounds: 1,
            catch_up_events: 20_000,
            read_model_events: 2_000,
            latency_appends: 100,
        }
    } else {
        Sizes {
            batch_size: args.batch_size,
            append_time: Duration::from_secs_f64(args.seconds.max(0.1)),
            rounds: args.rounds.max(1),
            catch_up_events: args.catch_up_events.max(1_000),
            read_model_events: args.read_model_events.max(100),
            latency_appends: args.latency_appends.max(10),
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    if !args.no_postgres {
        let side = postgres(&args.postgres_url).await?;
        let result = workloads::all(&side, sizes, &args.only, &mut rows).await;
        drop_postgres(&args.postgres_url).await?;
        result?;
    }
    if !args.no_sqlite {
        let side = sqlite(&args.sqlite_dir).await?;
        workloads::all(&side, sizes, &args.only, &mut rows).await?;
    }
    if !args.no_mysql {
        let sizes = match args.mysql_catch_up_events {
            Some(events) if !args.smoke => Sizes { catch_up_events: events.max(1_000), ..sizes },
            _ => sizes,
        };
        let side = mysql::side(&args.mysql_url).await?;
        let result = workloads::all(&side, sizes, &args.only, &mut rows).await;
        mysql::drop_databases(&args.mysql_url).await?;
        result?;
    }
    let table = report::table(&rows);
    println!("{table}");
    if let Some(path) = &args.write {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        std::fs::write(path, report::document(&table, &command, sizes))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

const SCHEMAS: [&str; 2] = ["pupsource_bench_lib", "pupsource_bench_raw"];

async fn postgres(url: &str) -> BenchResult<Side> {
    let admin = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new().max_connections(1).connect_with(admin.clone()).await?;
    for schema in SCHEMAS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    let connect = |schema: &str| {
        PgPoolOptions::new()
            .max_connections(24)
            .connect_with(admin.clone().options([("search_path", schema)]))
    };
    let lib = PostgresStore::new(connect(SCHEMAS[0]).await?);
    let separator = if url.contains('?') { '&' } else { '?' };
    let lib_url = format!("{url}{separator}options=-c%20search_path%3D{}", SCHEMAS[0]);
    let raw_store = PostgresStore::new(connect(SCHEMAS[1]).await?);
    pupsource::EventStore::migrate(&lib).await?;
    // The baseline uses the same tables, created by the same migrations.
    pupsource::EventStore::migrate(&raw_store).await?;
    Ok(Side::Postgres { lib, raw: raw_store.pool().clone(), url: lib_url })
}

async fn drop_postgres(url: &str) -> BenchResult<()> {
    let pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
    for schema in SCHEMAS {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

async fn sqlite(dir: &std::path::Path) -> BenchResult<Side> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let url = format!("sqlite://{}", dir.join("lib.db").display());
    let lib = SqliteStore::connect(&url).await?;
    pupsource::EventStore::migrate(&lib).await?;
    // The baseline: same tables (pupsource's migrations), same WAL mode and busy timeout.
    let raw_store =
        SqliteStore::connect(&format!("sqlite://{}", dir.join("raw.db").display())).await?;
    pupsource::EventStore::migrate(&raw_store).await?;
    raw_store.pool().close().await;
    let options =
        SqliteConnectOptions::from_str(&format!("sqlite://{}", dir.join("raw.db").display()))?
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
    let raw = SqlitePoolOptions::new().max_connections(16).connect_with(options).await?;
    Ok(Side::Sqlite { lib, raw, url })
}
