#[pupsource::projection]
#[derive(Default)]
struct Counter<T> {
    inner: T,
}

fn main() {}
