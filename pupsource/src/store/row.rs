//! Rows of the store's tables, read by column name, once for every backend.
//!
//! Each backend implements [`StoredRow`] for its row type: how an integer, a text, a time, a
//! UUID and a JSON document are stored there (PostgreSQL: `int4`/`int8`, `timestamptz`,
//! `json`; SQLite: `INTEGER`, microseconds since the Unix epoch, JSON text). Everything that
//! turns a row into a checkpoint, a lease, a parked event, a worker or an event is written
//! once below, against column names.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::backend::{CheckpointInfo, LeaseInfo, ParkedEvent};
use super::lease::{Holder, WorkerStatus};
use super::{CheckpointRead, approximate_size, hash_from_stored};
use crate::checkpoint::CheckpointRow;
use crate::error::{Error, Result};
use crate::event::{LogEvent, PersistedEvent, Position, StreamId};
use crate::partition::Partition;
use crate::process::Process;

/// One row as a backend stores it; every getter takes the column's index, found by name with
/// [`StoredRow::index`].
pub(crate) trait StoredRow {
    /// Whether the backend orders commits by transaction id (PostgreSQL), so that an event row
    /// carries one; elsewhere position order is commit order, and an event's transaction id is
    /// 0 without a column to read.
    const TRANSACTION_IDS: bool = false;

    /// Whether event rows carry all but their position, id and payload packed in one column
    /// `envelope` ([`Envelope::Packed`], SQLite) rather than one column each.
    const PACKED_ENVELOPE: bool = false;

    /// The index of the column named `column`, which holds `kind`: a backend whose getters
    /// do not check each value's type checks the column's here, once per query.
    fn index(&self, column: &str, kind: Stored) -> Result<usize>;
    /// An integer column of any width.
    fn int(&self, index: usize) -> Result<i64>;
    /// A text column, borrowed from the row, `None` for `NULL`.
    fn opt_str(&self, index: usize) -> Result<Option<&str>>;
    /// A text column, `None` for `NULL`.
    fn opt_text(&self, index: usize) -> Result<Option<String>> {
        Ok(self.opt_str(index)?.map(str::to_owned))
    }
    /// A time column, `None` for `NULL`.
    fn opt_time(&self, index: usize) -> Result<Option<OffsetDateTime>>;
    /// A UUID column.
    fn uuid(&self, index: usize) -> Result<Uuid>;
    /// A JSON column's text, as stored.
    fn json(&self, index: usize) -> Result<String>;
}

/// What a column holds, as the getters of [`StoredRow`] read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// [`StoredRow::int`].
    Int,
    /// [`StoredRow::opt_text`].
    Text,
    /// [`StoredRow::opt_time`].
    Time,
    /// [`StoredRow::uuid`].
    Uuid,
    /// [`StoredRow::json`].
    Json,
}

/// Getters by column name, for rows read once (status, checkpoints, leases).
trait ByName: StoredRow {
    fn int_of(&self, column: &str) -> Result<i64> {
        self.int(self.index(column, Stored::Int)?)
    }

    fn count_of(&self, column: &str) -> Result<u32> {
        Ok(u32::try_from(self.int_of(column)?).unwrap_or(0))
    }

    fn text_of(&self, column: &str) -> Result<String> {
        self.opt_text_of(column)?.ok_or_else(|| null(column))
    }

    fn opt_text_of(&self, column: &str) -> Result<Option<String>> {
        self.opt_text(self.index(column, Stored::Text)?)
    }

    fn time_of(&self, column: &str) -> Result<OffsetDateTime> {
        self.opt_time(self.index(column, Stored::Time)?)?.ok_or_else(|| null(column))
    }

    fn position_of(&self) -> Result<Position> {
        Ok(Position {
            transaction_id: self.int_of("transaction_id")?,
            global_position: self.int_of("global_position")?,
        })
    }

    fn partition_of(&self) -> Result<Partition> {
        Ok(Partition {
            count: self.count_of("partition_count")?,
            index: self.count_of("partition")?,
        })
    }
}

impl<R: StoredRow + ?Sized> ByName for R {}

/// A `NULL` where the schema has `NOT NULL`.
fn null(column: &str) -> Error {
    Error::Database(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: "unexpected NULL".into(),
    })
}

