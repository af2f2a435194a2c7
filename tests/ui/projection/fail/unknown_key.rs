#[pupsource::projection(partition = 4, worker = 2)]
#[derive(Default)]
struct Counter;

fn main() {}
