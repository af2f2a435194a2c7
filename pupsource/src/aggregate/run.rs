//! Loading (a snapshot, then a fold of the later events) and the decide–append–retry loop,
//! written once for both backends.

use std::hash::BuildHasher as _;
use std::time::Duration;

use super::backend::{Backend, Connection, StoredSnapshot};
use super::{Aggregate, Change, Dispatch, ExecuteError, Executed, Loaded, Retry, Snapshots};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::event::{AppendResult, Event, StreamId};
use crate::version::ExpectedVersion;

/// Logs of this module go to this target.
const TARGET: &str = "pupsource::aggregate";

/// Loads `stream` through `conn`.
#[tracing::instrument(
    name = "aggregate.load",
    target = "pupsource::aggregate",
    level = "debug",
    skip_all,
    fields(aggregate = A::NAME, %stream)
)]
pub(super) async fn load<B: Backend, A: Aggregate>(
    store: &B,
    conn: &mut Connection<B>,
    stream: &StreamId,
) -> Result<Loaded<A>> {
    let (mut state, snapshot) = match A::SNAPSHOTS {
        Some(policy) => match store.read_snapshot(conn, stream, A::NAME).await? {
            Some(stored) => restore(policy, &stored, stream)
                .map_or((A::default(), None), |state| (state, Some(stored.aggregate_version))),
            None => (A::default(), None),
        },
        None => (A::default(), None),
    };
    let mut version = snapshot.unwrap_or(0);
    let events = store.read_after(conn, stream, version).await?;
    for event in &events {
        apply(&mut state, event, event.aggregate_version)?;
        version = event.aggregate_version;
    }
    Ok(Loaded { state, version, snapshot, folded: events.len() })
}

/// The state of a snapshot row, if it is of the aggregate's snapshot version and decodes.
fn restore<A: Aggregate>(
    policy: Snapshots<A>,
    stored: &StoredSnapshot,
    stream: &StreamId,
) -> Option<A> {
    if stored.snapshot_version != policy.version {
        tracing::debug!(
            target: TARGET,
            %stream,
            stored = stored.snapshot_version,
            current = policy.version,
            "snapshot of another version ignored; folding the whole stream"
        );
        return None;
    }
    match (policy.decode)(&stored.state) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(
                target: TARGET,
                %stream,
                version = stored.aggregate_version,
                %error,
                "snapshot does not decode; ignored, folding the whole stream"
            );
            None
        }
    }
}

/// Applies one event, at stream version `version`, to `state`.
fn apply<A: Aggregate>(state: &mut A, event: &Event, version: u64) -> Result<()> {
    match state.apply_event(event) {
        Ok(Dispatch::Applied) => Ok(()),
        Ok(Dispatch::Unlisted) if A::IGNORED.contains(&event.event_type.as_str()) => Ok(()),
        Ok(Dispatch::Unlisted) => Err(Error::UnlistedEvent {
            aggregate: A::NAME,
            stream: Box::new(event.stream.clone()),
            event_type: event.event_type.clone(),
            aggregate_version: version,
        }),
        Err(source) => Err(Error::EventDecode {
            stream: Box::new(event.stream.clone()),
            event_type: event.event_type.clone(),
            aggregate_version: version,
            source,
        }),
    }
}

