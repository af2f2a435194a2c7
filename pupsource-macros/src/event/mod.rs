//! `#[derive(DomainEvent)]`: the `#[event(…)]` arguments as written (`parse.rs`), a validated event
//! (`model.rs`), and its `DomainEvent` impl (`expand.rs`).

mod expand;
mod model;
mod parse;

use proc_macro2::TokenStream;

use crate::args::Errors;

/// The `DomainEvent` impl of the type `input` derives `Event` for.
pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let input: syn::DeriveInput = syn::parse2(input)?;
    let mut errors = Errors::default();
    let args = parse::KEYS.parse_attrs(&input.attrs, &input.ident, &mut errors);
    let event = model::Event::new(&input, args, errors)?;
    Ok(expand::tokens(&event))
}
