//! The raw-SQL baseline: hand-written sqlx code doing the minimum work for the same rows, on
//! the same tables. Also the bulk loader both sides are preloaded with (not measured).

use pupsource::Position;
use pupsource::partition::partition_hash;
use sqlx::{PgPool, SqlitePool};

use crate::workloads::{AGGREGATES, Deposited};
use crate::{BenchResult, Side};

/// Appends `payloads` to a new stream: one statement (PostgreSQL) or one `BEGIN IMMEDIATE`
/// transaction (SQLite), the head row and the event rows.
pub(crate) async fn append(side: &Side, stream: &str, payloads: &[String]) -> BenchResult<()> {
    let ids: Vec<uuid::Uuid> = payloads.iter().map(|_| uuid::Uuid::now_v7()).collect();
    let hash = i64::from_ne_bytes(partition_hash(stream).to_ne_bytes());
    let count = i64::try_from(payloads.len())?;
    match side {
        Side::Postgres { raw, .. } => {
            sqlx::query(
                "WITH head AS (INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, \
                   version, transaction_id) VALUES ('Bench', 'Account', $1, $2, pg_current_xact_id()) \
                   RETURNING version) \
                 INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, \
                   event_id, event_type, event_version, payload, metadata, partition_hash, created_at) \
                 SELECT 'Bench', 'Account', $1, u.ord, u.id, 'Deposited', 1, u.payload::json, '{}', $3, now() \
                 FROM head, UNNEST($4::uuid[], $5::text[]) WITH ORDINALITY AS u(id, payload, ord)",
            )
            .bind(stream)
            .bind(count)
            .bind(hash)
            .bind(ids)
            .bind(payloads)
            .execute(raw)
            .await?;
        }
        Side::Sqlite { raw, .. } => {
            let mut tx = raw.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(
                "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, version) \
                 VALUES ('Bench', 'Account', ?1, ?2)",
            )
            .bind(stream)
            .bind(count)
            .execute(&mut *tx)
            .await?;
            // Anonymous `?` placeholders, and the hash bound rather than spliced in, so the text
            // depends only on the number of events (prepared once per connection), and SQLite
            // binds each value without looking its number up in the parameter list.
            let mut sql = String::from(
                "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, \
                 event_id, event_type, event_version, payload, metadata, partition_hash, created_at) VALUES ",
            );
            for i in 0..payloads.len() {
                sql.push_str(if i == 0 { "" } else { ", " });
                sql.push_str(&format!(
                    "('Bench', 'Account', ?, {}, ?, 'Deposited', 1, ?, '{{}}', ?, 0)",
                    i + 1
                ));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, payload) in ids.iter().zip(payloads) {
                query = query.bind(stream).bind(*id).bind(payload.as_str()).bind(hash);
            }
            query.execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Side::MySql(mysql) => crate::mysql::append(&mysql.raw, stream, payloads).await?,
    }
    Ok(())
}

/// Empties both sides' tables (events, heads, checkpoints, dead letters, the read model).
pub(crate) async fn truncate(side: &Side) -> BenchResult<()> {
    let tables = ["events", "aggregate_heads", "checkpoints", "dead_letters", "bench_balances"];
    match side {
        Side::Postgres { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS bench_balances (account BIGINT PRIMARY KEY, total BIGINT NOT NULL); \
                     TRUNCATE events, aggregate_heads, checkpoints, dead_letters, bench_balances",
                )
                .execute(pool)
                .await?;
            }
        }
        Side::Sqlite { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS bench_balances (account INTEGER PRIMARY KEY, total INTEGER NOT NULL)",
                )
                .execute(pool)
                .await?;
                for table in tables {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
                        .execute(pool)
                        .await?;
                }
            }
        }
        Side::MySql(mysql) => crate::mysql::truncate(mysql).await?,
    }
    Ok(())
}

/// Empties the read model (`bench_balances`, which [`truncate`] created) of both sides.
pub(crate) async fn clear_read_model(side: &Side) -> BenchResult<()> {
    match side {
        Side::Postgres { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                sqlx::raw_sql("TRUNCATE bench_balances").execute(pool).await?;
            }
        }
        Side::Sqlite { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                sqlx::raw_sql("DELETE FROM bench_balances").execute(pool).await?;
            }
        }
        Side::MySql(mysql) => {
            for pool in [mysql.lib.pool(), &mysql.raw] {
                sqlx::raw_sql("TRUNCATE TABLE bench_balances").execute(pool).await?;
            }
        }
    }
    Ok(())
}