impl CheckpointRow {
    /// Columns `partition_count`, `partition`, `transaction_id`, `global_position`.
    pub(crate) fn read(row: &impl StoredRow) -> Result<Self> {
        let Partition { count, index } = row.partition_of()?;
        Ok(CheckpointRow { partition_count: count, partition: index, position: row.position_of()? })
    }
}

impl CheckpointRead {
    /// Columns `owner`, `epoch`, `transaction_id` and `global_position`.
    pub(crate) fn read(row: &impl StoredRow) -> Result<Self> {
        Ok(CheckpointRead {
            owner: row.opt_text_of("owner")?,
            epoch: row.int_of("epoch")?.unsigned_abs(),
            position: row.position_of()?,
        })
    }
}

impl CheckpointInfo {
    /// A checkpoint row with its lease: `partition_count`, `partition`, `transaction_id`,
    /// `global_position`, `updated_at`, `last_error`, `owner`, `epoch`, `lease_until`.
    pub(crate) fn read(row: &impl StoredRow) -> Result<Self> {
        let lease = match row.opt_text_of("owner")? {
            Some(owner) => Some(LeaseInfo {
                owner,
                epoch: row.int_of("epoch")?.unsigned_abs(),
                until: row.opt_time(row.index("lease_until", Stored::Time)?)?,
            }),
            None => None,
        };
        Ok(CheckpointInfo {
            partition: row.partition_of()?,
            position: row.position_of()?,
            updated_at: row.time_of("updated_at")?,
            last_error: row.opt_text_of("last_error")?,
            lease,
        })
    }
}

impl ParkedEvent {
    /// A parked-event row: its position, stream, `event_type`, `error`, `attempts`,
    /// `parked_at`.
    pub(crate) fn read(row: &impl StoredRow) -> Result<Self> {
        Ok(ParkedEvent {
            position: row.position_of()?,
            stream: StreamId {
                context: row.text_of("bounded_context")?,
                aggregate_type: row.text_of("aggregate_type")?,
                aggregate_id: row.text_of("aggregate_id")?,
            },
            event_type: row.text_of("event_type")?,
            error: row.opt_text_of("error")?,
            attempts: row.count_of("attempts")?,
            parked_at: row.time_of("parked_at")?,
        })
    }
}

impl WorkerStatus {
    /// A workers row: `worker_id`, `partition_count`, `started_at`, `heartbeat_at`,
    /// `expires_at`.
    pub(crate) fn read(row: &impl StoredRow) -> Result<Self> {
        Ok(WorkerStatus {
            id: row.text_of("worker_id")?,
            partition_count: row.count_of("partition_count")?,
            started_at: row.time_of("started_at")?,
            heartbeat_at: row.time_of("heartbeat_at")?,
            expires_at: row.time_of("expires_at")?,
        })
    }
}

/// The partitions a heartbeat holds, from `(partition, epoch)` rows.
pub(crate) fn held_partitions(rows: &[impl StoredRow]) -> Result<BTreeMap<u32, u64>> {
    rows.iter()
        .map(|row| Ok((row.count_of("partition")?, row.int_of("epoch")?.unsigned_abs())))
        .collect()
}

/// The workers holding leases, from `(owner, partition, lease_until, host, pid)` rows ordered
/// by owner (`host` `NULL` and `pid` 0 where the registration does not say).
pub(crate) fn holders(rows: &[impl StoredRow]) -> Result<Vec<Holder>> {
    let mut holders: Vec<Holder> = Vec::new();
    for row in rows {
        let (worker, partition) = (row.text_of("owner")?, row.count_of("partition")?);
        let until = row.time_of("lease_until")?;
        match holders.last_mut() {
            Some(holder) if holder.worker == worker => {
                holder.partitions.push(partition);
                holder.until = holder.until.max(until);
            }
            _ => {
                let pid = u32::try_from(row.int_of("pid")?).ok().filter(|&pid| pid != 0);
                let process = match (row.opt_text_of("host")?, pid) {
                    (Some(host), Some(pid)) => Some(Process { host, pid }),
                    _ => None,
                };
                holders.push(Holder { worker, process, until, partitions: vec![partition] });
            }
        }
    }
    Ok(holders)
}

/// Where the columns of an event are in the rows of a query, found by name from its first
/// row: every row of a query has the same columns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventColumns {
    global_position: usize,
    /// `None` where the backend has no transaction ids ([`StoredRow::TRANSACTION_IDS`]).
    transaction_id: Option<usize>,
    event_id: usize,
    payload: usize,
    envelope: Envelope,
}

