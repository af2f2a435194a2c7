//! Expansion tests: each macro's whole output for representative inputs, pretty-printed and
//! compared with a reviewed snapshot in `tests/snapshots/<test>.expanded.rs`; and the problems
//! of a bad input, all reported at once.
//!
//! After a deliberate change to the generated code, rewrite the snapshots with
//! `PUPSOURCE_SNAPSHOTS=overwrite cargo nextest run -p pupsource-macros` and review their diff
//! like code.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

/// Compares the pretty-printed `tokens` with the snapshot `name`, or rewrites the snapshot
/// when `PUPSOURCE_SNAPSHOTS=overwrite`.
fn assert_snapshot(name: &str, tokens: TokenStream) {
    let file: syn::File = syn::parse2(tokens).expect("the expansion is Rust items");
    let actual = prettyplease::unparse(&file);
    let path: PathBuf =
        [env!("CARGO_MANIFEST_DIR"), "tests", "snapshots", &format!("{name}.expanded.rs")]
            .iter()
            .collect();
    if std::env::var_os("PUPSOURCE_SNAPSHOTS").is_some_and(|mode| mode == "overwrite") {
        std::fs::write(&path, &actual).expect("write the snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let (line, (was, now)) = expected
            .lines()
            .chain(std::iter::repeat(""))
            .zip(actual.lines().chain(std::iter::repeat("")))
            .enumerate()
            .find(|(_, (was, now))| was != now)
            .unwrap_or((0, ("", "")));
        panic!(
            "the expansion differs from {} at line {}:\n  snapshot: {was}\n  now:      {now}\n\n\
             the whole expansion now:\n{actual}\n\
             if the change is intended, rewrite the snapshots with \
             `PUPSOURCE_SNAPSHOTS=overwrite cargo nextest run -p pupsource-macros` and review \
             their diff",
            path.display(),
            line + 1,
        );
    }
}

fn event(input: TokenStream) -> TokenStream {
    crate::event::expand(input).expect("a valid event")
}

fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    crate::projection::expand(args, item).expect("a valid projection")
}

#[test]
fn event_defaults_and_upcast() {
    assert_snapshot(
        "event_defaults_and_upcast",
        event(quote! {
            #[event(context = "Identity", aggregate = "User", version = 2, upcast_from = V1)]
            struct UserCreated { email: String }
        }),
    );
}

#[test]
fn event_through_a_reexport() {
    assert_snapshot(
        "event_through_a_reexport",
        event(quote! {
            #[event(context = "Sales", aggregate = "Order", name = "order.placed")]
            #[event(crate = "app::events::pupsource")]
            enum OrderPlaced { Online, InStore }
        }),
    );
}

#[test]
fn projection_defaults_and_generated_items() {
    assert_snapshot(
        "projection_defaults_and_generated_items",
        projection(
            quote!(partitions = 4, events(A, b::B)),
            quote! {
                #[derive(Default)]
                struct OrderTotals;
            },
        ),
    );
}

#[test]
fn raw_projection_with_every_argument() {
    assert_snapshot(
        "raw_projection_with_every_argument",
        projection(
            quote! {
                name = "publisher",
                contexts("Sales"),
                aggregates("Order", "Invoice"),
                new = Publisher::connect,
                reset = Publisher::clear,
                crate = "app::pupsource"
            },
            quote! {
                struct Publisher { endpoint: String }
            },
        ),
    );
}

fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    crate::aggregate::expand(args, item).expect("a valid aggregate")
}

#[test]
fn aggregate_dispatch_marks_and_checks() {
    assert_snapshot(
        "aggregate_dispatch_marks_and_checks",
        aggregate(
            quote!(events(Deposited, events::Withdrawn), ignore("Audited")),
            quote! {
                #[derive(Default)]
                struct Account { balance: u64 }
            },
        ),
    );
}

#[test]
fn aggregate_with_snapshots_through_a_reexport() {
    assert_snapshot(
        "aggregate_with_snapshots_through_a_reexport",
        aggregate(
            quote!(
                events(Opened),
                snapshot_every = 100,
                snapshot_version = 3,
                crate = "app::pupsource"
            ),
            quote! {
                #[derive(Default, Serialize, Deserialize)]
                enum Door { #[default] Closed, Open }
            },
        ),
    );
}

#[test]
fn every_aggregate_problem_is_reported_at_once() {
    let err = crate::aggregate::expand(
        quote!(events(A, A), ignore("", "x", "x"), snapshot_every = 0, colour = 1),
        quote!(
            struct S<T>(T);
        ),
    )
    .expect_err("invalid");
    let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
    assert_eq!(messages.len(), 6, "{messages:#?}");
    assert!(messages.iter().any(|m| m.starts_with("unknown aggregate argument `colour`")));
    assert!(messages.iter().any(|m| m == "`A` is listed twice in `events(...)`"));
    assert!(messages.iter().any(|m| m == "an ignored event type cannot be empty"));
    assert!(messages.iter().any(|m| m == "`x` is listed twice in `ignore(...)`"));
    assert!(messages.iter().any(|m| m == "`snapshot_every` must be at least 1"));
    assert!(messages.iter().any(|m| m.starts_with("`#[aggregate]` types cannot be generic")));
}

#[test]
fn main_runs_the_cli() {
    assert_snapshot("main", crate::entry::expand(quote!()).expect("no arguments"));
    assert_snapshot(
        "main_through_a_reexport",
        crate::entry::expand(quote!(crate = "app::pupsource")).expect("a runtime path"),
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = crate::projection::expand(
        quote!(partitions = 0, colour = 1, events(A, A)),
        quote!(
            enum E<T> {
                X(T),
            }
        ),
    )
    .expect_err("invalid");
    let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
    assert_eq!(messages.len(), 5, "{messages:#?}");
    assert!(messages.iter().any(|m| m.starts_with("unknown projection argument `colour`")));
    assert!(messages.iter().any(|m| m == "`partitions` must be at least 1"));
    assert!(messages.iter().any(|m| m == "`A` is listed twice in `events(...)`"));
    assert!(messages.iter().any(|m| m.starts_with("`#[projection]` must be on a struct")));
    assert!(messages.iter().any(|m| m.starts_with("`#[projection]` structs cannot be generic")));
}

#[test]
fn main_takes_no_arguments() {
    assert!(crate::entry::expand(quote!()).is_ok());
    let err = crate::entry::expand(quote!(workers = 4)).expect_err("arguments are refused");
    assert!(err.to_string().starts_with("`pupsource::main!()` takes no arguments"));
}
