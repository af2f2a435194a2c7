fn main() -> ::std::process::ExitCode {
    ::pupsource::cli::App::new().main()
}