/// Where the rest of an event (its stream, type, versions, metadata, ids, hash and time) is
/// in a query's rows.
#[derive(Debug, Clone, Copy)]
enum Envelope {
    /// One column each.
    Apart(EnvelopeColumns),
    /// One column named `envelope`: a JSON array of them, in the order of
    /// [`EnvelopeFields`]'s fields ([`StoredRow::PACKED_ENVELOPE`]).
    Packed(usize),
}

/// The indexes of [`Envelope::Apart`]'s columns.
#[derive(Debug, Clone, Copy)]
struct EnvelopeColumns {
    bounded_context: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    aggregate_version: usize,
    event_type: usize,
    event_version: usize,
    metadata: usize,
    causation_id: usize,
    correlation_id: usize,
    trace_id: usize,
    partition_hash: usize,
    created_at: usize,
}

/// An event's envelope as read from its row. Deserialized from [`Envelope::Packed`]'s array,
/// field by field in this order.
#[derive(serde::Deserialize)]
struct EnvelopeFields {
    bounded_context: String,
    aggregate_type: String,
    aggregate_id: String,
    aggregate_version: i64,
    event_type: String,
    event_version: i64,
    metadata: String,
    causation_id: Option<String>,
    correlation_id: Option<String>,
    trace_id: Option<String>,
    partition_hash: i64,
    /// Microseconds since the Unix epoch in the array.
    #[serde(deserialize_with = "micros")]
    created_at: Option<OffsetDateTime>,
}

/// [`EnvelopeFields::created_at`] from microseconds since the Unix epoch.
fn micros<'de, D: serde::Deserializer<'de>>(
    micros: D,
) -> std::result::Result<Option<OffsetDateTime>, D::Error> {
    match <Option<i64> as serde::Deserialize>::deserialize(micros)? {
        None => Ok(None),
        Some(micros) => crate::store::from_unix_micros(micros).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("{micros} µs since 1970 is out of range"))
        }),
    }
}

impl EnvelopeColumns {
    fn of<R: StoredRow>(row: &R) -> Result<Self> {
        Ok(EnvelopeColumns {
            bounded_context: row.index("bounded_context", Stored::Text)?,
            aggregate_type: row.index("aggregate_type", Stored::Text)?,
            aggregate_id: row.index("aggregate_id", Stored::Text)?,
            aggregate_version: row.index("aggregate_version", Stored::Int)?,
            event_type: row.index("event_type", Stored::Text)?,
            event_version: row.index("event_version", Stored::Int)?,
            metadata: row.index("metadata", Stored::Json)?,
            causation_id: row.index("causation_id", Stored::Text)?,
            correlation_id: row.index("correlation_id", Stored::Text)?,
            trace_id: row.index("trace_id", Stored::Text)?,
            partition_hash: row.index("partition_hash", Stored::Int)?,
            created_at: row.index("created_at", Stored::Time)?,
        })
    }

    fn read(&self, row: &impl StoredRow, bad: Bad<'_>) -> Result<EnvelopeFields> {
        let text =
            |index: usize| row.opt_text(index)?.ok_or_else(|| bad("column", &"unexpected NULL"));
        Ok(EnvelopeFields {
            bounded_context: text(self.bounded_context)?,
            aggregate_type: text(self.aggregate_type)?,
            aggregate_id: text(self.aggregate_id)?,
            aggregate_version: row.int(self.aggregate_version)?,
            event_type: text(self.event_type)?,
            event_version: row.int(self.event_version)?,
            metadata: row.json(self.metadata).map_err(|e| bad("metadata", &e))?,
            causation_id: row.opt_text(self.causation_id)?,
            correlation_id: row.opt_text(self.correlation_id)?,
            trace_id: row.opt_text(self.trace_id)?,
            partition_hash: row.int(self.partition_hash)?,
            created_at: row.opt_time(self.created_at).map_err(|e| bad("created_at", &e))?,
        })
    }
}

/// What an event row held that is not an event: what, and why (an [`Error::Decode`] at the
/// event's position).
type Bad<'a> = &'a dyn Fn(&str, &dyn std::fmt::Display) -> Error;

