//! `#[aggregate(…)]`: its arguments as written (`parse.rs`), a validated aggregate
//! (`model.rs`), and its `Aggregate` impl and compile-time checks (`expand.rs`).

mod expand;
mod model;
mod parse;

use proc_macro2::TokenStream;

use crate::args::Errors;

/// The item `item`, then its `Aggregate` impl.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let input: syn::DeriveInput = syn::parse2(item.clone())?;
    let mut errors = Errors::default();
    let args = parse::KEYS.parse_tokens(args, &mut errors);
    let aggregate = model::Aggregate::new(&input, args, errors)?;
    let generated = expand::tokens(&aggregate);
    Ok(quote::quote!(#item #generated))
}
