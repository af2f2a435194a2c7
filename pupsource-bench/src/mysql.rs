//! The MySQL / MariaDB side: its databases, its baselines and its three-way append rounds.
//!
//! The bench (re)creates three databases on the server:
//! - `pupsource_bench_lib`: pupsource's [`MySqlStore`], tables from its migrations;
//! - `pupsource_bench_raw`: the baseline, on the same tables (the same migrations). It takes
//!   its log positions the way pupsource does, from the counter row `events_log` with
//!   `UPDATE … SET position = LAST_INSERT_ID(position + n)`, which holds the row's lock until
//!   the transaction commits (position order is commit order);
//! - `pupsource_bench_autoinc`: the same tables again, except that `events.global_position`
//!   is `AUTO_INCREMENT` and nothing takes the counter row: the append a store without the
//!   gap-free guarantee would do. Only the append workloads use it: the difference between
//!   the two baselines is the cost of the counter-row lock.
//!
//! Both sides use pools of the same size with the session settings of
//! [`MySqlStore::connect`] (`READ COMMITTED`).

use std::str::FromStr;
use std::time::{Duration, Instant};

use pupsource::partition::partition_hash;
use pupsource::{DomainEvent as _, ExpectedVersion, MySqlStore, Position};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Executor as _, MySql, MySqlPool};

use crate::report::{Latency, Row};
use crate::workloads::{deposit, median, spread};
use crate::{BenchResult, Side, Sizes};

/// pupsource's database, the baseline's, and the baseline without the counter lock.
pub(crate) const DATABASES: [&str; 3] =
    ["pupsource_bench_lib", "pupsource_bench_raw", "pupsource_bench_autoinc"];

/// The MySQL side: pupsource's store and the two baselines' pools. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Databases {
    pub(crate) lib: MySqlStore,
    /// The baseline: positions from the counter row, as pupsource.
    pub(crate) raw: MySqlPool,
    /// The baseline on the same tables with AUTO_INCREMENT positions, no counter row.
    pub(crate) autoinc: MySqlPool,
    /// pupsource's database, for a process of its own.
    pub(crate) url: String,
    /// "MySQL" or "MariaDB", as the server says.
    pub(crate) name: &'static str,
}

/// Connections per pool, as on the PostgreSQL side.
const POOL_SIZE: u32 = 24;

/// (Re)creates the databases on the server at `url`, migrates them, and opens the side.
pub(crate) async fn side(url: &str) -> BenchResult<Side> {
    let admin = MySqlConnectOptions::from_str(url)?;
    let pool = MySqlPoolOptions::new().max_connections(1).connect_with(admin.clone()).await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&pool).await?;
    for database in DATABASES {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{database}`; CREATE DATABASE `{database}`"
        )))
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    let connect = |database: &str| {
        MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            // As `MySqlStore::connect` does, on both sides.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                    Ok(())
                })
            })
            .connect_with(admin.clone().database(database))
    };
    let lib = MySqlStore::new(connect(DATABASES[0]).await?);
    pupsource::EventStore::migrate(&lib).await?;
    // The baselines use the same tables, created by the same migrations.
    let raw_store = MySqlStore::new(connect(DATABASES[1]).await?);
    pupsource::EventStore::migrate(&raw_store).await?;
    let autoinc_store = MySqlStore::new(connect(DATABASES[2]).await?);
    pupsource::EventStore::migrate(&autoinc_store).await?;
    // The one difference: positions from AUTO_INCREMENT (lock mode 1 or 2: no lock kept until
    // commit), not from the counter row.
    sqlx::query("ALTER TABLE events MODIFY global_position BIGINT NOT NULL AUTO_INCREMENT")
        .execute(autoinc_store.pool())
        .await?;
    let url = sqlx::ConnectOptions::to_url_lossy(&admin.clone().database(DATABASES[0])).to_string();
    let name = if version.contains("MariaDB") { "MariaDB" } else { "MySQL" };
    Ok(Side::MySql(Databases {
        lib,
        raw: raw_store.pool().clone(),
        autoinc: autoinc_store.pool().clone(),
        url,
        name,
    }))
}

/// Drops the bench's databases on the server at `url`.
pub(crate) async fn drop_databases(url: &str) -> BenchResult<()> {
    let pool = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(MySqlConnectOptions::from_str(url)?)
        .await?;
    for database in DATABASES {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{database}`")))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    Ok(())
}