impl EventColumns {
    /// The columns of `row`'s query, by name.
    pub(crate) fn of<R: StoredRow>(row: &R) -> Result<Self> {
        Ok(EventColumns {
            global_position: row.index("global_position", Stored::Int)?,
            transaction_id: R::TRANSACTION_IDS
                .then(|| row.index("transaction_id", Stored::Int))
                .transpose()?,
            event_id: row.index("event_id", Stored::Uuid)?,
            payload: row.index("payload", Stored::Json)?,
            envelope: match R::PACKED_ENVELOPE {
                true => Envelope::Packed(row.index("envelope", Stored::Text)?),
                false => Envelope::Apart(EnvelopeColumns::of(row)?),
            },
        })
    }

    /// The event of `row`, and roughly what it costs in memory.
    pub(crate) fn read(&self, row: &impl StoredRow) -> Result<(LogEvent, usize)> {
        let global_position = row.int(self.global_position)?;
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Decode {
            position: global_position,
            reason: format!("{what}: {e}"),
        };
        let fields = match self.envelope {
            Envelope::Apart(columns) => columns.read(row, &bad)?,
            Envelope::Packed(index) => {
                let text =
                    row.opt_str(index)?.ok_or_else(|| bad("envelope", &"unexpected NULL"))?;
                serde_json::from_str(text).map_err(|e| bad("envelope", &e))?
            }
        };
        let event = LogEvent {
            stream: StreamId {
                context: fields.bounded_context,
                aggregate_type: fields.aggregate_type,
                aggregate_id: fields.aggregate_id,
            },
            event_id: row.uuid(self.event_id)?,
            event_type: fields.event_type,
            event_version: u32::try_from(fields.event_version)
                .map_err(|e| bad("event_version", &e))?,
            payload: row.json(self.payload).map_err(|e| bad("payload", &e))?,
            metadata: fields.metadata,
            causation_id: fields.causation_id,
            correlation_id: fields.correlation_id,
            trace_id: fields.trace_id,
            created_at: fields.created_at.ok_or_else(|| bad("created_at", &"unexpected NULL"))?,
            position: Position {
                transaction_id: self.transaction_id.map_or(Ok(0), |index| row.int(index))?,
                global_position,
            },
            aggregate_version: fields.aggregate_version.unsigned_abs(),
            partition_hash: hash_from_stored(fields.partition_hash),
        };
        let size = approximate_size(&event);
        Ok((event, size))
    }
}

/// Decodes event rows, finding the columns by name on the first.
#[derive(Debug, Default)]
pub(crate) struct EventDecoder(Option<EventColumns>);

impl EventDecoder {
    /// The event of `row`, and roughly what it costs in memory.
    pub(crate) fn read(&mut self, row: &impl StoredRow) -> Result<(LogEvent, usize)> {
        let columns = match self.0 {
            Some(columns) => columns,
            None => *self.0.insert(EventColumns::of(row)?),
        };
        columns.read(row)
    }

    /// The event of a single row.
    pub(crate) fn read_one(row: &impl StoredRow) -> Result<PersistedEvent> {
        EventColumns::of(row)?.read(row)?.0.into_persisted()
    }

