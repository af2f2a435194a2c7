//! Models: only validated values. Every check runs here, once; the expanders trust the model.

use proc_macro2::Span;
use syn::spanned::Spanned as _;
use syn::{Data, DeriveInput, Ident, LitStr, Path};

use crate::parse::{Errors, EventArgs, IntArg, ProjectionArgs};

/// The most partitions a projection may declare (the CLI's `--workers` allows as many).
const MAX_PARTITIONS: u64 = 1024;

/// A validated `#[derive(Event)]`.
pub(crate) struct EventModel {
    pub(crate) ident: Ident,
    pub(crate) context: LitStr,
    pub(crate) aggregate: LitStr,
    pub(crate) name: LitStr,
    pub(crate) version: u32,
    pub(crate) upcast_from: Option<Path>,
}

impl EventModel {
    pub(crate) fn from_input(input: &DeriveInput) -> syn::Result<Self> {
        let mut errors = Errors::default();
        if let Data::Union(union) = &input.data {
            errors.push(syn::Error::new_spanned(
                union.union_token,
                "`#[derive(Event)]` is for structs and enums, not unions",
            ));
        }
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[derive(Event)]` types cannot be generic: each stored event type maps to one Rust type",
            ));
        }
        let args = EventArgs::parse(&input.attrs, &mut errors);
        let anchor = input
            .attrs
            .iter()
            .find(|a| a.path().is_ident("event"))
            .map_or(input.ident.span(), |a| a.span());
        let mut required = |value: Option<LitStr>, key: &str| match value {
            Some(lit) if lit.value().is_empty() => {
                errors.push(syn::Error::new_spanned(&lit, format!("`{key}` cannot be empty")));
                None
            }
            Some(lit) => Some(lit),
            None => {
                errors.push(syn::Error::new(
                    anchor,
                    format!(
                        "missing `{key}` in `#[event(...)]`; \
                         e.g. `#[event(context = \"Identity\", aggregate = \"User\")]`"
                    ),
                ));
                None
            }
        };
        let context = required(args.context.value, "context");
        let aggregate = required(args.aggregate.value, "aggregate");
        let name = match args.name.value {
            Some(lit) if lit.value().is_empty() => {
                errors.push(syn::Error::new_spanned(&lit, "`name` cannot be empty"));
                None
            }
            Some(lit) => Some(lit),
            None => Some(LitStr::new(&input.ident.to_string(), input.ident.span())),
        };
        let version = match args.version.value {
            None => Some(1),
            Some(arg) => {
                positive_int(&arg, "version", u64::from(i32::MAX.unsigned_abs()), &mut errors)
            }
        };
        if let (Some(path), Some(1)) = (&args.upcast_from.value, version) {
            errors.push(syn::Error::new_spanned(
                path,
                "`upcast_from` names the previous schema version, so this type needs `version = 2` or more",
            ));
        }
        let model = match (context, aggregate, name, version) {
            (Some(context), Some(aggregate), Some(name), Some(version)) => Some(EventModel {
                ident: input.ident.clone(),
                context,
                aggregate,
                name,
                version: u32::try_from(version).unwrap_or(u32::MAX),
                upcast_from: args.upcast_from.value,
            }),
            _ => None,
        };
        errors.finish(())?;
        model.ok_or_else(|| syn::Error::new(Span::call_site(), "invalid `#[event(...)]`"))
    }
}

/// What a projection handles.
pub(crate) enum Handlers {
    /// Typed events, through `Handle<E>`.
    Typed(Vec<Path>),
    /// Every event in scope, through `HandleRaw`.
    Raw { contexts: Vec<LitStr>, aggregates: Vec<LitStr> },
}

/// A validated `#[projection]`.
pub(crate) struct ProjectionModel {
    pub(crate) ident: Ident,
    pub(crate) name: String,
    pub(crate) partitions: u32,
    pub(crate) handlers: Handlers,
    pub(crate) new: Option<Path>,
    pub(crate) reset: Option<Path>,
}

