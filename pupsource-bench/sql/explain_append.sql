-- Server side of one append, pupsource's statements against the baseline's, for BENCHMARKS.md
-- ("Where the time of an append goes"). Run on an empty scratch database:
-- in a schema with pupsource's tables (its migrations; `search_path` set to it), e.g.
--   PGOPTIONS=-csearch_path=probe psql -X -v n=100 -f pupsource-bench/sql/explain_append.sql
-- Each statement runs once to warm up, then once under EXPLAIN, in transactions rolled back.
\set ON_ERROR_STOP on
\if :{?n}
\else
  \set n 100
\endif
SELECT array_agg(gen_random_uuid())::text AS ids,
       array_agg('{"account":' || g || ',"amount":' || g || ',"memo":"' || repeat('m', 140) || '"}')::text AS payloads,
       array_agg('Deposited'::text)::text AS types, array_agg(1)::text AS versions,
       array_agg('{}'::text)::text AS metadata, array_fill(NULL::text, ARRAY[:n])::text AS nulls,
       array_agg(now())::text AS created
  FROM generate_series(1, :n) AS g \gset
\set type1 '{Deposited}'
\set version1 '{1}'
\set metadata1 '{"{}"}'
\set null1 '{NULL}'


PREPARE baseline(text, bigint, bigint, uuid[], text[]) AS
WITH head AS (INSERT INTO aggregate_heads (bounded_context, aggregate_type, aggregate_id,
  version, transaction_id) VALUES ('Bench', 'Account', $1, $2, pg_current_xact_id())
  RETURNING version)
INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version,
  event_id, event_type, event_version, payload, metadata, partition_hash, created_at)
SELECT 'Bench', 'Account', $1, u.ord, u.id, 'Deposited', 1, u.payload::json, '{}', $3, now()
FROM head, UNNEST($4::uuid[], $5::text[]) WITH ORDINALITY AS u(id, payload, ord);

-- pupsource before: text arrays cast to json, a row back per event, sorted twice.
PREPARE before(text, text, text, bigint, bigint, uuid[], text[], int4[], text[], text[], text[], text[], text[], timestamptz[]) AS
WITH head AS (INSERT INTO aggregate_heads AS h (bounded_context, aggregate_type, aggregate_id,
  version, transaction_id) VALUES ($1, $2, $3, $5, pg_current_xact_id())
  ON CONFLICT DO NOTHING RETURNING version),
inserted AS (INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version,
    event_id, event_type, event_version, payload, metadata, causation_id, correlation_id,
    trace_id, partition_hash, created_at)
  SELECT $1, $2, $3, head.version - $5 + u.ord, u.event_id, u.event_type, u.event_version,
    u.payload::json, u.metadata::json, u.causation_id, u.correlation_id, u.trace_id, $4, u.created_at
  FROM head, UNNEST($6::uuid[], $7::text[], $8::int4[], $9::text[], $10::text[], $11::text[],
    $12::text[], $13::text[], $14::timestamptz[]) WITH ORDINALITY AS u(event_id, event_type,
    event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at, ord)
  ORDER BY u.ord RETURNING global_position, transaction_id, aggregate_version)
SELECT global_position, transaction_id::text::bigint AS transaction_id, aggregate_version
FROM inserted ORDER BY aggregate_version;

-- pupsource now (a batch): json arrays, one row back; a column with one value for every event
-- (here the type, version, metadata, ids) is bound as an array of one element.
PREPARE now_batch(text, text, text, bigint, bigint, uuid[], text[], int4[], json[], json[], text[], text[], text[], timestamptz[]) AS
WITH head AS (INSERT INTO aggregate_heads AS h (bounded_context, aggregate_type, aggregate_id,
  version, transaction_id) VALUES ($1, $2, $3, $5, pg_current_xact_id())
  ON CONFLICT DO NOTHING RETURNING version),
