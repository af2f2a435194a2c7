#[pupsource::projection(crate = "not a path")]
#[derive(Default)]
struct Counter;

#[pupsource::projection(crate = "crate::missing")]
#[derive(Default)]
struct Totals;

fn main() {}
