pupsource::main!(workers = 4);
