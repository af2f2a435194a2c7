//! Where the time of an append goes: CPU time per append of the client process and of the
//! PostgreSQL backend serving it (Linux `/proc/<pid>/schedstat`: the server must run on this
//! machine), for pupsource's `append_and_commit` and for the benchmark's raw-SQL baseline,
//! one writer on a pool of one connection, new streams, the benchmark's ~200-byte event.
//!
//! ```text
//! cargo run --release -p pupsource-bench --example append_profile -- [EVENTS_PER_APPEND] [APPENDS]
//! ```
//!
//! It creates the schemas `append_profile_lib` and `append_profile_raw` (pupsource's tables)
//! in the database of `PUPSOURCE_BENCH_POSTGRES_URL` (default: the benchmark's) and drops them
//! at the end. `synchronous_commit` is off for its sessions: the figures are CPU, not disk.

use std::str::FromStr;
use std::time::Instant;

use pupsource::partition::partition_hash;
use pupsource::{DomainEvent, EventStore, ExpectedVersion, PostgresStore};
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The benchmark's event.
#[derive(Debug, Serialize, serde::Deserialize, pupsource::DomainEvent)]
#[event(context = "Bench", aggregate = "Account")]
struct Deposited {
    account: i64,
    amount: i64,
    memo: String,
}

fn deposit(i: u64) -> Deposited {
    Deposited { account: (i % 10_000) as i64, amount: (i % 1000) as i64, memo: "m".repeat(140) }
}

/// The baseline's statement (`pupsource-bench/src/baseline.rs`).
const BASELINE: &str = "WITH head AS (INSERT INTO aggregate_heads (bounded_context, aggregate_type, \
       aggregate_id, version, transaction_id) VALUES ('Bench', 'Account', $1, $2, pg_current_xact_id()) \
       RETURNING version) \
     INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, \
       event_id, event_type, event_version, payload, metadata, partition_hash, created_at) \
     SELECT 'Bench', 'Account', $1, u.ord, u.id, 'Deposited', 1, u.payload::json, '{}', $3, now() \
     FROM head, UNNEST($4::uuid[], $5::text[]) WITH ORDINALITY AS u(id, payload, ord)";

/// Nanoseconds `pid` (a process or, under `self/task/`, a thread) has run on a CPU.
fn run_ns(path: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{path}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Nanoseconds every thread of this process has run on a CPU.
fn client_ns() -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        total += run_ns(&format!("self/task/{}", task?.file_name().to_string_lossy()));
    }
    Ok(total)
}

/// Microseconds per append: client CPU (of which building the events), backend CPU, wall.
struct Figures {
    client: f64,
    build: f64,
    server: f64,
    wall: f64,
}

async fn measure(pool: &PgPool, lib: bool, per: u64, appends: u64) -> Result<Figures> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(pool).await?;
    let store = PostgresStore::new(pool.clone());
    let (server0, client0, started) = (run_ns(&backend.to_string()), client_ns()?, Instant::now());
    let mut build = 0.0;
    for i in 0..appends {
        let stream = format!("s{i}");
        let at = Instant::now();
        if lib {
            let events = (0..per)
                .map(|k| deposit(i + k).to_event(&stream))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            build += at.elapsed().as_secs_f64();
            store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
        } else {
            let payloads = (0..per)
                .map(|k| serde_json::to_string(&deposit(i + k)))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            build += at.elapsed().as_secs_f64();
            let ids: Vec<uuid::Uuid> = payloads.iter().map(|_| uuid::Uuid::now_v7()).collect();
            let hash = i64::from_ne_bytes(partition_hash(&stream).to_ne_bytes());
            sqlx::query(BASELINE)
                .bind(&stream)
                .bind(i64::try_from(per)?)
                .bind(hash)
                .bind(ids)
                .bind(payloads)
                .execute(pool)
                .await?;
        }
    }
    let n = appends as f64;
    Ok(Figures {
        client: (client_ns()? - client0) as f64 / 1e3 / n,
        build: build * 1e6 / n,
        server: (run_ns(&backend.to_string()) - server0) as f64 / 1e3 / n,
        wall: started.elapsed().as_secs_f64() * 1e6 / n,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let per: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let appends: u64 = args.next().map_or(Ok(if per == 1 { 3000 } else { 300 }), |a| a.parse())?;
    let url = std::env::var("PUPSOURCE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = PgConnectOptions::from_str(&url)?;
    let mut pools = Vec::new();
    for schema in ["append_profile_lib", "append_profile_raw"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&PgPool::connect_with(admin.clone()).await?)
        .await?;
        let options =
            admin.clone().options([("search_path", schema), ("synchronous_commit", "off")]);
        let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await?;
        PostgresStore::new(pool.clone()).migrate().await?;
        pools.push(pool);
    }
    println!("{per} event(s) per append, {appends} appends, µs per append (CPU; wall):");
    // Alternating rounds; the medians are printed last.
    let mut rows: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (side, pool) in pools.iter().enumerate() {
            rows[side].push(measure(pool, side == 0, per, appends).await?);
            // New streams in every round.
            sqlx::raw_sql("TRUNCATE events, aggregate_heads").execute(pool).await?;
        }
    }
    for (side, name) in ["pupsource", "baseline"].into_iter().enumerate() {
        let median = |f: fn(&Figures) -> f64| {
            let mut v: Vec<f64> = rows[side].iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{name:>9}: client {:7.1} (building the events {:6.1}), server {:7.1}; wall {:7.1}",
            median(|f| f.client),
            median(|f| f.build),
            median(|f| f.server),
            median(|f| f.wall),
        );
    }
    for schema in ["append_profile_lib", "append_profile_raw"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&PgPool::connect_with(admin.clone()).await?)
            .await?;
    }
    Ok(())
}
