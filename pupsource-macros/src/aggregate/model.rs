//! A validated `#[aggregate]`: every check runs here, once; the expander trusts it.
//!
//! Two rules are checked by the generated code instead, because only rustc knows the values:
//! that every listed event has the context and aggregate type of the first (their
//! `DomainEvent` constants), and that every listed event has an `Apply` impl.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Ident, LitStr, Path};

use super::parse::Args;
use crate::args::{Errors, List};
use crate::model::{Count, listed, runtime};

pub(super) struct Aggregate {
    pub(super) runtime: Path,
    pub(super) ident: Ident,
    /// At least one, none twice.
    pub(super) events: Vec<Path>,
    /// Stored event types skipped on load: none empty, none twice.
    pub(super) ignore: Vec<LitStr>,
    pub(super) snapshots: Option<Snapshots>,
}

/// `snapshot_every = N, snapshot_version = V`.
pub(super) struct Snapshots {
    pub(super) every: Count,
    /// 1 unless given.
    pub(super) version: Count,
}

impl Aggregate {
    /// Checks `input` and its arguments; `errors` already holds the argument parser's
    /// problems, so that every problem is reported at once.
    pub(super) fn new(input: &DeriveInput, args: Args, mut errors: Errors) -> syn::Result<Self> {
        if let Data::Union(data) = &input.data {
            errors.push(syn::Error::new(
                data.union_token.span,
                "`#[aggregate]` must be on a struct or an enum",
            ));
        }
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[aggregate]` types cannot be generic: each aggregate type is one stream type of the store",
            ));
        }
        let events = args.events.map(|events| listed(events, &mut errors)).unwrap_or_default();
        let ignore = args.ignore.map(|names| ignored(names, &mut errors)).unwrap_or_default();
        let snapshots = snapshots(args.snapshot_every, args.snapshot_version, &mut errors);
        errors.finish(Aggregate {
            runtime: runtime(args.runtime),
            ident: input.ident.clone(),
            events,
            ignore,
            snapshots,
        })
    }
}

/// The names of `ignore(…)`: none empty, none twice.
fn ignored(names: List<LitStr>, errors: &mut Errors) -> Vec<LitStr> {
    let mut seen: Vec<String> = Vec::new();
    for name in &names.items {
        let value = name.value();
        if value.is_empty() {
            errors.push(syn::Error::new_spanned(name, "an ignored event type cannot be empty"));
        } else if seen.contains(&value) {
            errors.push(syn::Error::new_spanned(
                name,
                format!("`{value}` is listed twice in `ignore(...)`"),
            ));
        }
        seen.push(value);
    }
    names.items
}

/// `snapshot_every` (at least 1) and its `snapshot_version` (at least 1, default 1), which
/// means nothing without it.
fn snapshots(
    every: Option<syn::LitInt>,
    version: Option<syn::LitInt>,
    errors: &mut Errors,
) -> Option<Snapshots> {
    let Some(every) = every else {
        if let Some(version) = version {
            errors.push(syn::Error::new_spanned(
                version,
                "`snapshot_version` needs `snapshot_every = N`, which turns snapshots on",
            ));
        }
        return None;
    };
    let every = Count::parse(&every, "snapshot_every", u32::MAX, errors)?;
    let version = match version {
        Some(lit) => Count::parse(&lit, "snapshot_version", i32::MAX.unsigned_abs(), errors)?,
        None => Count::one(Span::call_site()),
    };
    Some(Snapshots { every, version })
}
