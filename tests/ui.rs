//! Compile-time diagnostics of the macros: every misuse fails at the offending token with a
//! reviewed message (`tests/ui/<macro>/fail/*.stderr`), and correct uses compile and run.
//!
//! The `.stderr` files depend on the compiler's wording, so they are recorded with one rustc
//! version (`tests/ui/RUSTC_VERSION`). After a toolchain change, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui`, review the diff, and update that file. One case
//! alone: `cargo test --test ui -- macros_report trybuild=<case>.rs`.

use std::process::Command;

#[test]
fn macros_report_misuse_at_the_offending_token() {
    let recorded = include_str!("ui/RUSTC_VERSION").trim();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(&rustc).arg("--version").output().expect("run rustc --version");
    let current = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert_eq!(
        current, recorded,
        "the UI test expectations were recorded with `{recorded}` but this is `{current}`: \
         regenerate them with `TRYBUILD=overwrite cargo test --test ui`, review the diff of \
         tests/ui/**/*.stderr, and write the new version into tests/ui/RUSTC_VERSION"
    );

    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/*/pass/*.rs");
    cases.compile_fail("tests/ui/*/fail/*.rs");
}
