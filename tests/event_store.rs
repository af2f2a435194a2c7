//! The event store's behaviour, proven on PostgreSQL, a SQLite file and SQLite `:memory:`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use pupsource::limits::{MAX_ID_LEN, MAX_NAME_LEN};
use pupsource::{
    ConstraintKind, Error, Event, EventStore, ExpectedVersion, FieldProblem, InvalidInput,
    Position, Scope, StreamId,
};
use serde_json::json;
use time::macros::datetime;
use tokio::sync::Barrier;

use common::{log_of_at_least, whole_log};

on_every_backend!(
    every_field_round_trips,
    a_batch_keeps_each_events_fields_whether_shared_or_not,
    empty_optional_ids_stay_empty_strings,
    expected_version_mismatch_is_a_concurrency_error_and_writes_nothing,
    exact_zero_is_no_stream_and_any_appends_anywhere,
    racing_writers_on_one_stream_have_one_winner_and_no_hole,
    writers_on_different_streams_all_succeed,
    multi_event_append_orders_positions_by_version,
    large_append_is_stored_whole,
    read_stream_honours_version_ranges,
    read_all_pages_in_log_order,
    read_all_pushes_scope_filters_down,
    duplicate_event_id_is_not_a_concurrency_conflict,
    bad_input_is_rejected_and_writes_nothing,
    migrate_is_idempotent,
);

fn user(id: &str) -> StreamId {
    StreamId::new("Identity", "User", id)
}

async fn every_field_round_trips<S: EventStore>(store: S) {
    let stream = StreamId::new("Sales ü", "Order", "order-1 \u{1F600}");
    let event = Event::new(
        &stream,
        "OrderPlaced",
        json!({ "total": 42.5, "lines": [1, 2], "note": "a\u{0}b" }),
    )
    .with_event_id(uuid::Uuid::new_v4())
    .with_event_version(3)
    .with_metadata(json!({ "user_agent": "test", "nested": { "x": null } }))
    .with_causation_id("cmd-1")
    .with_correlation_id("flow-9")
    .with_trace_id("00-abc-def-01")
    .with_created_at(datetime!(2024-02-29 23:59:58.123456789 +02:00));
    let appended = store
        .append_and_commit(ExpectedVersion::NoStream, std::slice::from_ref(&event))
        .await
        .expect("append");
    assert_eq!((appended.from_version, appended.to_version), (1, 1));

    let read = store.read_stream(&stream, ..).await.expect("read").events;
    assert_eq!(read.len(), 1);
    let stored = &read[0];
    let mut expected = event.clone();
    // Stores keep microseconds, in UTC.
    expected.created_at = datetime!(2024-02-29 21:59:58.123456 UTC);
    assert_eq!(stored.event, expected);
    assert_eq!(stored.aggregate_version, 1);
    assert_eq!(stored.position, appended.positions[0]);
    assert_eq!(stored.partition_hash, pupsource::partition::partition_hash("order-1 \u{1F600}"));

    let log = log_of_at_least(&store, 1).await;
    assert_eq!(log, read);
}

/// Two batches: in the first every optional field is the same for all events (a store may
/// send such a column once), in the second each differs from its neighbour in turn.
async fn a_batch_keeps_each_events_fields_whether_shared_or_not<S: EventStore>(store: S) {
    let at = datetime!(2025-06-01 12:00:00.5 UTC);
    let event = |stream: &StreamId, n: i32| Event::new(stream, "Noted", json!({ "n": n }));
    let shared_stream = user("shared");
    let shared: Vec<Event> = (0..3)
        .map(|n| {
            event(&shared_stream, n)
                .with_event_version(2)
                .with_metadata(json!({ "by": "ops" }))
                .with_causation_id("cmd-7")
                .with_correlation_id("flow-7")
                .with_trace_id("trace-7")
                .with_created_at(at)
        })
        .collect();
    let mixed_stream = user("mixed");
    let mut mixed: Vec<Event> = (0..4).map(|n| event(&mixed_stream, n)).collect();
    mixed[0].event_type = "Other".to_owned();
    mixed[1].event_version = 5;
    mixed[1].metadata = json!({ "k": [1, 2] });
    mixed[2].causation_id = Some("c".to_owned());
    mixed[2].correlation_id = Some(String::new());
    mixed[3].trace_id = Some("t".to_owned());
    mixed[3].created_at = at;
    for events in [&shared, &mixed] {
        store.append_and_commit(ExpectedVersion::NoStream, events).await.expect("append");
        let stored = store.read_stream(&events[0].stream, ..).await.expect("read").events;
        let stored: Vec<&Event> = stored.iter().map(|stored| &stored.event).collect();
        assert_eq!(stored, events.iter().collect::<Vec<_>>());
    }
}

