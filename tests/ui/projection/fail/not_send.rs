use std::rc::Rc;

use pupsource::{Context, HandleRaw, HandlerResult, PersistedEvent};

#[pupsource::projection]
#[derive(Default)]
struct Counter {
    shared: Rc<u64>,
}

impl HandleRaw for Counter {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
