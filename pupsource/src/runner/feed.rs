//! The hand-over between a projection's reader and its partition workers.
//!
//! The reader offers each page of the log to the feed; the feed splits it by partition into
//! one bounded queue per running partition (*slot*). A page is placed whole or not at all:
//! the reader waits until every slot that gets events from it has room, so memory stays
//! bounded in events and in bytes however far behind the projection is, and `read_through`
//! always means "every event up to here is in its slot's queue, or was taken from it".
//!
//! While the reader is behind (its last page was full: more follows at once), a worker is
//! woken, and takes, only once its slot is *ripe*: half full in events or bytes, or waited for
//! by the reader. So catching up, each worker takes hundreds of events at a time whatever the
//! partition count, instead of a few per page; near the head every event goes out at once.
//!
//! A slot whose worker is retrying a failing handler (in backoff) would stop every other
//! partition if the reader waited for it. Such a slot is *detached* instead: its queue is
//! dropped and the reader stops feeding it. Once its worker goes on, it reads the log by
//! itself from where it got to, up to `read_through`, and *attaches* again when it has caught
//! up with the reader: under the feed's lock, only if nothing was placed meanwhile, so no
//! event is missed or delivered twice. The other partitions keep their pace throughout.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::event::{LogEvent, Position};
use crate::partition::partition_of;

/// How much each slot may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotLimits {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
}

pub(crate) struct Feed {
    partition_count: u32,
    limits: SlotLimits,
    state: Mutex<State>,
    /// Wakes the reader when a slot made room or started retrying.
    reader: Notify,
    /// Wakes each slot's worker when events arrived or the reader finished.
    workers: BTreeMap<u32, Notify>,
}

struct State {
    /// Every event up to here was placed in the queue of every attached slot of its
    /// partition (or taken from it).
    read_through: Position,
    /// The reader stopped: it reached the head (until caught up) or was cancelled.
    finished: bool,
    /// The reader's last page was full: more follows at once.
    behind: bool,
    slots: BTreeMap<u32, Slot>,
}

struct Slot {
    events: VecDeque<(LogEvent, usize)>,
    bytes: usize,
    /// Everything of this partition up to here is in `events` or was taken.
    through: Position,
    /// What the worker has taken so far.
    taken: Position,
    attached: bool,
    /// The worker is waiting out a backoff: do not wait for it.
    retrying: bool,
    /// The reader waits for room in this slot.
    wanted: bool,
}

impl Slot {
    fn has_room(&self, events: usize, bytes: usize, limits: SlotLimits) -> bool {
        events == 0
            || self.events.is_empty()
            || (self.events.len() + events <= limits.events && self.bytes + bytes <= limits.bytes)
    }

    /// Worth taking while the reader is behind.
    fn ripe(&self, limits: SlotLimits) -> bool {
        self.wanted || 2 * self.events.len() >= limits.events || 2 * self.bytes >= limits.bytes
    }
}

/// What a worker gets from [`Feed::take`].
#[derive(Debug)]
pub(crate) enum Take {
    /// Events of its partition in log order (possibly none), and everything of its partition
    /// up to `through` has now been taken.
    Events { events: Vec<LogEvent>, through: Position },
    /// The slot is detached: read the log alone, after what was taken, up to `read_through`.
    ReadAlone { read_through: Position },
    /// Nothing more will come.
    Finished,
}