    /// The events of `rows`.
    pub(crate) fn read_all(rows: &[impl StoredRow]) -> Result<Vec<PersistedEvent>> {
        let mut decoder = EventDecoder::default();
        rows.iter().map(|row| decoder.read(row)?.0.into_persisted()).collect()
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use sqlx::postgres::PgRow;
    use sqlx::{Column as _, Row as _, TypeInfo as _};

    use super::*;

    impl StoredRow for PgRow {
        const TRANSACTION_IDS: bool = true;

        /// Checks the column's type, so that the getters need not check each value's.
        fn index(&self, column: &str, kind: Stored) -> Result<usize> {
            let (what, types): (&str, &[&str]) = match kind {
                // A transaction id is `xid8`, a type sqlx does not know.
                Stored::Int => ("an integer type", &["INT2", "INT4", "INT8", "XID8"]),
                Stored::Text => ("a text type", &["TEXT", "VARCHAR"]),
                Stored::Time => ("a time type", &["TIMESTAMPTZ"]),
                Stored::Uuid => ("a UUID type", &["UUID"]),
                Stored::Json => ("a JSON type", &["JSON"]),
            };
            let found = self.try_column(column)?;
            let type_name = found.type_info().name();
            match types.iter().any(|name| type_name.eq_ignore_ascii_case(name)) {
                true => Ok(found.ordinal()),
                false => Err(Error::Database(sqlx::Error::ColumnDecode {
                    index: column.to_owned(),
                    source: format!("expected {what} ({}), found {type_name}", types.join(", "))
                        .into(),
                })),
            }
        }

        /// In binary form each integer type of [`StoredRow::index`] is a big-endian integer as
        /// wide as its type, which sqlx's `i64` decodes whatever the width. The getters do not
        /// check types: `index` checked the column's.
        fn int(&self, index: usize) -> Result<i64> {
            Ok(self.try_get_unchecked::<i64, _>(index)?)
        }

        fn opt_str(&self, index: usize) -> Result<Option<&str>> {
            Ok(self.try_get_unchecked(index)?)
        }

        fn opt_time(&self, index: usize) -> Result<Option<OffsetDateTime>> {
            Ok(self.try_get_unchecked(index)?)
        }

        fn uuid(&self, index: usize) -> Result<Uuid> {
            Ok(self.try_get_unchecked(index)?)
        }

        /// `json`, whose binary form is its text (`jsonb`'s would start with a version byte).
        fn json(&self, index: usize) -> Result<String> {
            Ok(self.try_get_unchecked::<&str, _>(index)?.to_owned())
        }
    }
}

/// A time stored as microseconds since the Unix epoch, UTC (SQLite, MySQL's event times).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
fn micros_time(micros: i64, index: usize) -> Result<OffsetDateTime> {
    crate::store::from_unix_micros(micros).ok_or_else(|| {
        Error::Database(sqlx::Error::ColumnDecode {
            index: index.to_string(),
            source: format!("{micros} µs since 1970 is out of range").into(),
        })
    })
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use sqlx::sqlite::SqliteRow;
    use sqlx::{Column as _, Row as _};

    use super::*;

    impl StoredRow for SqliteRow {
        const PACKED_ENVELOPE: bool = true;

        /// The getters check each value's type.
        fn index(&self, column: &str, _: Stored) -> Result<usize> {
            Ok(self.try_column(column)?.ordinal())
        }

        fn int(&self, index: usize) -> Result<i64> {
            Ok(self.try_get(index)?)
        }

        fn opt_str(&self, index: usize) -> Result<Option<&str>> {
            Ok(self.try_get(index)?)
        }

        /// Microseconds since the Unix epoch, UTC.
        fn opt_time(&self, index: usize) -> Result<Option<OffsetDateTime>> {
            match self.try_get::<Option<i64>, _>(index)? {
                None => Ok(None),
                Some(micros) => micros_time(micros, index).map(Some),
            }
        }

        fn uuid(&self, index: usize) -> Result<Uuid> {
            Ok(self.try_get(index)?)
        }

        /// JSON stored as text.
        fn json(&self, index: usize) -> Result<String> {
            Ok(self.try_get(index)?)
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use sqlx::mysql::MySqlRow;
    use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};

    use super::*;

    impl StoredRow for MySqlRow {
        /// The getters check each value's type, but for text ([`StoredRow::opt_str`]).
        fn index(&self, column: &str, _: Stored) -> Result<usize> {
            Ok(self.try_column(column)?.ordinal())
        }

        fn int(&self, index: usize) -> Result<i64> {
            Ok(self.try_get(index)?)
        }

        /// Names and ids are `VARBINARY`: their bytes are the UTF-8 text that was written
        /// (checked as UTF-8 on decoding; sqlx's type check would refuse a binary column).
        fn opt_str(&self, index: usize) -> Result<Option<&str>> {
            Ok(self.try_get_unchecked(index)?)
        }

        /// `DATETIME(6)` in UTC, or (event times) microseconds since the Unix epoch.
        fn opt_time(&self, index: usize) -> Result<Option<OffsetDateTime>> {
            let raw = self.try_get_raw(index)?;
            if raw.is_null() {
                return Ok(None);
            }
            if matches!(raw.type_info().name(), "DATETIME" | "TIMESTAMP") {
                return Ok(Some(self.try_get(index)?));
            }
            micros_time(self.try_get(index)?, index).map(Some)
        }

        fn uuid(&self, index: usize) -> Result<Uuid> {
            Ok(self.try_get(index)?)
        }

        /// JSON stored as text.
        fn json(&self, index: usize) -> Result<String> {
            Ok(self.try_get(index)?)
        }
    }
}
