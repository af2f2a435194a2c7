pupsource::main!(crate = "crate::missing");