/// The decide–append loop of [`AggregateStore::execute`](super::AggregateStore::execute) and
/// its variants: each attempt in the caller's transaction `tx`, or in one of its own.
///
/// An attempt loads the aggregate inside the transaction it appends in: on SQLite that
/// transaction holds the write lock from its start, so nothing can come between the load and
/// the append and no attempt conflicts; on PostgreSQL the window is the decision alone, and a
/// conflicting attempt is rolled back and retried in a new transaction (with a new
/// transaction id, which the per-aggregate order guard needs).
#[tracing::instrument(
    name = "aggregate.execute",
    target = "pupsource::aggregate",
    level = "debug",
    skip_all,
    fields(aggregate = A::NAME, aggregate_id = id)
)]
pub(super) async fn execute<B: Backend, A: Aggregate, E>(
    store: &B,
    mut tx: Option<&mut sqlx::Transaction<'_, B::Database>>,
    id: &str,
    retry: Retry,
    mut decide: impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send,
) -> Result<Executed<A>, ExecuteError<E>> {
    let stream = A::stream(id);
    let mut waits = Backoff::new(retry.first_wait, retry.max_wait);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = match tx.as_deref_mut() {
            Some(tx) => attempt(store, tx, &stream, &mut decide).await,
            None => {
                async {
                    let mut own = store.begin().await?;
                    let done = attempt(store, &mut own, &stream, &mut decide).await?;
                    own.commit().await.map_err(Error::from)?;
                    Ok(done)
                }
                .await
            }
        };
        match outcome {
            Ok((state, AppendResult { to_version, positions, .. })) => {
                return Ok(Executed { state, version: to_version, positions, attempts });
            }
            Err(ExecuteError::Store(source @ Error::Concurrency { .. }))
                if attempts >= retry.attempts =>
            {
                return Err(ExecuteError::Conflict { attempts, source });
            }
            Err(ExecuteError::Store(Error::Concurrency { expected, actual, .. })) => {
                let wait = jitter(waits.next());
                tracing::debug!(
                    target: TARGET,
                    %stream,
                    %expected,
                    actual,
                    attempt = attempts,
                    ?wait,
                    "another writer appended first; deciding again"
                );
                tokio::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// One attempt in `tx`: load, decide, check that the decision's events load back, append
/// them at the loaded version with a snapshot if one is due. The state after the events and
/// what was appended (nothing, at the loaded version, if the decision returned no event).
async fn attempt<B: Backend, A: Aggregate, E>(
    store: &B,
    tx: &mut sqlx::Transaction<'_, B::Database>,
    stream: &StreamId,
    decide: &mut (impl FnMut(&A) -> Result<Vec<Change<A>>, E> + Send),
) -> Result<(A, AppendResult), ExecuteError<E>> {
    let Loaded { mut state, version, snapshot, .. } = load(store, tx, stream).await?;
    let changes = decide(&state).map_err(ExecuteError::Rejected)?;
    if changes.is_empty() {
        let unchanged =
            AppendResult { from_version: version, to_version: version, positions: Vec::new() };
        return Ok((state, unchanged));
    }
    let events = changes
        .into_iter()
        .map(|change| change.into_event(&stream.aggregate_id))
        .collect::<Result<Vec<_>>>()?;
    // Through the decoder a load uses: an event that would not load back is refused here.
    for (event, event_version) in events.iter().zip(version + 1..) {
        apply(&mut state, event, event_version)?;
    }
    let due = due_snapshot(&state, snapshot.unwrap_or(0), version, events.len(), stream);
    let appended = store.append(tx, ExpectedVersion::Exact(version), &events).await?;
    if let Some(snapshot) = due {
        store.write_snapshot(tx, stream, &snapshot).await?;
    }
    Ok((state, appended))
}

/// The snapshot to write with an append of `count` events after `version`, if one is due: the
/// append crosses a multiple of `every`, or the newest usable snapshot (at `base`, 0 if none)
/// falls `every` or more versions behind.
fn due_snapshot<A: Aggregate>(
    state: &A,
    base: u64,
    version: u64,
    count: usize,
    stream: &StreamId,
) -> Option<StoredSnapshot> {
    let policy = A::SNAPSHOTS?;
    let every = policy.every.get();
    let new_version = version.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
    let crosses = version / every != new_version / every;
    if !crosses && new_version - base < every {
        return None;
    }
    match (policy.encode)(state) {
        Ok(state) => Some(StoredSnapshot {
            state_type: A::NAME,
            aggregate_version: new_version,
            snapshot_version: policy.version,
            state,
        }),
        // Loads stay correct without it: they fold the events.
        Err(error) => {
            tracing::warn!(target: TARGET, %stream, %error, "state does not serialize; no snapshot written");
            None
        }
    }
}

/// A random wait between half and all of `bound`, so that writers that collided spread out.
fn jitter(bound: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new().hash_one(bound);
    // The top 53 bits as a fraction in [0, 1).
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    bound.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_bound() {
        let bound = Duration::from_millis(100);
        for _ in 0..1000 {
            let wait = jitter(bound);
            assert!(wait >= bound / 2 && wait <= bound, "{wait:?}");
        }
    }
}
