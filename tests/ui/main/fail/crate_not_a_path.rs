pupsource::main!(crate = "pupsource::");
