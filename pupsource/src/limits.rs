//! Every limit pupsource enforces, in one place. Input outside them is refused with a typed
//! error ([`InvalidInput`](crate::InvalidInput)) before anything reaches the database or runs.

use std::time::Duration;

use time::OffsetDateTime;

/// Longest bounded context, aggregate type or event type accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Longest aggregate id, causation id, correlation id or trace id accepted, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// The earliest `created_at` accepted: PostgreSQL's `timestamptz` starts here.
pub const EARLIEST_CREATED_AT: OffsetDateTime = time::macros::datetime!(-4713-11-24 00:00 UTC);

/// The latest `created_at` accepted (the `time` crate's default range).
pub const LATEST_CREATED_AT: OffsetDateTime =
    time::macros::datetime!(9999-12-31 23:59:59.999_999 UTC);

/// Deepest nesting of arrays and objects accepted in a payload or metadata: what serde_json
/// reads back.
pub const MAX_JSON_DEPTH: usize = 127;

/// The largest partition count of a projection, wherever a count is given: `#[projection]`,
/// [`Projection::partitions`](crate::Projection::partitions),
/// [`Runner::partitions`](crate::Runner::partitions) and the CLI's `--workers` /
/// `--total-partitions`.
pub const MAX_PARTITIONS: u32 = 1024;

/// Longest worker id ([`Runner::worker_id`](crate::Runner::worker_id)), in bytes.
pub const MAX_WORKER_ID_LEN: usize = 200;

/// Longest table name ([`Tables`](crate::store::Tables)), in bytes: names derived from it
/// (indexes, the epoch sequence) must fit PostgreSQL's 63.
pub const MAX_TABLE_NAME_LEN: usize = 40;

/// The shortest heartbeat ([`Runner::heartbeat`](crate::Runner::heartbeat)): below, renewals
/// would flood the database.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The longest heartbeat: above, a dead worker's partitions would wait hours (a lease is three
/// heartbeats).
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(3600);

/// The shortest poll interval ([`Runner::poll_interval`](crate::Runner::poll_interval)).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// The longest poll interval: above, a missed wake-up would leave a projection looking stalled
/// for hours.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
