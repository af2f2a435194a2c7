//! Checkpoints: how far each partition of a projection has got, and how a change of the
//! partition count is made safe.
//!
//! A checkpoint is kept per (projection, partition count, partition): the [`Position`] of the
//! last event that partition handled (or skipped). It is written in the same transaction as
//! the handler's writes, so a read model in the same database is exactly-once.
//!
//! # Changing the partition count
//! Checkpoints of an earlier count (a *layout*) are kept until they are no longer needed.
//! An event is already handled iff some layout `L` has `event ≤ checkpoint_L[partition_L(event)]`.
//! So under a new layout:
//! - new partitions start at `max over L of (min over partitions of checkpoint_L)`: every event
//!   up to there was handled under the layout with that maximum;
//! - an event is skipped (and counts as progress) when an old layout covers it;
//! - once every partition of the current layout is at or past the highest old checkpoint, no
//!   event can be covered by an old layout any more, and the old rows are deleted in the same
//!   transaction as a checkpoint write.
//!
//! Any sequence of counts (4, then 8, then 3, then 4 again) neither skips nor repeats an event.

use crate::event::Position;
use crate::partition::partition_of;

/// One stored checkpoint row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointRow {
    pub(crate) partition_count: u32,
    pub(crate) partition: u32,
    pub(crate) position: Position,
}

/// The checkpoints of one layout, indexed by partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) partition_count: u32,
    pub(crate) checkpoints: Vec<Position>,
}

impl Layout {
    fn lowest(&self) -> Position {
        self.checkpoints.iter().copied().min().unwrap_or(Position::START)
    }

    fn covers(&self, position: Position, partition_hash: u64) -> bool {
        let partition = partition_of(partition_hash, self.partition_count);
        self.checkpoints.get(partition as usize).is_some_and(|&cp| position <= cp)
    }
}

/// Everything a projection needs to resume under `partition_count` partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckpointState {
    /// The layout being run.
    pub(crate) current: Layout,
    /// Earlier layouts whose rows are not retired yet.
    pub(crate) old: Vec<Layout>,
    /// Which partitions of the current layout had no row yet (they start at `start_of_new`).
    pub(crate) created: Vec<u32>,
}

impl CheckpointState {
    /// Builds the state for `partition_count` from every stored row of the projection.
    /// Partitions of the current layout without a row start where every event before is
    /// known to be handled.
    pub(crate) fn from_rows(partition_count: u32, rows: &[CheckpointRow]) -> Self {
        let mut layouts: Vec<Layout> = Vec::new();
        let mut current = vec![None; partition_count as usize];
        for row in rows {
            if row.partition_count == partition_count {
                if let Some(slot) = current.get_mut(row.partition as usize) {
                    *slot = Some(row.position);
                }
                continue;
            }
            let layout = match layouts.iter_mut().find(|l| l.partition_count == row.partition_count)
            {
                Some(layout) => layout,
                None => {
                    layouts.push(Layout {
                        partition_count: row.partition_count,
                        checkpoints: vec![Position::START; row.partition_count as usize],
                    });
                    layouts.last_mut().expect("just pushed")
                }
            };
            if let Some(slot) = layout.checkpoints.get_mut(row.partition as usize) {
                *slot = row.position;
            }
        }
        let start = layouts.iter().map(Layout::lowest).max().unwrap_or(Position::START);
        let created = (0..partition_count).filter(|&p| current[p as usize].is_none()).collect();
        let checkpoints = current.into_iter().map(|cp| cp.unwrap_or(start)).collect();
        CheckpointState { current: Layout { partition_count, checkpoints }, old: layouts, created }
    }

    /// Whether an earlier layout already handled this event.
    pub(crate) fn handled_by_old_layout(&self, position: Position, partition_hash: u64) -> bool {
        self.old.iter().any(|layout| layout.covers(position, partition_hash))
    }

    /// Whether every partition of the current layout is already at or past every old
    /// checkpoint, so the old layouts can be retired right away.
    pub(crate) fn old_layouts_passed(&self) -> bool {
        self.retire_after().is_some_and(|h| self.current.checkpoints.iter().all(|&cp| cp >= h))
    }