async fn empty_optional_ids_stay_empty_strings<S: EventStore>(store: S) {
    let stream = user("u1");
    let with_empty =
        Event::new(&stream, "UserCreated", json!({})).with_causation_id("").with_trace_id("");
    store.append_and_commit(ExpectedVersion::NoStream, &[with_empty]).await.expect("append");
    let stored = &store.read_stream(&stream, ..).await.expect("read").events[0];
    assert_eq!(stored.causation_id.as_deref(), Some(""));
    assert_eq!(stored.correlation_id, None);
    assert_eq!(stored.trace_id.as_deref(), Some(""));
}

async fn expected_version_mismatch_is_a_concurrency_error_and_writes_nothing<S: EventStore>(
    store: S,
) {
    let stream = user("u1");
    let first = Event::new(&stream, "UserCreated", json!({}));
    store.append_and_commit(ExpectedVersion::NoStream, &[first]).await.expect("append");

    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
        ExpectedVersion::Exact(7),
    ] {
        let event = Event::new(&stream, "UserRenamed", json!({}));
        let err = store.append_and_commit(expected, &[event]).await.expect_err("must conflict");
        match err {
            Error::Concurrency { stream: s, expected: e, actual } => {
                assert_eq!((s, e, actual), (stream.clone(), expected, 1));
            }
            other => panic!("expected a concurrency error, got {other:?}"),
        }
    }
    // A stream that does not exist is at version 0.
    let ghost = Event::new(&user("ghost"), "UserRenamed", json!({}));
    let err = store
        .append_and_commit(ExpectedVersion::Exact(1), &[ghost])
        .await
        .expect_err("must conflict");
    assert!(matches!(err, Error::Concurrency { actual: 0, .. }), "{err:?}");

    assert_eq!(store.read_stream(&stream, ..).await.expect("read").len(), 1);
    assert!(store.read_stream(&user("ghost"), ..).await.expect("read").is_empty());
    assert!(err.is_retryable());
}

async fn exact_zero_is_no_stream_and_any_appends_anywhere<S: EventStore>(store: S) {
    let stream = user("u1");
    let r = store
        .append_and_commit(ExpectedVersion::Exact(0), &[Event::new(&stream, "A", json!({}))])
        .await
        .expect("exact 0");
    assert_eq!(r.to_version, 1);
    let r = store
        .append_and_commit(ExpectedVersion::Any, &[Event::new(&stream, "B", json!({}))])
        .await
        .expect("any");
    assert_eq!((r.from_version, r.to_version), (2, 2));
    let r = store
        .append_and_commit(ExpectedVersion::Exact(2), &[Event::new(&stream, "C", json!({}))])
        .await
        .expect("exact 2");
    assert_eq!(r.to_version, 3);
    let r = store
        .append_and_commit(ExpectedVersion::Any, &[Event::new(&user("u2"), "A", json!({}))])
        .await
        .expect("any on new");
    assert_eq!(r.to_version, 1);
    let types: Vec<_> = store
        .read_stream(&stream, ..)
        .await
        .expect("read")
        .events
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(types, ["A", "B", "C"]);
}

