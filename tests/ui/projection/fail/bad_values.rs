#[pupsource::projection(partitions = 4294967296, name = "", contexts(""), aggregates(1))]
#[derive(Default)]
struct Counter;

#[pupsource::projection(events(), name = counter, new = "Totals::new", reset)]
#[derive(Default)]
struct Totals;

#[pupsource::projection(name = "\0", events = Totals)]
#[derive(Default)]
struct Named;

fn main() {}