impl Feed {
    /// A feed for the partitions in `checkpoints` (each with where it starts) of a layout
    /// of `partition_count`; the reader starts at `start`.
    pub(crate) fn new(
        partition_count: u32,
        checkpoints: &BTreeMap<u32, Position>,
        start: Position,
        limits: SlotLimits,
    ) -> Self {
        let slots = checkpoints
            .iter()
            .map(|(&index, &checkpoint)| {
                let slot = Slot {
                    events: VecDeque::new(),
                    bytes: 0,
                    through: checkpoint,
                    taken: checkpoint,
                    attached: true,
                    retrying: false,
                    wanted: false,
                };
                (index, slot)
            })
            .collect();
        Feed {
            partition_count,
            limits,
            state: Mutex::new(State { read_through: start, finished: false, behind: false, slots }),
            reader: Notify::new(),
            workers: checkpoints.keys().map(|&index| (index, Notify::new())).collect(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock; recover the state if one ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the workers of the slots worth taking (all of them unless the reader is behind).
    fn wake_workers(&self, state: &State) {
        for (index, notify) in &self.workers {
            let ready = state.slots.get(index).is_none_or(|slot| slot.ripe(self.limits));
            if !state.behind || ready {
                notify.notify_one();
            }
        }
    }

    /// Places a page (events in log order with their sizes, all up to `through`; `full` if
    /// more follows at once), waiting for room in every slot that gets events from it;
    /// detaches slots that are retrying instead of waiting for them. Returns false if
    /// cancelled first (nothing was placed).
    pub(crate) async fn offer(
        &self,
        page: Vec<(LogEvent, usize)>,
        through: Position,
        full: bool,
        cancel: &CancellationToken,
    ) -> bool {
        let mut split: BTreeMap<u32, Vec<(LogEvent, usize)>> = BTreeMap::new();
        for (event, size) in page {
            let partition = partition_of(event.partition_hash, self.partition_count);
            split.entry(partition).or_default().push((event, size));
        }
        loop {
            let wait = self.reader.notified();
            {
                let mut state = self.lock();
                let limits = self.limits;
                let mut blocked = false;
                for (index, slot) in state.slots.iter_mut().filter(|(_, s)| s.attached) {
                    let (events, bytes) = split.get(index).map_or((0, 0), |events| {
                        let fresh = events.iter().filter(|(e, _)| e.position > slot.through);
                        fresh.fold((0, 0), |(n, b), (_, size)| (n + 1, b + size))
                    });
                    if slot.has_room(events, bytes, limits) {
                        continue;
                    }
                    if slot.retrying {
                        // Its worker reads alone from what it took.
                        slot.attached = false;
                        slot.events.clear();
                        slot.bytes = 0;
                        slot.through = slot.taken;
                        tracing::debug!(target: "pupsource::runner", partition = index, "retrying partition detached from the reader");
                    } else {
                        blocked = true;
                        slot.wanted = true;
                    }
                }
                if !blocked {
                    for (index, slot) in state.slots.iter_mut().filter(|(_, s)| s.attached) {
                        for (event, size) in split.remove(index).into_iter().flatten() {
                            if event.position > slot.through {
                                slot.bytes += size;
                                slot.events.push_back((event, size));
                            }
                        }
                        slot.through = slot.through.max(through);
                    }
                    state.read_through = state.read_through.max(through);
                    state.behind = full;
                    self.wake_workers(&state);
                    return true;
                }
                self.wake_workers(&state);
            }
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = wait => {}
            }
        }
    }

    /// The reader found nothing more for now: whatever is queued goes out at once. Returns
    /// whether every attached slot's worker already took everything placed so far.
    pub(crate) fn caught_up(&self) -> bool {
        let mut state = self.lock();
        if state.behind {
            state.behind = false;
            self.wake_workers(&state);
        }
        let read_through = state.read_through;
        state
            .slots
            .values()
            .filter(|s| s.attached)
            .all(|s| s.events.is_empty() && s.taken >= read_through)
    }

    /// The reader will place nothing more.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.behind = false;
        self.wake_workers(&state);
    }

    /// Takes up to `max` events of partition `index` (waiting for some), or says that the
    /// worker must read alone, or that nothing more will come. `None` if cancelled.
    pub(crate) async fn take(
        &self,
        index: u32,
        max: usize,
        cancel: &CancellationToken,
    ) -> Option<Take> {
        let notify = self.workers.get(&index)?;
        loop {
            let wait = notify.notified();
            {
                let mut state = self.lock();
                let (read_through, finished, behind) =
                    (state.read_through, state.finished, state.behind);
                let slot = state.slots.get_mut(&index)?;
                if !slot.attached {
                    return Some(Take::ReadAlone { read_through });
                }
                let queued = !slot.events.is_empty() || slot.through > slot.taken;
                if queued && (!behind || slot.ripe(self.limits)) {
                    slot.wanted = false;
                    let n = slot.events.len().min(max.max(1));
                    let events: Vec<LogEvent> = slot
                        .events
                        .drain(..n)
                        .map(|(event, size)| {
                            slot.bytes -= size;
                            event
                        })
                        .collect();
                    let through = match slot.events.front() {
                        // More is queued: everything up to the last taken event.
                        Some(_) => events.last().map_or(slot.taken, |e| e.position),
                        None => slot.through,
                    };
                    slot.taken = through;
                    drop(state);
                    self.reader.notify_one();
                    return Some(Take::Events { events, through });
                }
                if finished {
                    return Some(Take::Finished);
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = wait => {}
            }
        }
    }

    /// A detached slot whose worker read the log alone up to `through`: attaches it again if
    /// the reader has placed nothing beyond `through` meanwhile. Returns whether it did.
    pub(crate) fn attach(&self, index: u32, through: Position) -> bool {
        let mut state = self.lock();
        let read_through = state.read_through;
        let Some(slot) = state.slots.get_mut(&index) else { return false };
        if slot.attached || through != read_through {
            return slot.attached;
        }
        slot.attached = true;
        slot.through = through;
        slot.taken = through;
        true
    }

    /// Marks the slot's worker as waiting out a backoff (the reader detaches it rather than
    /// wait for room in it), or as going on again.
    pub(crate) fn set_retrying(&self, index: u32, retrying: bool) {
        if let Some(slot) = self.lock().slots.get_mut(&index) {
            slot.retrying = retrying;
        }
        self.reader.notify_one();
    }

    /// The worker of partition `index` is gone: the reader no longer waits for its slot.
    pub(crate) fn close(&self, index: u32) {
        self.lock().slots.remove(&index);
        self.reader.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use serde_json::json;

    use super::*;
    use crate::event::{Event, PersistedEvent, StreamId};
    use crate::partition::partition_hash;

    /// Events at `positions`, all of aggregate `id`, each weighing `size` bytes.
    fn page(
        id: &str,
        positions: impl IntoIterator<Item = i64>,
        size: usize,
    ) -> Vec<(LogEvent, usize)> {
        let stream = StreamId::new("Test", "Thing", id);
        positions
            .into_iter()
            .map(|p| {
                let event = LogEvent::from(PersistedEvent {
                    event: Event::new(&stream, "Step", json!({})),
                    position: Position { transaction_id: 0, global_position: p },
                    aggregate_version: u64::try_from(p).unwrap_or(0),
                    partition_hash: partition_hash(id),
                });
                (event, size)
            })
            .collect()
    }

    fn at(p: i64) -> Position {
        Position { transaction_id: 0, global_position: p }
    }

    /// One partition, whose slot holds at most 10 events or 1,000 bytes.
    fn feed() -> Feed {
        let limits = SlotLimits { events: 10, bytes: 1_000 };
        Feed::new(1, &BTreeMap::from([(0, Position::START)]), Position::START, limits)
    }

    fn take_now(feed: &Feed) -> Option<Take> {
        feed.take(0, 100, &CancellationToken::new()).now_or_never().flatten()
    }

    #[test]
    fn a_page_waits_for_room_in_bytes_as_in_events_then_goes_whole() {
        let (feed, cancel) = (feed(), CancellationToken::new());
        assert_eq!(
            feed.offer(page("a", 1..=3, 400), at(3), false, &cancel).now_or_never(),
            Some(true)
        );
        // 3 × 400 bytes are queued: 2 more of 400 would pass 1,000 bytes.
        let mut waiting = Box::pin(feed.offer(page("a", 4..=5, 400), at(5), false, &cancel));
        assert_eq!(waiting.as_mut().now_or_never(), None, "no room in bytes: it waits");
        let Some(Take::Events { events, through }) = take_now(&feed) else { panic!("events") };
        assert_eq!((events.len(), through), (3, at(3)));
        assert_eq!(waiting.now_or_never(), Some(true), "room again: the page goes in whole");
        let Some(Take::Events { events, through }) = take_now(&feed) else { panic!("events") };
        assert_eq!((events.len(), through), (2, at(5)));
        assert!(take_now(&feed).is_none(), "nothing more yet");
    }

    #[test]
    fn a_retrying_slot_is_detached_dropping_its_queue_and_attaches_again_only_where_the_reader_is()
    {
        let (feed, cancel) = (feed(), CancellationToken::new());
        assert_eq!(
            feed.offer(page("a", 1..=10, 1), at(10), false, &cancel).now_or_never(),
            Some(true)
        );
        let Some(Take::Events { through, .. }) = feed.take(0, 4, &cancel).now_or_never().flatten()
        else {
            panic!("events")
        };
        assert_eq!(through, at(4));
        // The worker retries: the reader does not wait for it, and its queue is dropped.
        feed.set_retrying(0, true);
        assert_eq!(
            feed.offer(page("a", 11..=20, 1), at(20), false, &cancel).now_or_never(),
            Some(true)
        );
        assert_eq!(feed.lock().slots[&0].events.len(), 0);
        assert!(
            matches!(take_now(&feed), Some(Take::ReadAlone { read_through }) if read_through == at(20))
        );
        // Read alone up to 15 only: the reader is at 20, so it stays detached.
        assert!(!feed.attach(0, at(15)));
        assert!(feed.attach(0, at(20)));
        feed.set_retrying(0, false);
        assert_eq!(
            feed.offer(page("a", 21..=22, 1), at(22), false, &cancel).now_or_never(),
            Some(true)
        );
        let Some(Take::Events { events, through }) = take_now(&feed) else { panic!("events") };
        let positions: Vec<i64> = events.iter().map(|e| e.position.global_position).collect();
        assert_eq!((positions, through), (vec![21, 22], at(22)));
    }

    #[test]
    fn a_closed_slot_never_holds_the_reader_and_a_finished_feed_says_so() {
        let (feed, cancel) = (feed(), CancellationToken::new());
        assert_eq!(
            feed.offer(page("a", 1..=10, 1), at(10), false, &cancel).now_or_never(),
            Some(true)
        );
        feed.close(0);
        assert_eq!(
            feed.offer(page("a", 11..=30, 1), at(30), false, &cancel).now_or_never(),
            Some(true)
        );
        feed.finish();
        assert!(take_now(&feed).is_none(), "a closed slot takes nothing");

        let other = self::feed();
        other.finish();
        assert!(matches!(take_now(&other), Some(Take::Finished)));
    }

    #[test]
    fn while_the_reader_is_behind_a_slot_goes_out_only_once_ripe() {
        let (feed, cancel) = (feed(), CancellationToken::new());
        // Full pages: 4 of 10 events queued is not worth a batch yet.
        assert_eq!(
            feed.offer(page("a", 1..=4, 1), at(4), true, &cancel).now_or_never(),
            Some(true)
        );
        assert!(take_now(&feed).is_none(), "4 of 10: wait for more");
        assert_eq!(
            feed.offer(page("a", 5..=5, 1), at(5), true, &cancel).now_or_never(),
            Some(true)
        );
        let Some(Take::Events { events, through }) = take_now(&feed) else { panic!("ripe") };
        assert_eq!((events.len(), through), (5, at(5)), "half full: all of it");

        // The reader waits for room: the slot goes out whatever it holds.
        assert_eq!(
            feed.offer(page("a", 6..=9, 1), at(9), true, &cancel).now_or_never(),
            Some(true)
        );
        let mut waiting = Box::pin(feed.offer(page("a", 10..=16, 1), at(16), true, &cancel));
        assert_eq!(waiting.as_mut().now_or_never(), None, "4 + 7 events do not fit in 10");
        let Some(Take::Events { events, .. }) = take_now(&feed) else { panic!("wanted") };
        assert_eq!(events.len(), 4);
        assert_eq!(waiting.now_or_never(), Some(true));

        let Some(Take::Events { events, .. }) = take_now(&feed) else { panic!("7 is ripe") };
        assert_eq!(events.len(), 7);

        // The reader finding nothing more, or a page that is not full, sends out what is queued.
        assert_eq!(
            feed.offer(page("a", 17..=18, 1), at(18), true, &cancel).now_or_never(),
            Some(true)
        );
        assert!(take_now(&feed).is_none(), "2 of 10: wait for more");
        feed.caught_up();
        let Some(Take::Events { events, .. }) = take_now(&feed) else { panic!("caught up") };
        assert_eq!(events.len(), 2);
        assert_eq!(
            feed.offer(page("a", 19..=19, 1), at(19), false, &cancel).now_or_never(),
            Some(true)
        );
        let Some(Take::Events { events, .. }) = take_now(&feed) else { panic!("not full") };
        assert_eq!(events.len(), 1);
    }
}
