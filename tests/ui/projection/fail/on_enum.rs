#[pupsource::projection(partitions = 2)]
enum Counter {
    A,
}

fn main() {}
