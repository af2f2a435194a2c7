//! What `status` reports: per projection and partition, the checkpoint, the lag, the last
//! error and the parked events; and the read fence, so a stall is visible.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::error::Result;
use crate::event::Position;
use crate::partition::Partition;
use crate::projection::Projection;
use crate::store::{Backend, Fence, LeaseInfo, WorkerStatus};

/// The state of every projection of a runner.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// One entry per projection, in the runner's order.
    pub projections: Vec<ProjectionStatus>,
    /// PostgreSQL: the oldest transaction in flight in the store's database. Readers never go
    /// past it, so when it is old, projections stall (without skipping anything) until it
    /// ends.
    pub fence: Option<Fence>,
}

/// The state of one projection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// Every stored partition checkpoint, of every partition count not yet retired.
    pub partitions: Vec<PartitionStatus>,
    /// How many events are parked.
    pub parked: u64,
    /// The live worker processes sharing its partitions.
    pub workers: Vec<WorkerStatus>,
}

/// The state of one partition.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// Which partition (of which count).
    pub partition: Partition,
    /// The position of the last event it handled.
    pub checkpoint: Position,
    /// Events of this partition in the projection's scope after the checkpoint.
    pub lag: u64,
    /// When the oldest of those events was created (`None` when there are none).
    pub oldest_unhandled: Option<OffsetDateTime>,
    /// When the checkpoint was last written.
    pub updated_at: OffsetDateTime,
    /// The last handler error since the last committed batch.
    pub last_error: Option<String>,
    /// The worker holding the partition, its epoch and the lease's expiry.
    pub lease: Option<LeaseInfo>,
}

pub(super) async fn status(
    store: &dyn Backend,
    projections: &[Arc<dyn Projection>],
) -> Result<Status> {
    let mut result = Vec::with_capacity(projections.len());
    for projection in projections {
        let name = projection.name();
        let scope = projection.scope();
        let mut partitions = Vec::new();
        for row in store.checkpoints(name).await? {
            let (lag, oldest_unhandled) =
                store.lag_after(row.position, &scope, row.partition).await?;
            partitions.push(PartitionStatus {
                partition: row.partition,
                checkpoint: row.position,
                lag,
                oldest_unhandled,
                updated_at: row.updated_at,
                last_error: row.last_error,
                lease: row.lease,
            });
        }
        let parked = u64::try_from(store.parked(name).await?.len()).unwrap_or(u64::MAX);
        let workers = store.workers(name).await?;
        result.push(ProjectionStatus { name: name.to_owned(), partitions, parked, workers });
    }
    Ok(Status { projections: result, fence: store.fence().await? })
}
