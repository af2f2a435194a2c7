use pupsource::{Context, HandleRaw, HandlerResult, PersistedEvent};

#[pupsource::projection(new = Counter::connect)]
struct Counter {
    url: String,
}

impl Counter {
    fn connect(url: &str) -> Self {
        Counter { url: url.to_owned() }
    }
}

#[pupsource::projection(new = Totals::open)]
struct Totals;

impl HandleRaw for Counter {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        assert!(!self.url.is_empty());
        Ok(())
    }
}

impl HandleRaw for Totals {
    async fn handle(&self, _: &PersistedEvent, _: &mut Context<'_>) -> HandlerResult {
        Ok(())
    }
}

fn main() {}