impl ProjectionModel {
    /// Builds the model; `errors` already holds the argument parser's problems, so every
    /// problem is reported at once.
    pub(crate) fn new(
        input: &DeriveInput,
        args: ProjectionArgs,
        mut errors: Errors,
    ) -> syn::Result<Self> {
        match &input.data {
            Data::Struct(_) => {}
            Data::Enum(data) => errors.push(syn::Error::new_spanned(
                data.enum_token,
                "`#[projection]` must be on a struct; it holds the one instance all partitions share",
            )),
            Data::Union(data) => errors.push(syn::Error::new_spanned(
                data.union_token,
                "`#[projection]` must be on a struct; it holds the one instance all partitions share",
            )),
        }
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                "`#[projection]` structs cannot be generic: one instance is registered and shared by every partition",
            ));
        }
        let partitions = match args.partitions.value {
            None => Some(1),
            Some(arg) => positive_int(&arg, "partitions", MAX_PARTITIONS, &mut errors),
        };
        let name = match args.name.value {
            Some(lit) if lit.value().trim().is_empty() || lit.value().contains('\0') => {
                errors.push(syn::Error::new_spanned(
                    &lit,
                    "`name` must be a non-empty name without NUL characters",
                ));
                String::new()
            }
            Some(lit) => lit.value(),
            None => snake_case(&input.ident.to_string()),
        };
        let handlers = match args.events.value {
            Some((span, events)) => {
                if events.is_empty() {
                    errors
                        .push(syn::Error::new(span, "`events(...)` needs at least one event type"));
                }
                let mut seen: Vec<String> = Vec::new();
                for event in &events {
                    let text = quote::quote!(#event).to_string();
                    if seen.contains(&text) {
                        errors.push(syn::Error::new_spanned(
                            event,
                            format!("`{}` is listed twice in `events(...)`", text.replace(' ', "")),
                        ));
                    }
                    seen.push(text);
                }
                for (list, key) in
                    [(&args.contexts.value, "contexts"), (&args.aggregates.value, "aggregates")]
                {
                    if let Some((span, _)) = list {
                        errors.push(syn::Error::new(
                            *span,
                            format!(
                                "`{key}(...)` scopes raw projections; a projection with `events(...)` \
                                 receives exactly those events"
                            ),
                        ));
                    }
                }
                Handlers::Typed(events)
            }
            None => {
                let mut strings = |list: Option<(Span, Vec<LitStr>)>| {
                    let list = list.map(|(_, l)| l).unwrap_or_default();
                    for lit in &list {
                        if lit.value().is_empty() {
                            errors
                                .push(syn::Error::new_spanned(lit, "scope names cannot be empty"));
                        }
                    }
                    list
                };
                let contexts = strings(args.contexts.value);
                let aggregates = strings(args.aggregates.value);
                Handlers::Raw { contexts, aggregates }
            }
        };
        let model = ProjectionModel {
            ident: input.ident.clone(),
            name,
            partitions: partitions.and_then(|p| u32::try_from(p).ok()).unwrap_or(1),
            handlers,
            new: args.new.value,
            reset: args.reset.value,
        };
        errors.finish(model)
    }
}

/// An integer literal in `1..=max`, or an error at the value.
fn positive_int(arg: &IntArg, key: &str, max: u64, errors: &mut Errors) -> Option<u64> {
    match arg {
        IntArg::Other(expr) => {
            errors.push(syn::Error::new_spanned(
                expr,
                format!("expected an integer literal for `{key}`, e.g. `{key} = 4`"),
            ));
            None
        }
        IntArg::Int(lit) => match lit.base10_parse::<u64>() {
            Ok(0) => {
                errors.push(syn::Error::new_spanned(lit, format!("`{key}` must be at least 1")));
                None
            }
            Ok(n) if n > max => {
                errors.push(syn::Error::new_spanned(lit, format!("`{key}` must be at most {max}")));
                None
            }
            Ok(n) => Some(n),
            Err(err) => {
                errors.push(syn::Error::new_spanned(lit, format!("invalid `{key}`: {err}")));
                None
            }
        },
    }
}

/// `OrderTotals` → `order_totals`, `HTTPCounter` → `http_counter`.
pub(crate) fn snake_case(name: &str) -> String {
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
