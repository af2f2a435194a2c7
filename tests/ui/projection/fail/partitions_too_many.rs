#[pupsource::projection(partitions = 1025)]
#[derive(Default)]
struct Counter;

impl pupsource::HandleRaw for Counter {
    async fn handle(
        &self,
        _: &pupsource::PersistedEvent,
        _: &mut pupsource::Context<'_>,
    ) -> pupsource::HandlerResult {
        Ok(())
    }
}

fn main() {}