/// Loads `count` events of `event_type` (about 200-byte payloads, round-robin over
/// [`AGGREGATES`] accounts) into both sides, in server-side bulk statements of 100,000 rows.
pub(crate) async fn preload(side: &Side, count: u64, event_type: &str) -> BenchResult<()> {
    let hashes: Vec<i64> = (0..AGGREGATES)
        .map(|a| i64::from_ne_bytes(partition_hash(&format!("acct-{a}")).to_ne_bytes()))
        .collect();
    let aggregates = i64::try_from(AGGREGATES)?;
    let chunk = 100_000i64;
    let total = i64::try_from(count)?;
    match side {
        Side::Postgres { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                preload_postgres(pool, &hashes, aggregates, total, chunk, event_type).await?;
            }
        }
        Side::Sqlite { lib, raw, .. } => {
            for pool in [lib.pool(), raw] {
                preload_sqlite(pool, &hashes, aggregates, total, chunk, event_type).await?;
            }
        }
        Side::MySql(mysql) => {
            for pool in [mysql.lib.pool(), &mysql.raw] {
                crate::mysql::preload(pool, &hashes, aggregates, total, chunk, event_type).await?;
            }
        }
    }
    Ok(())
}

async fn preload_postgres(
    pool: &PgPool,
    hashes: &[i64],
    aggregates: i64,
    total: i64,
    chunk: i64,
    event_type: &str,
) -> BenchResult<()> {
    let mut start = 0;
    while start < total {
        let end = (start + chunk).min(total);
        sqlx::query(
            "INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, \
               event_type, event_version, payload, metadata, partition_hash, created_at) \
             SELECT 'Bench', 'Account', 'acct-' || (g % $3), g / $3 + 1, gen_random_uuid(), $4, 1, \
               json_build_object('account', g % $3, 'amount', g % 1000, 'memo', repeat('m', 140)), '{}', \
               ($5::bigint[])[g % $3 + 1], now() \
             FROM generate_series($1::bigint, $2::bigint - 1) AS g",
        )
        .bind(start)
        .bind(end)
        .bind(aggregates)
        .bind(event_type)
        .bind(hashes)
        .execute(pool)
        .await?;
        start = end;
    }
    sqlx::query(
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, version, transaction_id) \
         SELECT bounded_context, aggregate_type, aggregate_id, max(aggregate_version), max(transaction_id) \
         FROM events GROUP BY 1, 2, 3 \
         ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE \
         SET version = EXCLUDED.version, transaction_id = EXCLUDED.transaction_id",
    )
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE events").execute(pool).await?;
    Ok(())
}

