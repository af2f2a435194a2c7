use std::cell::Cell;

use pupsource::{Context, HandleRaw, HandlerResult, PersistedEvent};

#[pupsource::projection(partitions = 4)]
#[derive(Default)]
struct Counter {
    count: Cell<u64>,
}

impl HandleRaw for Counter {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
