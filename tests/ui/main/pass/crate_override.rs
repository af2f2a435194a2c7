//! `main!(crate = "…")` names the runtime through a crate's re-export of pupsource.
#![deny(warnings)]

use std::process::ExitCode;

/// What a crate that re-exports pupsource offers.
mod framework {
    pub use ::pupsource as runtime;
}

mod cli {
    pupsource::main!(crate = "crate::framework::runtime");

    /// The generated `fn main`, without running it (it would run the CLI).
    pub(crate) const MAIN: fn() -> super::ExitCode = main;
}

fn main() {
    let _ = cli::MAIN;
}