async fn preload_sqlite(
    pool: &SqlitePool,
    hashes: &[i64],
    aggregates: i64,
    total: i64,
    chunk: i64,
    event_type: &str,
) -> BenchResult<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::raw_sql("CREATE TEMP TABLE IF NOT EXISTS bench_hashes (idx INTEGER PRIMARY KEY, h INTEGER NOT NULL); DELETE FROM bench_hashes")
        .execute(&mut *tx)
        .await?;
    for (idx, h) in hashes.iter().enumerate() {
        sqlx::query("INSERT INTO bench_hashes (idx, h) VALUES (?1, ?2)")
            .bind(i64::try_from(idx)?)
            .bind(h)
            .execute(&mut *tx)
            .await?;
    }
    let mut start = 0;
    while start < total {
        let end = (start + chunk).min(total);
        sqlx::query(
            "WITH RECURSIVE g(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM g WHERE x + 1 < ?2) \
             INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version, event_id, \
               event_type, event_version, payload, metadata, partition_hash, created_at) \
             SELECT 'Bench', 'Account', 'acct-' || (x % ?3), x / ?3 + 1, randomblob(16), ?4, 1, \
               json_object('account', x % ?3, 'amount', x % 1000, 'memo', printf('%.140c', 'm')), '{}', \
               (SELECT h FROM bench_hashes WHERE idx = x % ?3), 0 \
             FROM g",
        )
        .bind(start)
        .bind(end)
        .bind(aggregates)
        .bind(event_type)
        .execute(&mut *tx)
        .await?;
        start = end;
    }
    sqlx::query(
        "INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id, version) \
         SELECT bounded_context, aggregate_type, aggregate_id, max(aggregate_version) FROM events GROUP BY 1, 2, 3 \
         ON CONFLICT (bounded_context, aggregate_type, aggregate_id) DO UPDATE SET version = excluded.version",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Reads the whole log in `(transaction_id, global_position)` order, `page` rows at a time
/// (keyset paging, PostgreSQL fenced like pupsource's reader), decoding every payload.
/// Returns how many events were decoded.
pub(crate) async fn scan(side: &Side, page: i64) -> BenchResult<u64> {
    let mut after = Position::START;
    let mut decoded = 0u64;
    loop {
        let rows: Vec<(i64, i64, String)> = match side {
            Side::Postgres { raw, .. } => sqlx::query_as(
                "SELECT transaction_id::text::bigint, global_position, payload::text FROM events AS e \
                     WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                       AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY e.transaction_id, e.global_position LIMIT $3",
            )
            .bind(after.transaction_id)
            .bind(after.global_position)
            .bind(page)
            .fetch_all(raw)
            .await?,
            Side::Sqlite { raw, .. } => {
                sqlx::query_as(
                    "SELECT 0, global_position, payload FROM events WHERE global_position > ?1 \
                     ORDER BY global_position LIMIT ?2",
                )
                .bind(after.global_position)
                .bind(page)
                .fetch_all(raw)
                .await?
            }
            Side::MySql(mysql) => {
                crate::mysql::scan_page(&mysql.raw, after.global_position, page).await?
            }
        };
        let Some(last) = rows.last() else { return Ok(decoded) };
        after = Position { transaction_id: last.0, global_position: last.1 };
        for (_, _, payload) in &rows {
            let event: Deposited = serde_json::from_str(payload)?;
            std::hint::black_box(event);
            decoded += 1;
        }
    }
}

/// The SQL read model without pupsource: pages of 100 events; per page one transaction with
/// one upsert per event and the checkpoint write.
pub(crate) async fn read_model(side: &Side) -> BenchResult<u64> {
    let upsert = "INSERT INTO bench_balances (account, total) VALUES ($1, $2) \
                  ON CONFLICT (account) DO UPDATE SET total = bench_balances.total + excluded.total";
    // SQLite's checkpoint table has no default for `updated_at`; PostgreSQL's has.
    let pg_checkpoint = "INSERT INTO checkpoints (projection, partition_count, partition, transaction_id, \
                         global_position) VALUES ('raw', 1, 0, $1, $2) \
                         ON CONFLICT (projection, partition_count, partition) DO UPDATE \
                         SET transaction_id = excluded.transaction_id, global_position = excluded.global_position";
    let sqlite_checkpoint = "INSERT INTO checkpoints (projection, partition_count, partition, transaction_id, \
                             global_position, updated_at) VALUES ('raw', 1, 0, $1, $2, 0) \
                             ON CONFLICT (projection, partition_count, partition) DO UPDATE \
                             SET transaction_id = excluded.transaction_id, global_position = excluded.global_position";
    let mut handled = 0u64;
    let mut after = Position::START;
    loop {
        let page: Vec<(i64, i64, String)> = match side {
            Side::Postgres { raw, .. } => {
                sqlx::query_as(
                    "SELECT transaction_id::text::bigint, global_position, payload::text FROM events AS e \
                     WHERE (transaction_id, global_position) > ($1::text::xid8, $2) \
                       AND transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
                     ORDER BY e.transaction_id, e.global_position LIMIT 100",
                )
                .bind(after.transaction_id)
                .bind(after.global_position)
                .fetch_all(raw)
                .await?
            }
            Side::Sqlite { raw, .. } => {
                sqlx::query_as("SELECT 0, global_position, payload FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT 100")
                    .bind(after.global_position)
                    .fetch_all(raw)
                    .await?
            }
            Side::MySql(mysql) => {
                crate::mysql::scan_page(&mysql.raw, after.global_position, 100).await?
            }
        };
        let Some(last) = page.last() else { return Ok(handled) };
        after = Position { transaction_id: last.0, global_position: last.1 };
        let events: Vec<Deposited> =
            page.iter().map(|(_, _, p)| serde_json::from_str(p)).collect::<Result<_, _>>()?;
        match side {
            Side::Postgres { raw, .. } => {
                let mut tx = raw.begin().await?;
                for e in &events {
                    sqlx::query(upsert).bind(e.account).bind(e.amount).execute(&mut *tx).await?;
                }
                sqlx::query(pg_checkpoint)
                    .bind(after.transaction_id)
                    .bind(after.global_position)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Side::Sqlite { raw, .. } => {
                let mut tx = raw.begin_with("BEGIN IMMEDIATE").await?;
                for e in &events {
                    sqlx::query(upsert).bind(e.account).bind(e.amount).execute(&mut *tx).await?;
                }
                sqlx::query(sqlite_checkpoint)
                    .bind(after.transaction_id)
                    .bind(after.global_position)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Side::MySql(mysql) => crate::mysql::read_model_page(&mysql.raw, &events, after).await?,
        }
        handled += u64::try_from(page.len())?;
    }
}
