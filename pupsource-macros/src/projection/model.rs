//! A validated `#[projection]`: every check runs here, once; the expander trusts it.
//!
//! The one rule checked elsewhere is the largest partition count: it belongs to the runtime
//! (`pupsource::limits::MAX_PARTITIONS`, which its CLI enforces too), so the generated code
//! asserts it at compile time against the runtime's own constant.

use syn::{Data, DeriveInput, Ident, LitStr, Path};

use super::parse::Args;
use crate::args::{Errors, List};
use crate::model::{Count, listed, runtime};

/// What a projection handles.
pub(super) enum Handlers {
    /// Typed events, through `Handle<E>`.
    Typed(Vec<Path>),
    /// Every event in scope, through `HandleRaw`.
    Raw { contexts: Vec<LitStr>, aggregates: Vec<LitStr> },
}

pub(super) struct Projection {
    pub(super) runtime: Path,
    pub(super) ident: Ident,
    pub(super) name: String,
    /// At least 1; at most the runtime's limit is asserted by the generated code.
    pub(super) partitions: Count,
    pub(super) handlers: Handlers,
    pub(super) new: Option<Path>,
    pub(super) reset: Option<Path>,
}

impl Projection {
    /// Checks `input` and its arguments; `errors` already holds the argument parser's
    /// problems, so that every problem is reported at once.
    pub(super) fn new(input: &DeriveInput, args: Args, mut errors: Errors) -> syn::Result<Self> {
        let not_a_struct = match &input.data {
            Data::Struct(_) => None,
            Data::Enum(data) => Some(data.enum_token.span),
            Data::Union(data) => Some(data.union_token.span),
        };
        if let Some(span) = not_a_struct {
            errors.push(syn::Error::new(
                span,
                "`#[projection]` must be on a struct; it holds the one instance all partitions share",
            ));
        }
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[projection]` structs cannot be generic: one instance is registered and shared by every partition",
            ));
        }
        let partitions = match &args.partitions {
            // The runtime's own limit is the generated code's to check.
            Some(lit) => Count::parse(lit, "partitions", u32::MAX, &mut errors),
            None => Some(Count::one(input.ident.span())),
        };
        let name = match args.name {
            Some(lit) if lit.value().trim().is_empty() || lit.value().contains('\0') => {
                errors.push(syn::Error::new_spanned(
                    &lit,
                    "`name` must be a non-empty name without NUL characters",
                ));
                lit.value()
            }
            Some(lit) => lit.value(),
            None => snake_case(&input.ident.to_string()),
        };
        let handlers = match args.events {
            Some(events) => {
                Handlers::Typed(typed(events, &args.contexts, &args.aggregates, &mut errors))
            }
            None => Handlers::Raw {
                contexts: scope_names(args.contexts, &mut errors),
                aggregates: scope_names(args.aggregates, &mut errors),
            },
        };
        errors.finish(Projection {
            runtime: runtime(args.runtime),
            ident: input.ident.clone(),
            name,
            partitions: partitions.unwrap_or_else(|| Count::one(input.ident.span())),
            handlers,
            new: args.new,
            reset: args.reset,
        })
    }
}

/// The event types of `events(…)`: at least one, none twice, and no raw scope beside them.
fn typed(
    events: List<Path>,
    contexts: &Option<List<LitStr>>,
    aggregates: &Option<List<LitStr>>,
    errors: &mut Errors,
) -> Vec<Path> {
    let events = listed(events, errors);
    for (list, key) in [(contexts, "contexts"), (aggregates, "aggregates")] {
        if let Some(list) = list {
            errors.push(syn::Error::new(
                list.span,
                format!(
                    "`{key}(...)` scopes raw projections; a projection with `events(...)` \
                     receives exactly those events"
                ),
            ));
        }
    }
    events
}

/// The names of a raw projection's `contexts(…)` or `aggregates(…)`, none of them empty.
fn scope_names(list: Option<List<LitStr>>, errors: &mut Errors) -> Vec<LitStr> {
    let names = list.map(|list| list.items).unwrap_or_default();
    for name in names.iter().filter(|name| name.value().is_empty()) {
        errors.push(syn::Error::new_spanned(name, "scope names cannot be empty"));
    }
    names
}

/// `OrderTotals` → `order_totals`, `HTTPCounter` → `http_counter`.
fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(char::is_uppercase) && next.is_some_and(|n| n.is_lowercase()));
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_follows_rust_naming() {
        for (camel, snake) in [
            ("Counter", "counter"),
            ("OrderTotals", "order_totals"),
            ("HTTPCounter", "http_counter"),
            ("Users2Orders", "users2_orders"),
            ("already_snake", "already_snake"),
        ] {
            assert_eq!(snake_case(camel), snake);
        }
    }
}
