use pupsource::projection::Transaction;
use pupsource::{Context, HandleRaw, HandlerResult, PersistedEvent};

#[pupsource::projection(reset = Counter::clear)]
#[derive(Default)]
struct Counter;

impl Counter {
    fn clear(&self, _transaction: &mut Transaction<'_>) -> HandlerResult {
        Ok(())
    }
}

#[pupsource::projection(reset = Totals::clear)]
#[derive(Default)]
struct Totals;

impl Totals {
    async fn clear(&self) -> HandlerResult {
        Ok(())
    }
}

#[pupsource::projection(reset = Missing::clear)]
#[derive(Default)]
struct Named;

impl HandleRaw for Counter {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

impl HandleRaw for Totals {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

impl HandleRaw for Named {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
