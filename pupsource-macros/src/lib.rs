//! Procedural macros of pupsource: `#[derive(Event)]`, `#[projection]` and `main!()`.
//!
//! Use them through the `pupsource` crate, which re-exports them; the generated code names
//! the runtime only through `::pupsource::__private` and public `::pupsource` items.
//!
//! Each macro parses its arguments (keeping spans, `parse.rs`), builds a validated model
//! (reporting every problem at its own token, all at once, `model.rs`), and expands the model
//! (`expand.rs`). A failed expansion still emits the user's item, so there are no follow-on
//! errors.

use proc_macro::TokenStream;

mod expand;
mod model;
mod parse;

/// Derives `pupsource::DomainEvent` for a serde-serializable type.
///
/// `#[event(context = "…", aggregate = "…", name = "…", version = N, upcast_from = Older)]`:
/// `context` and `aggregate` are required; `name` defaults to the type's name and `version`
/// to 1. `upcast_from` names the type of the previous schema version (same `name`, lower
/// `version`), converted with `From`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    match model::EventModel::from_input(&input) {
        Ok(model) => expand::event(&model).into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Declares a projection on a struct: `#[projection(partitions = 4, events(A, B))]`.
///
/// Arguments: `partitions = N` (default 1), `name = "…"` (default: the struct's name in
/// snake_case), `events(…)` (typed handlers through `pupsource::Handle<E>`) or none for a raw
/// projection (`pupsource::HandleRaw`, optionally scoped by `contexts("…")` and
/// `aggregates("…")`), `new = path` (constructor; default `Default::default`), `reset = path`
/// (an `async fn(&self, &mut pupsource::projection::Transaction<'_>)` run by `rebuild`).
#[proc_macro_attribute]
pub fn projection(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    let input = match syn::parse::<syn::DeriveInput>(item) {
        Ok(input) => input,
        Err(err) => return with_error(item2, &err),
    };
    let mut errors = parse::Errors::default();
    let args = parse::ProjectionArgs::parse(args.into(), &mut errors);
    match model::ProjectionModel::new(&input, args, errors) {
        Ok(model) => {
            let generated = expand::projection(&model);
            quote::quote!(#item2 #generated).into()
        }
        Err(err) => with_error(item2, &err),
    }
}

/// Emits `fn main` running the pupsource CLI over every registered projection.
#[proc_macro]
pub fn main(input: TokenStream) -> TokenStream {
    match expand::main(input.into()) {
        Ok(tokens) => tokens.into(),
        // An empty `fn main` too, so the error is the only one.
        Err(err) => with_error(
            quote::quote!(
                fn main() {}
            ),
            &err,
        ),
    }
}

/// The user's item unchanged, then the error.
fn with_error(item: proc_macro2::TokenStream, err: &syn::Error) -> TokenStream {
    let err = err.to_compile_error();
    quote::quote!(#item #err).into()
}