/// 16 tasks append to one stream at once expecting it new: one wins, 15 get `Concurrency`.
/// Then 16 tasks each append once more, reloading and retrying on conflict: versions end up
/// 1..=17, no hole, no duplicate.
async fn racing_writers_on_one_stream_have_one_winner_and_no_hole<S: EventStore>(store: S) {
    let stream = user("contended");
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, stream, barrier) = (store.clone(), stream.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let event = Event::new(&stream, "Claimed", json!({ "writer": i }));
            store.append_and_commit(ExpectedVersion::NoStream, &[event]).await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(r) => {
                winners += 1;
                assert_eq!(r.to_version, 1);
            }
            Err(Error::Concurrency { actual: 1, expected: ExpectedVersion::NoStream, .. }) => {}
            Err(other) => panic!("loser got {other:?}"),
        }
    }
    assert_eq!(winners, 1);

    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, stream) = (store.clone(), stream.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            loop {
                let version = store.read_stream(&stream, ..).await.expect("read").version();
                let event = Event::new(&stream, "Bumped", json!({ "writer": i }));
                match store.append_and_commit(ExpectedVersion::Exact(version), &[event]).await {
                    Ok(r) => return (r.to_version, conflicts),
                    Err(Error::Concurrency { .. }) => conflicts += 1,
                    Err(other) => panic!("writer {i}: {other:?}"),
                }
            }
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.expect("task").0);
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=17).collect::<Vec<_>>());
    let stored: Vec<u64> = store
        .read_stream(&stream, ..)
        .await
        .expect("read")
        .events
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(stored, (1..=17).collect::<Vec<_>>());
}

async fn writers_on_different_streams_all_succeed<S: EventStore>(store: S) {
    let barrier = Arc::new(Barrier::new(16));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, barrier) = (store.clone(), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let stream = user(&format!("u{i}"));
            let events = [
                Event::new(&stream, "UserCreated", json!({})),
                Event::new(&stream, "UserActivated", json!({})),
            ];
            store.append_and_commit(ExpectedVersion::NoStream, &events).await
        }));
    }
    for task in tasks {
        let r = task.await.expect("task").expect("append");
        assert_eq!((r.from_version, r.to_version), (1, 2));
    }
    let log = log_of_at_least(&store, 32).await;
    assert_eq!(log.len(), 32);
    let streams: HashSet<_> = log.iter().map(|e| e.stream.aggregate_id.clone()).collect();
    assert_eq!(streams.len(), 16);
}

async fn multi_event_append_orders_positions_by_version<S: EventStore>(store: S) {
    let stream = user("u1");
    let events: Vec<_> = (0..50).map(|i| Event::new(&stream, "Step", json!({ "i": i }))).collect();
    let r = store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    assert_eq!((r.from_version, r.to_version, r.positions.len()), (1, 50, 50));
    assert!(
        r.positions.windows(2).all(|w| w[0] < w[1]),
        "positions follow versions: {:?}",
        r.positions
    );
    let log = log_of_at_least(&store, 50).await;
    let order: Vec<_> =
        log.iter().map(|e| (e.aggregate_version, e.payload["i"].as_u64())).collect();
    let expected: Vec<_> = (1..=50).map(|v| (v, Some(v - 1))).collect();
    assert_eq!(order, expected);
    assert_eq!(log.iter().map(|e| e.position).collect::<Vec<_>>(), r.positions);
}

/// More events than SQLite accepts bind parameters for in one statement.
async fn large_append_is_stored_whole<S: EventStore>(store: S) {
    let stream = user("big");
    let events: Vec<_> =
        (0..5_000).map(|i| Event::new(&stream, "Step", json!({ "i": i }))).collect();
    let r = store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    assert_eq!((r.to_version, r.positions.len()), (5_000, 5_000));
    let read = store.read_stream(&stream, ..).await.expect("read");
    assert_eq!(read.len(), 5_000);
    assert!(read.events.iter().enumerate().all(|(i, e)| e.payload["i"] == json!(i)));
}

