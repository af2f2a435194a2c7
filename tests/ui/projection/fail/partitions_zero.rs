#[pupsource::projection(partitions = 0)]
#[derive(Default)]
struct Counter;

fn main() {}