inserted AS (INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version,
    event_id, event_type, event_version, payload, metadata, causation_id, correlation_id,
    trace_id, partition_hash, created_at)
  SELECT $1, $2, $3, head.version - $5 + u.ord, u.event_id,
    CASE WHEN cardinality($7) = 1 THEN $7[1] ELSE u.event_type END,
    CASE WHEN cardinality($8) = 1 THEN $8[1] ELSE u.event_version END, u.payload,
    CASE WHEN cardinality($10) = 1 THEN $10[1] ELSE u.metadata END,
    CASE WHEN cardinality($11) = 1 THEN $11[1] ELSE u.causation_id END,
    CASE WHEN cardinality($12) = 1 THEN $12[1] ELSE u.correlation_id END,
    CASE WHEN cardinality($13) = 1 THEN $13[1] ELSE u.trace_id END, $4,
    CASE WHEN cardinality($14) = 1 THEN $14[1] ELSE u.created_at END
  FROM head, UNNEST($6::uuid[], $7::text[], $8::int4[], $9::json[], $10::json[], $11::text[],
    $12::text[], $13::text[], $14::timestamptz[]) WITH ORDINALITY AS u(event_id, event_type,
    event_version, payload, metadata, causation_id, correlation_id, trace_id, created_at, ord)
  ORDER BY u.ord RETURNING global_position)
SELECT (SELECT version FROM head), pg_current_xact_id()::text::bigint,
  (SELECT array_agg(global_position) FROM inserted);

-- pupsource now (one event): scalars.
PREPARE now_one(text, text, text, bigint, bigint, uuid, text, int4, json, json, text, text, text, timestamptz) AS
WITH head AS (INSERT INTO aggregate_heads AS h (bounded_context, aggregate_type, aggregate_id,
  version, transaction_id) VALUES ($1, $2, $3, $5, pg_current_xact_id())
  ON CONFLICT DO NOTHING RETURNING version),
inserted AS (INSERT INTO events (bounded_context, aggregate_type, aggregate_id, aggregate_version,
    event_id, event_type, event_version, payload, metadata, causation_id, correlation_id,
    trace_id, partition_hash, created_at)
  SELECT $1, $2, $3, head.version, $6, $7, $8, $9, $10, $11, $12, $13, $4, $14 FROM head
  RETURNING global_position)
SELECT (SELECT version FROM head), pg_current_xact_id()::text::bigint,
  (SELECT array_agg(global_position) FROM inserted);

-- Warm-up, then the plans (each in a transaction that is rolled back).
\o /dev/null
BEGIN; EXECUTE baseline('w-b', :n, 1, :'ids', :'payloads'); ROLLBACK;
BEGIN; EXECUTE before('Bench', 'Account', 'w-o', 1, :n, :'ids', :'types', :'versions', :'payloads', :'metadata', :'nulls', :'nulls', :'nulls', :'created'); ROLLBACK;
BEGIN; EXECUTE now_batch('Bench', 'Account', 'w-n', 1, :n, :'ids', :'type1', :'version1', :'payloads', :'metadata1', :'null1', :'null1', :'null1', :'created'); ROLLBACK;
\o
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE baseline('s-b', :n, 1, :'ids', :'payloads'); ROLLBACK;
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE before('Bench', 'Account', 's-o', 1, :n, :'ids', :'types', :'versions', :'payloads', :'metadata', :'nulls', :'nulls', :'nulls', :'created'); ROLLBACK;
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE now_batch('Bench', 'Account', 's-n', 1, :n, :'ids', :'type1', :'version1', :'payloads', :'metadata1', :'null1', :'null1', :'null1', :'created'); ROLLBACK;
-- pupsource's single-event statement, with the first event.
BEGIN; EXPLAIN (ANALYZE, BUFFERS) EXECUTE now_one('Bench', 'Account', 's-1', 1, 1, (:'ids'::uuid[])[1], 'Deposited', 1, (:'payloads'::json[])[1], '{}', NULL, NULL, NULL, now()); ROLLBACK;
