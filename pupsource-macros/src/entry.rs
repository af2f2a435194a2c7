//! `main!()`: its one optional argument, `crate = "…"`, and the `fn main` that runs the CLI.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Path;

use crate::args::{Errors, Key, Keys};
use crate::model::runtime;

#[derive(Default)]
struct Args {
    runtime: Option<Path>,
}

/// The one key of `main!(…)`, for crates that re-export pupsource.
const KEYS: Keys<Args> = Keys {
    what: "`main!`",
    keys: &[Key::runtime(|args| &mut args.runtime)],
    // Whoever passes arguments here wants to configure something; say where that is done.
    unknown: Some(
        "`pupsource::main!()` takes no arguments; configure projections with `#[projection(...)]` \
         and each run with command-line flags (`--help`)",
    ),
};

/// `fn main` running the pupsource CLI over every registered projection.
pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let args = KEYS.parse_tokens(input, &mut errors);
    let runtime = errors.finish(runtime(args.runtime))?;
    Ok(quote! {
        fn main() -> ::std::process::ExitCode {
            #runtime::cli::App::new().main()
        }
    })
}
