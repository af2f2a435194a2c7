//! `#[projection(…)]`: its arguments as written (`parse.rs`), a validated projection
//! (`model.rs`), and its `Projection` impl and registration (`expand.rs`).

mod expand;
mod model;
mod parse;

use proc_macro2::TokenStream;

use crate::args::Errors;

/// The struct `item`, then its `Projection` impl and registration.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let input: syn::DeriveInput = syn::parse2(item.clone())?;
    let mut errors = Errors::default();
    let args = parse::KEYS.parse_tokens(args, &mut errors);
    let projection = model::Projection::new(&input, args, errors)?;
    let generated = expand::tokens(&projection);
    Ok(quote::quote!(#item #generated))
}
