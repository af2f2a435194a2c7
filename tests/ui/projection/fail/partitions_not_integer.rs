#[pupsource::projection(partitions = "4")]
#[derive(Default)]
struct Counter;

fn main() {}
