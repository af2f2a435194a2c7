//! Procedural macros of pupsource: `#[derive(DomainEvent)]`, `#[projection]`, `#[aggregate]`
//! and `main!()`.
//!
//! Use them through the `pupsource` crate, which re-exports them; the generated code names
//! the runtime only through `::pupsource::__private` and public `::pupsource` items, or
//! through the path given as `crate = "…"` by a crate that re-exports pupsource.
//!
//! This file only dispatches. Each macro is a module with one entry,
//! `expand(…) -> syn::Result<TokenStream>` on `proc_macro2` tokens: it parses the arguments
//! with the macro's table of keys (keeping spans, `args.rs`), builds a validated model
//! (reporting every problem at its own token, all at once), and expands the model. A failed
//! expansion still emits the user's item, so there are no follow-on errors.

use proc_macro::TokenStream;
use quote::quote;

mod aggregate;
mod args;
mod entry;
mod event;
mod model;
mod projection;
#[cfg(test)]
mod tests;

/// Derives `pupsource::DomainEvent` for a serde-serializable type.
///
/// `#[event(context = "…", aggregate = "…", name = "…", version = N, upcast_from = Older)]`:
/// `context` and `aggregate` are required; `name` defaults to the type's name and `version`
/// to 1. `upcast_from` names the type of the previous schema version (same `name`, lower
/// `version`), converted with `From`. `crate = "path"` names the runtime for a crate that
/// re-exports pupsource (default `::pupsource`).
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    // The type itself stays as it is: a derive only adds to it.
    event::expand(input.into()).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// Declares a projection on a struct: `#[projection(partitions = 4, events(A, B))]`.
///
/// Arguments: `partitions = N` (default 1, at most `pupsource::limits::MAX_PARTITIONS`),
/// `name = "…"` (default: the struct's name in snake_case), `events(…)` (typed handlers
/// through `pupsource::Handle<E>`) or none for a raw projection (`pupsource::HandleRaw`,
/// optionally scoped by `contexts("…")` and `aggregates("…")`), `new = path` (constructor;
/// default `Default::default`), `reset = path` (an
/// `async fn(&self, &mut pupsource::projection::Transaction<'_>)` run by `rebuild`),
/// `crate = "path"` (the runtime, for a crate that re-exports pupsource; default
/// `::pupsource`).
#[proc_macro_attribute]
pub fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    projection::expand(args.into(), item.clone())
        .unwrap_or_else(|err| with_error(item, &err))
        .into()
}

/// Declares an aggregate on a struct or enum: `#[aggregate(events(A, B))]`.
///
/// Arguments: `events(…)` (required: the events it applies, through
/// `pupsource::aggregate::Apply<E>`; its context and aggregate type are theirs),
/// `ignore("…")` (stored event types a load skips), `snapshot_every = N` (a snapshot of the
/// serde state every `N` versions), `snapshot_version = V` (the snapshots' schema version,
/// default 1), `crate = "path"` (the runtime, for a crate that re-exports pupsource; default
/// `::pupsource`).
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    aggregate::expand(args.into(), item.clone()).unwrap_or_else(|err| with_error(item, &err)).into()
}

/// Emits `fn main` running the pupsource CLI over every registered projection.
///
/// `main!(crate = "path")` names the runtime for a crate that re-exports pupsource.
#[proc_macro]
pub fn main(input: TokenStream) -> TokenStream {
    entry::expand(input.into())
        // An empty `fn main` too, so that the error is the only one.
        .unwrap_or_else(|err| {
            with_error(
                quote!(
                    fn main() {}
                ),
                &err,
            )
        })
        .into()
}

/// The user's item unchanged, then the error.
fn with_error(item: proc_macro2::TokenStream, err: &syn::Error) -> proc_macro2::TokenStream {
    let err = err.to_compile_error();
    quote!(#item #err)
}