async fn read_stream_honours_version_ranges<S: EventStore>(store: S) {
    let stream = user("u1");
    let events: Vec<_> =
        (1..=10).map(|i| Event::new(&stream, format!("E{i}"), json!({}))).collect();
    store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&user("other"), "E1", json!({}))],
        )
        .await
        .expect("append");
    let versions =
        |s: pupsource::Stream| s.events.iter().map(|e| e.aggregate_version).collect::<Vec<_>>();
    assert_eq!(
        versions(store.read_stream(&stream, ..).await.expect("all")),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(versions(store.read_stream(&stream, 3..=5).await.expect("3..=5")), [3, 4, 5]);
    assert_eq!(versions(store.read_stream(&stream, 3..5).await.expect("3..5")), [3, 4]);
    assert_eq!(versions(store.read_stream(&stream, 9..).await.expect("9..")), [9, 10]);
    assert_eq!(versions(store.read_stream(&stream, ..=2).await.expect("..=2")), [1, 2]);
    assert!(store.read_stream(&stream, 11..).await.expect("11..").is_empty());
    assert!(store.read_stream(&stream, 5..5).await.expect("5..5").is_empty());
    let partial = store.read_stream(&stream, 2..=4).await.expect("2..=4");
    assert_eq!((partial.version(), partial.len()), (4, 3));
}