    /// The highest old checkpoint: once every current partition is past it, the old layouts
    /// can be retired. `None` when there is no old layout.
    pub(crate) fn retire_after(&self) -> Option<Position> {
        self.old.iter().flat_map(|l| l.checkpoints.iter().copied()).max()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::partition::partition_hash;

    fn pos(p: i64) -> Position {
        Position { transaction_id: 0, global_position: p }
    }

    /// Simulates runs of a projection over one log under several partition counts, each run
    /// stopping with its partitions at different places; counts how often each event is
    /// handled.
    #[test]
    fn any_sequence_of_counts_handles_every_event_exactly_once() {
        let log: Vec<(Position, u64)> =
            (1..=500).map(|i| (pos(i), partition_hash(&format!("agg-{}", i % 37)))).collect();
        let mut stored: BTreeMap<(u32, u32), Position> = BTreeMap::new();
        let mut handled = vec![0u32; log.len() + 1];

        // (count, how far each partition gets in this run, as a fraction of the log)
        let runs: &[(u32, &[i64])] = &[
            (4, &[100, 250, 50, 400]),
            (8, &[300, 120, 450, 200, 500, 80, 260, 310]),
            (3, &[350, 480, 420]),
            (4, &[500, 500, 500, 500]),
            (3, &[500, 500, 500]),
        ];
        for &(count, stops) in runs {
            let rows: Vec<CheckpointRow> = stored
                .iter()
                .map(|(&(partition_count, partition), &position)| CheckpointRow {
                    partition_count,
                    partition,
                    position,
                })
                .collect();
            let mut state = CheckpointState::from_rows(count, &rows);
            for p in 0..count {
                let stop = pos(stops[p as usize]);
                for &(position, hash) in &log {
                    if partition_of(hash, count) != p
                        || position <= state.current.checkpoints[p as usize]
                        || position > stop
                    {
                        continue;
                    }
                    if !state.handled_by_old_layout(position, hash) {
                        handled[position.global_position as usize] += 1;
                    }
                    state.current.checkpoints[p as usize] = position;
                }
                // An idle partition still advances to where the reader got.
                state.current.checkpoints[p as usize] =
                    state.current.checkpoints[p as usize].max(stop);
            }
            for (p, &cp) in state.current.checkpoints.iter().enumerate() {
                stored.insert((count, p as u32), cp);
            }
            if let Some(h) = state.retire_after()
                && state.current.checkpoints.iter().all(|&cp| cp >= h)
            {
                stored.retain(|&(c, _), _| c == count);
            }
        }
        assert!(
            handled[1..].iter().all(|&n| n == 1),
            "{:?}",
            handled.iter().enumerate().filter(|(i, n)| *i > 0 && **n != 1).collect::<Vec<_>>()
        );
        assert!(stored.keys().all(|&(c, _)| c == 3), "old layouts were retired: {stored:?}");
    }

    #[test]
    fn new_partitions_start_at_the_best_fully_handled_prefix() {
        let rows = [
            CheckpointRow { partition_count: 2, partition: 0, position: pos(10) },
            CheckpointRow { partition_count: 2, partition: 1, position: pos(30) },
            CheckpointRow { partition_count: 3, partition: 0, position: pos(15) },
            CheckpointRow { partition_count: 3, partition: 1, position: pos(20) },
            CheckpointRow { partition_count: 3, partition: 2, position: pos(40) },
        ];
        let state = CheckpointState::from_rows(4, &rows);
        assert_eq!(state.current.checkpoints, vec![pos(15); 4]);
        assert_eq!(state.created, vec![0, 1, 2, 3]);
        assert_eq!(state.retire_after(), Some(pos(40)));

        let resumed = CheckpointState::from_rows(3, &rows);
        assert_eq!(resumed.current.checkpoints, vec![pos(15), pos(20), pos(40)]);
        assert!(resumed.created.is_empty());
        assert_eq!(resumed.old.len(), 1);
    }
}