/// The new stream's head row, as pupsource writes it for `NoStream`: a duplicate key means
/// the stream exists.
async fn insert_head(
    tx: &mut sqlx::Transaction<'_, MySql>,
    stream: &str,
    count: i64,
) -> BenchResult<()> {
    sqlx::query(
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, version) \
         VALUES ('Bench', 'Account', ?, ?)",
    )
    .bind(stream)
    .bind(count)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One multi-row `INSERT` of the events, at positions from `first` (none: AUTO_INCREMENT).
/// The text depends only on the number of events, so it is prepared once per connection.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, MySql>,
    stream: &str,
    payloads: &[String],
    first: Option<i64>,
) -> BenchResult<()> {
    let hash = i64::from_ne_bytes(partition_hash(stream).to_ne_bytes());
    let created_at = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros(),
    )?;
    let mut sql = String::from("INSERT INTO events (");
    if first.is_some() {
        sql.push_str("global_position, ");
    }
    sql.push_str(
        "bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, event_type, \
         event_version, payload, metadata, partition_hash, created_at) VALUES ",
    );
    for i in 0..payloads.len() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        if first.is_some() {
            sql.push_str("?, ");
        }
        sql.push_str(&format!(
            "'Bench', 'Account', ?, {}, ?, 'Deposited', 1, ?, '{{}}', ?, ?)",
            i + 1
        ));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (i, payload) in payloads.iter().enumerate() {
        if let Some(first) = first {
            query = query.bind(first + i64::try_from(i)?);
        }
        query = query
            .bind(stream)
            .bind(uuid::Uuid::now_v7())
            .bind(payload.as_str())
            .bind(hash)
            .bind(created_at);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The baseline's append to a new stream, as pupsource's: in one transaction the head row,
/// the positions from the counter row (locked until commit), the events in one `INSERT`.
pub(crate) async fn append(raw: &MySqlPool, stream: &str, payloads: &[String]) -> BenchResult<()> {
    let count = i64::try_from(payloads.len())?;
    let mut tx = raw.begin().await?;
    insert_head(&mut tx, stream, count).await?;
    let taken =
        sqlx::query("UPDATE events_log SET position = LAST_INSERT_ID(position + ?) WHERE id = 1")
            .bind(count)
            .execute(&mut *tx)
            .await?;
    let first = i64::try_from(taken.last_insert_id())? - count + 1;
    insert_events(&mut tx, stream, payloads, Some(first)).await?;
    tx.commit().await?;
    Ok(())
}

/// The append without the counter row: the head row and the events, positions from
/// AUTO_INCREMENT. Not gap-free: a reader can see a position before a lower one commits.
async fn append_autoinc(pool: &MySqlPool, stream: &str, payloads: &[String]) -> BenchResult<()> {
    let mut tx = pool.begin().await?;
    insert_head(&mut tx, stream, i64::try_from(payloads.len())?).await?;
    insert_events(&mut tx, stream, payloads, None).await?;
    tx.commit().await?;
    Ok(())
}

/// Empties the tables of every database (events, heads, checkpoints, dead letters, the read
/// model) and resets the counter rows.
pub(crate) async fn truncate(side: &Databases) -> BenchResult<()> {
    for pool in [side.lib.pool(), &side.raw, &side.autoinc] {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS bench_balances (account BIGINT PRIMARY KEY, total BIGINT NOT NULL); \
             TRUNCATE TABLE events; TRUNCATE TABLE aggregate_heads; TRUNCATE TABLE checkpoints; \
             TRUNCATE TABLE dead_letters; TRUNCATE TABLE bench_balances; \
             UPDATE events_log SET position = 0 WHERE id = 1",
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Loads `total` events into `pool` (see `baseline::preload`) in server-side bulk statements
/// of `chunk` rows at most 100,000: the numbers come from a cross join of a table of digits
/// (MySQL and MariaDB alike), the partition hashes from a table of their own.
pub(crate) async fn preload(
    pool: &MySqlPool,
    hashes: &[i64],
    aggregates: i64,
    total: i64,
    chunk: i64,
    event_type: &str,
) -> BenchResult<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_digits (d INT PRIMARY KEY); \
         INSERT IGNORE INTO bench_digits (d) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9); \
         CREATE TABLE IF NOT EXISTS bench_hashes (idx BIGINT PRIMARY KEY, h BIGINT NOT NULL); \
         TRUNCATE TABLE bench_hashes",
    )
    .execute(pool)
    .await?;
    for (start, part) in (0i64..).step_by(1_000).zip(hashes.chunks(1_000)) {
        let mut sql = String::from("INSERT INTO bench_hashes (idx, h) VALUES ");
        for i in 0..part.len() {
            sql.push_str(if i == 0 { "(?, ?)" } else { ", (?, ?)" });
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, h) in (start..).zip(part) {
            query = query.bind(i).bind(*h);
        }
        query.execute(pool).await?;
    }
    let created_at = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros(),
    )?;
    let chunk = chunk.min(100_000);
    let mut start = 0;
    while start < total {
        let end = (start + chunk).min(total);
        sqlx::query(
            "INSERT INTO events (global_position, bounded_context, aggregate_type, aggregate_id, \
               aggregate_version, event_id, event_type, event_version, payload, metadata, \
               partition_hash, created_at) \
             SELECT s.g + 1, 'Bench', 'Account', CONCAT('acct-', s.g % ?), s.g DIV ? + 1, \
               UNHEX(LPAD(HEX(s.g + 1), 32, '0')), ?, 1, \
               JSON_OBJECT('account', s.g % ?, 'amount', s.g % 1000, 'memo', REPEAT('m', 140)), \
               '{}', h.h, ? \
             FROM (SELECT ? + a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d AS g \
                   FROM bench_digits a CROSS JOIN bench_digits b CROSS JOIN bench_digits c \
                   CROSS JOIN bench_digits e CROSS JOIN bench_digits f) AS s \
             JOIN bench_hashes h ON h.idx = s.g % ? \
             WHERE s.g < ? ORDER BY s.g",
        )
        .bind(aggregates)
        .bind(aggregates)
        .bind(event_type)
        .bind(aggregates)
        .bind(created_at)
        .bind(start)
        .bind(aggregates)
        .bind(end)
        .execute(pool)
        .await?;
        start = end;
    }
    sqlx::raw_sql(
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, version) \
         SELECT bounded_context, aggregate_type, aggregate_id, MAX(aggregate_version) FROM events \
         GROUP BY bounded_context, aggregate_type, aggregate_id \
         ON DUPLICATE KEY UPDATE version = VALUES(version); \
         UPDATE events_log SET position = (SELECT COALESCE(MAX(global_position), 0) FROM events) \
         WHERE id = 1; \
         ANALYZE TABLE events",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A page of the baseline's keyset scan: `(0, position, payload)` after `after`.