async fn read_all_pages_in_log_order<S: EventStore>(store: S) {
    for i in 0..7 {
        let stream = user(&format!("u{i}"));
        let events = [
            Event::new(&stream, "A", json!({ "i": i })),
            Event::new(&stream, "B", json!({ "i": i })),
        ];
        store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    }
    let all = log_of_at_least(&store, 14).await;
    assert_eq!(all.len(), 14);
    let mut paged = Vec::new();
    let mut after = Position::START;
    loop {
        let page = store.read_all(after, 3, &Scope::all()).await.expect("page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.position;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert!(store.read_all(after, 10, &Scope::all()).await.expect("past the end").is_empty());
}

async fn read_all_pushes_scope_filters_down<S: EventStore>(store: S) {
    let streams = [
        StreamId::new("Identity", "User", "u1"),
        StreamId::new("Identity", "Team", "t1"),
        StreamId::new("Sales", "Order", "o1"),
    ];
    for s in &streams {
        let events = [Event::new(s, "Created", json!({})), Event::new(s, "Deleted", json!({}))];
        store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    }
    log_of_at_least(&store, 6).await;
    let read = |scope: Scope| {
        let store = store.clone();
        async move {
            store
                .read_all(Position::START, 100, &scope)
                .await
                .expect("read")
                .iter()
                .map(|e| format!("{}:{}", e.stream.aggregate_id, e.event_type))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(Scope::all().contexts(["Sales"])).await, ["o1:Created", "o1:Deleted"]);
    assert_eq!(
        read(Scope::all().aggregate_types(["Team", "Order"])).await,
        ["t1:Created", "t1:Deleted", "o1:Created", "o1:Deleted"]
    );
    assert_eq!(
        read(Scope::all().event_types(["Deleted"])).await,
        ["u1:Deleted", "t1:Deleted", "o1:Deleted"]
    );
    assert_eq!(
        read(Scope::all().contexts(["Identity"]).event_types(["Created"])).await,
        ["u1:Created", "t1:Created"]
    );
    assert!(read(Scope::all().contexts(["Nowhere"])).await.is_empty());
    assert_eq!(read(Scope::all()).await.len(), 6);
}

async fn duplicate_event_id_is_not_a_concurrency_conflict<S: EventStore>(store: S) {
    let first = Event::new(&user("u1"), "UserCreated", json!({}));
    store
        .append_and_commit(ExpectedVersion::NoStream, std::slice::from_ref(&first))
        .await
        .expect("append");
    let copy = Event::new(&user("u2"), "UserCreated", json!({})).with_event_id(first.event_id);
    let err = store
        .append_and_commit(ExpectedVersion::NoStream, &[copy])
        .await
        .expect_err("duplicate id");
    assert!(matches!(&err, Error::DuplicateEvent { stream } if *stream == user("u2")), "{err:?}");
    assert!(!err.is_retryable());
    assert!(store.read_stream(&user("u2"), ..).await.expect("read").is_empty());
    // The failed append left no head behind: the stream is still new.
    store
        .append_and_commit(
            ExpectedVersion::NoStream,
            &[Event::new(&user("u2"), "UserCreated", json!({}))],
        )
        .await
        .expect("append");
}

async fn bad_input_is_rejected_and_writes_nothing<S: EventStore>(store: S) {
    let s = user("u1");
    let ok = || Event::new(&s, "UserCreated", json!({}));
    let field_err = |field: &'static str, problem| {
        Error::InvalidInput(InvalidInput::Field { index: 0, field, problem })
    };
    let mut cases: Vec<(Vec<Event>, ExpectedVersion, String)> = vec![(
        vec![],
        ExpectedVersion::Any,
        format!("{:?}", Error::InvalidInput(InvalidInput::NoEvents)),
    )];
    let mut mixed = vec![ok(), Event::new(&user("u2"), "UserCreated", json!({}))];
    cases.push((
        mixed.clone(),
        ExpectedVersion::Any,
        format!(
            "{:?}",
            Error::InvalidInput(InvalidInput::MixedStreams {
                index: 1,
                expected: Box::new(s.clone()),
                found: Box::new(user("u2")),
            })
        ),
    ));
    mixed[1] = ok().with_event_id(mixed[0].event_id);
    cases.push((
        mixed.clone(),
        ExpectedVersion::Any,
        format!(
            "{:?}",
            Error::InvalidInput(InvalidInput::RepeatedEventId {
                index: 1,
                event_id: mixed[0].event_id
            })
        ),
    ));
    let with_stream =
        |c: &str, t: &str, i: &str| Event::new(&StreamId::new(c, t, i), "E", json!({}));
    cases.push((
        vec![with_stream("", "User", "1")],
        ExpectedVersion::Any,
        format!("{:?}", field_err("context", FieldProblem::Empty)),
    ));
    cases.push((
        vec![with_stream("C", "", "1")],
        ExpectedVersion::Any,
        format!("{:?}", field_err("aggregate_type", FieldProblem::Empty)),
    ));
    cases.push((
        vec![with_stream("C", "T", "")],
        ExpectedVersion::Any,
        format!("{:?}", field_err("aggregate_id", FieldProblem::Empty)),
    ));
    cases.push((
        vec![Event::new(&s, "", json!({}))],
        ExpectedVersion::Any,
        format!("{:?}", field_err("event_type", FieldProblem::Empty)),
    ));
    let long_name = "n".repeat(MAX_NAME_LEN + 1);
    cases.push((
        vec![with_stream(&long_name, "T", "1")],
        ExpectedVersion::Any,
        format!(
            "{:?}",
            field_err(
                "context",
                FieldProblem::TooLong { len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN }
            )
        ),
    ));
    let long_id = "i".repeat(MAX_ID_LEN + 1);
    cases.push((
        vec![with_stream("C", "T", &long_id)],
        ExpectedVersion::Any,
        format!(
            "{:?}",
            field_err(
                "aggregate_id",
                FieldProblem::TooLong { len: MAX_ID_LEN + 1, max: MAX_ID_LEN }
            )
        ),
    ));
    cases.push((
        vec![ok().with_correlation_id(long_id.clone())],
        ExpectedVersion::Any,
        format!(
            "{:?}",
            field_err(
                "correlation_id",
                FieldProblem::TooLong { len: MAX_ID_LEN + 1, max: MAX_ID_LEN }
            )
        ),
    ));
    cases.push((
        vec![with_stream("C", "T", "a\0b")],
        ExpectedVersion::Any,
        format!("{:?}", field_err("aggregate_id", FieldProblem::NulCharacter)),
    ));
    cases.push((
        vec![ok().with_trace_id("t\0")],
        ExpectedVersion::Any,
        format!("{:?}", field_err("trace_id", FieldProblem::NulCharacter)),
    ));
    cases.push((
        vec![ok().with_event_version(0)],
        ExpectedVersion::Any,
        format!(
            "{:?}",
            field_err("event_version", FieldProblem::OutOfRange { max: i32::MAX as u64 })
        ),
    ));
    cases.push((
        vec![ok().with_event_version(u32::MAX)],
        ExpectedVersion::Any,
        format!(
            "{:?}",
            field_err("event_version", FieldProblem::OutOfRange { max: i32::MAX as u64 })
        ),
    ));
    cases.push((
        vec![ok()],
        ExpectedVersion::Exact(u64::MAX),
        format!("{:?}", Error::InvalidInput(InvalidInput::VersionOutOfRange { version: u64::MAX })),
    ));
    cases.push((
        vec![ok()],
        ExpectedVersion::Exact(i64::MAX as u64),
        format!(
            "{:?}",
            Error::InvalidInput(InvalidInput::VersionOutOfRange { version: i64::MAX as u64 + 1 })
        ),
    ));

    for (events, expected, want) in cases {
        let err = store
            .append_and_commit(expected, &events)
            .await
            .expect_err("bad input must be rejected");
        assert_eq!(format!("{err:?}"), want);
    }
    let json_err = Event::from_json(&s, "E", "{not json").expect_err("invalid JSON");
    assert!(matches!(json_err, Error::InvalidInput(InvalidInput::Payload { .. })), "{json_err:?}");

    assert!(whole_log(&store).await.is_empty(), "nothing may be written");
    assert!(store.read_stream(&s, ..).await.expect("read").is_empty());
    // And the stream is still new.
    store.append_and_commit(ExpectedVersion::NoStream, &[ok()]).await.expect("append");
}

async fn migrate_is_idempotent<S: EventStore>(store: S) {
    store
        .append_and_commit(ExpectedVersion::NoStream, &[Event::new(&user("u1"), "A", json!({}))])
        .await
        .expect("append");
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    assert_eq!(log_of_at_least(&store, 1).await.len(), 1);
}

#[test]
fn constraint_kinds_display_like_the_database_says_them() {
    assert_eq!(ConstraintKind::NotNull.to_string(), "not-null constraint");
}

/// SQLite hands each event row's envelope (everything but its position, id and payload) over
/// as one JSON array: a row changed behind the store's back so that a field cannot be read
/// fails the read with a decode error at its position that says what was wrong, and the
/// rows before it are not affected.
#[tokio::test]
async fn a_sqlite_row_changed_behind_the_stores_back_fails_the_read_at_its_position() {
    let store = common::sqlite_memory().await;
    let events: Vec<Event> =
        (0..3).map(|i| Event::new(&user("u1"), "A", json!({ "i": i }))).collect();
    store.append_and_commit(ExpectedVersion::NoStream, &events).await.expect("append");
    for (value, want) in [
        (
            "'noon'",
            "stored event at position 2 cannot be decoded: envelope: invalid type: string \
             \"noon\", expected i64",
        ),
        (
            "9223372036854775807",
            "stored event at position 2 cannot be decoded: envelope: 9223372036854775807 µs \
             since 1970 is out of range",
        ),
    ] {
        let update = format!("UPDATE events SET created_at = {value} WHERE global_position = 2");
        sqlx::query(sqlx::AssertSqlSafe(update))
            .execute(store.pool())
            .await
            .expect("change the row");
        let err = store.read_all(Position::START, 10, &Scope::all()).await.expect_err("bad row");
        assert!(err.to_string().starts_with(want), "{err}");
        let first = store.read_all(Position::START, 1, &Scope::all()).await.expect("first row");
        assert_eq!(first[0].payload, json!({ "i": 0 }));
    }
}
