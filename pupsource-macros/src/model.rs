//! What the models of the macros share: counts of at least 1, and the path of the runtime.

use std::num::NonZeroU32;

use proc_macro2::Span;
use syn::{LitInt, Path};

use crate::args::{Errors, List};

/// A count of at least 1, with the span of the literal it was written as.
pub(crate) struct Count {
    pub(crate) value: NonZeroU32,
    pub(crate) span: Span,
}

impl Count {
    /// The count a missing argument defaults to, spanned at `span`.
    pub(crate) fn one(span: Span) -> Self {
        Count { value: NonZeroU32::MIN, span }
    }

    /// The literal of `key` as a count in `1..=max`, or an error at the literal.
    pub(crate) fn parse(lit: &LitInt, key: &str, max: u32, errors: &mut Errors) -> Option<Self> {
        let problem = match lit.base10_parse::<u32>().map(NonZeroU32::new) {
            Ok(Some(value)) if value.get() <= max => {
                return Some(Count { value, span: lit.span() });
            }
            Ok(Some(_)) => format!("`{key}` must be at most {max}"),
            Ok(None) => format!("`{key}` must be at least 1"),
            Err(err) => format!("invalid `{key}`: {err}"),
        };
        errors.push(syn::Error::new_spanned(lit, problem));
        None
    }
}

/// The path generated code names the runtime by: the `crate = "…"` argument, or `::pupsource`.
pub(crate) fn runtime(path: Option<Path>) -> Path {
    path.unwrap_or_else(|| syn::parse_quote!(::pupsource))
}

/// The event types of `events(…)`: at least one, none twice.
pub(crate) fn listed(events: List<Path>, errors: &mut Errors) -> Vec<Path> {
    if events.items.is_empty() {
        errors.push(syn::Error::new(events.span, "`events(...)` needs at least one event type"));
    }
    let mut seen: Vec<String> = Vec::new();
    for event in &events.items {
        let text = quote::quote!(#event).to_string().replace(' ', "");
        if seen.contains(&text) {
            errors.push(syn::Error::new_spanned(
                event,
                format!("`{text}` is listed twice in `events(...)`"),
            ));
        }
        seen.push(text);
    }
    events.items
}
