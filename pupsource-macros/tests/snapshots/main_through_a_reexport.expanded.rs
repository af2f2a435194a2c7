fn main() -> ::std::process::ExitCode {
    app::pupsource::cli::App::new().main()
}
