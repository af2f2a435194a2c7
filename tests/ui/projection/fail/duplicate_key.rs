#[pupsource::projection(partitions = 4, partitions = 8)]
#[derive(Default)]
struct Counter;

fn main() {}
