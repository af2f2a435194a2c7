#[pupsource::projection(contexts("Sales"))]
#[derive(Default)]
struct Publisher;

fn main() {}
