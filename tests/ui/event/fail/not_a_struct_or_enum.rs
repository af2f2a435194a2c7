#[derive(pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
union UserCreated {
    id: u64,
}

#[derive(pupsource::DomainEvent)]
#[event(context = "Identity", aggregate = "User")]
struct UserRenamed<T> {
    name: T,
}

fn main() {}