pub(crate) async fn scan_page(
    raw: &MySqlPool,
    after: i64,
    limit: i64,
) -> BenchResult<Vec<(i64, i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT CAST(0 AS SIGNED), global_position, payload FROM events \
         WHERE global_position > ? ORDER BY global_position LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(raw)
    .await?)
}

/// The read model's upsert on MySQL (`?` placeholders, `ON DUPLICATE KEY UPDATE`).
pub(crate) const UPSERT: &str = "INSERT INTO bench_balances (account, total) VALUES (?, ?) \
    ON DUPLICATE KEY UPDATE total = total + VALUES(total)";

/// One page of the baseline's read model: one transaction with one upsert per event and the
/// checkpoint write.
pub(crate) async fn read_model_page(
    raw: &MySqlPool,
    events: &[crate::workloads::Deposited],
    after: Position,
) -> BenchResult<()> {
    let mut tx = raw.begin().await?;
    for e in events {
        sqlx::query(UPSERT).bind(e.account).bind(e.amount).execute(&mut *tx).await?;
    }
    sqlx::query(
        "INSERT INTO checkpoints (projection, partition_count, `partition`, transaction_id, \
         global_position, updated_at) VALUES ('raw', 1, 0, ?, ?, UTC_TIMESTAMP(6)) \
         ON DUPLICATE KEY UPDATE transaction_id = VALUES(transaction_id), \
         global_position = VALUES(global_position)",
    )
    .bind(after.transaction_id)
    .bind(after.global_position)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Who appends in a round of [`appends`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Pupsource,
    /// The baseline, positions from the counter row (as pupsource).
    Locked,
    /// The baseline, positions from AUTO_INCREMENT.
    AutoIncrement,
}

const WRITERS: [Writer; 3] = [Writer::Pupsource, Writer::Locked, Writer::AutoIncrement];

/// The append workloads of the MySQL side (those of `workloads::all`): pupsource, the
/// baseline and the baseline without the counter lock in turn, `rounds` times (each round
/// starts one further along). Two rows per workload: pupsource against each baseline.
pub(crate) async fn appends(side: &Side, sizes: Sizes, rows: &mut Vec<Row>) -> BenchResult<()> {
    let Side::MySql(databases) = side else { return Err("not the MySQL side".into()) };
    for (writers, per_append) in [(1, 1), (4, 1), (16, 1), (1, 100), (4, 100)] {
        truncate(databases).await?;
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut latencies: [Vec<Duration>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        for round in 0..sizes.rounds {
            let mut round_rates = [0.0; 3];
            for k in 0..WRITERS.len() {
                let i = (k + round as usize) % WRITERS.len();
                let (rate, mut samples) =
                    append_round(side, writers, per_append, sizes.append_time, WRITERS[i], round)
                        .await?;
                round_rates[i] = rate;
                latencies[i].append(&mut samples);
            }
            for i in 0..3 {
                rates[i].push(round_rates[i]);
            }
            for (i, ratios) in ratios.iter_mut().enumerate() {
                ratios.push(round_rates[0] / round_rates[i + 1].max(f64::MIN_POSITIVE));
            }
        }
        let plural = if writers == 1 { "" } else { "s" };
        let workload = if per_append == 1 {
            format!("append, 1 event/tx, {writers} writer{plural}")
        } else {
            format!("append, {per_append} events/tx, {writers} writer{plural}")
        };
        let lib_rate = median(&mut rates[0]);
        let lib_latency = Latency::of(&mut latencies[0]);
        for (i, suffix) in [(1, ""), (2, "; baseline without the counter lock (AUTO_INCREMENT)")] {
            let spread = spread(&ratios[i - 1]);
            rows.push(Row {
                backend: side.name(),
                workload: format!("{workload}{suffix}"),
                unit: "events/s",
                lib: lib_rate,
                raw: Some(median(&mut rates[i])),
                ratio: Some((median(&mut ratios[i - 1]), spread)).filter(|_| sizes.rounds > 1),
                lib_latency,
                raw_latency: Latency::of(&mut latencies[i]),
            });
        }
    }
    Ok(())
}

/// One writer's round of [`appends`]: events per second and the latency of each append.
async fn append_round(
    side: &Side,
    writers: usize,
    per_append: usize,
    time: Duration,
    who: Writer,
    round: u32,
) -> BenchResult<(f64, Vec<Duration>)> {
    let Side::MySql(databases) = side else { return Err("not the MySQL side".into()) };
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = side.store();
        let (raw, autoinc) = (databases.raw.clone(), databases.autoinc.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                // Streams are new in every round, on every side.
                let stream = format!("r{round}-w{w}-{i}");
                let at = Instant::now();
                if who == Writer::Pupsource {
                    let events = (0..per_append as u64)
                        .map(|k| deposit(i + k).to_event(&stream))
                        .collect::<Result<Vec<_>, _>>()?;
                    store.append_and_commit(ExpectedVersion::NoStream, &events).await?;
                } else {
                    let payloads: Vec<String> = (0..per_append as u64)
                        .map(|k| serde_json::to_string(&deposit(i + k)))
                        .collect::<Result<_, _>>()?;
                    match who {
                        Writer::AutoIncrement => {
                            append_autoinc(&autoinc, &stream, &payloads).await?
                        }
                        _ => append(&raw, &stream, &payloads).await?,
                    }
                }
                latencies.push(at.elapsed());
                i += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    crate::workloads::writers_rate(tasks, per_append, started).await
}
