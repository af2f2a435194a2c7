//! A validated `#[derive(DomainEvent)]`: every check runs here, once; the expander trusts it.

use std::num::NonZeroU32;

use proc_macro2::Span;
use syn::{Data, DeriveInput, Ident, LitStr, Path};

use super::parse::Args;
use crate::args::Errors;
use crate::model::{Count, runtime};

/// The largest `version`: the stores keep it as a 32-bit signed integer.
const MAX_VERSION: u32 = i32::MAX.unsigned_abs();

pub(super) struct Event {
    pub(super) runtime: Path,
    pub(super) ident: Ident,
    pub(super) context: LitStr,
    pub(super) aggregate: LitStr,
    pub(super) name: LitStr,
    pub(super) version: NonZeroU32,
    pub(super) upcast_from: Option<Path>,
}

impl Event {
    /// Checks `input` and its arguments; `errors` already holds the argument parser's
    /// problems, so that every problem is reported at once.
    pub(super) fn new(input: &DeriveInput, args: Args, mut errors: Errors) -> syn::Result<Self> {
        if let Data::Union(union) = &input.data {
            errors.push(syn::Error::new_spanned(
                union.union_token,
                "`#[derive(DomainEvent)]` is for structs and enums, not unions",
            ));
        }
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[derive(DomainEvent)]` types cannot be generic: each stored event type maps to one Rust type",
            ));
        }
        let name =
            args.name.unwrap_or_else(|| LitStr::new(&input.ident.to_string(), input.ident.span()));
        let given = [(args.context.as_ref(), "context"), (args.aggregate.as_ref(), "aggregate")];
        for (lit, key) in given.into_iter().chain([(Some(&name), "name")]) {
            if let Some(lit) = lit
                && lit.value().is_empty()
            {
                errors.push(syn::Error::new_spanned(lit, format!("`{key}` cannot be empty")));
            }
        }
        let version = match &args.version {
            None => Some(NonZeroU32::MIN),
            Some(lit) => Count::parse(lit, "version", MAX_VERSION, &mut errors).map(|v| v.value),
        };
        if let Some(older) = &args.upcast_from
            && version == Some(NonZeroU32::MIN)
        {
            errors.push(syn::Error::new_spanned(
                older,
                "`upcast_from` names the previous schema version, so this type needs `version = 2` or more",
            ));
        }
        errors.finish(Event {
            runtime: runtime(args.runtime),
            ident: input.ident.clone(),
            // A missing required value has its error, so this placeholder is never expanded.
            context: args.context.unwrap_or_else(|| LitStr::new("", Span::call_site())),
            aggregate: args.aggregate.unwrap_or_else(|| LitStr::new("", Span::call_site())),
            name,
            version: version.unwrap_or(NonZeroU32::MIN),
            upcast_from: args.upcast_from,
        })
    }
}
