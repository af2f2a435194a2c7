//! Parsing: the macros' arguments as written, with their spans; no validation beyond syntax
//! and unknown or repeated keys.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser as _;
use syn::{LitInt, LitStr, Path, Token};

/// Keeps every error, so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(err) => Err(err),
            None => Ok(value),
        }
    }
}

/// A value that may be given once; a second one is an error at its key.
pub(crate) struct Once<T> {
    pub(crate) value: Option<T>,
}

impl<T> Default for Once<T> {
    fn default() -> Self {
        Once { value: None }
    }
}

impl<T> Once<T> {
    fn set(&mut self, key: &syn::Path, value: T, what: &str, errors: &mut Errors) {
        if self.value.is_some() {
            let name = key.get_ident().map(ToString::to_string).unwrap_or_default();
            errors
                .push(syn::Error::new_spanned(key, format!("duplicate {what} argument `{name}`")));
        } else {
            self.value = Some(value);
        }
    }
}

/// A literal that should be an integer, kept as written.
pub(crate) enum IntArg {
    Int(LitInt),
    Other(syn::Expr),
}

/// The arguments of `#[projection(...)]` as written.
#[derive(Default)]
pub(crate) struct ProjectionArgs {
    pub(crate) partitions: Once<IntArg>,
    pub(crate) name: Once<LitStr>,
    pub(crate) events: Once<(Span, Vec<Path>)>,
    pub(crate) contexts: Once<(Span, Vec<LitStr>)>,
    pub(crate) aggregates: Once<(Span, Vec<LitStr>)>,
    pub(crate) new: Once<Path>,
    pub(crate) reset: Once<Path>,
}

const PROJECTION_KEYS: &str =
    "`partitions`, `name`, `events`, `contexts`, `aggregates`, `new`, `reset`";

impl ProjectionArgs {
    /// Parses what it can; problems go to `errors`, so the model can report its own too.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = ProjectionArgs::default();
        let what = "projection";
        let parsed = syn::meta::parser(|meta| {
            let key = meta.path.clone();
            let name = key.get_ident().map(ToString::to_string).unwrap_or_default();
            match name.as_str() {
                "partitions" => {
                    let expr: syn::Expr = meta.value()?.parse()?;
                    let value = match expr {
                        syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(int), .. }) => IntArg::Int(int),
                        other => IntArg::Other(other),
                    };
                    args.partitions.set(&key, value, what, errors);
                }
                "name" => {
                    let value = meta.value()?.parse()?;
                    args.name.set(&key, value, what, errors);
                }
                "new" | "reset" => {
                    let value: Path = meta.value()?.parse()?;
                    let slot = if name == "new" { &mut args.new } else { &mut args.reset };
                    slot.set(&key, value, what, errors);
                }
                "events" => {
                    let list = list_of::<Path>(&meta)?;
                    args.events.set(&key, list, what, errors);
                }
                "contexts" | "aggregates" => {
                    let list = list_of::<LitStr>(&meta)?;
                    let slot = if name == "contexts" { &mut args.contexts } else { &mut args.aggregates };
                    slot.set(&key, list, what, errors);
                }
                _ => {
                    errors.push(syn::Error::new_spanned(
                        &key,
                        format!("unknown projection argument `{name}`; expected one of {PROJECTION_KEYS}"),
                    ));
                    skip_value(&meta)?;
                }
            }
            Ok(())
        })
        .parse2(tokens);
        if let Err(err) = parsed {
            errors.push(err);
        }
        args
    }
}

/// The arguments of `#[event(...)]` as written.
#[derive(Default)]
pub(crate) struct EventArgs {
    pub(crate) context: Once<LitStr>,
    pub(crate) aggregate: Once<LitStr>,
    pub(crate) name: Once<LitStr>,
    pub(crate) version: Once<IntArg>,
    pub(crate) upcast_from: Once<Path>,
}

const EVENT_KEYS: &str = "`context`, `aggregate`, `name`, `version`, `upcast_from`";

impl EventArgs {
    /// Parses every `#[event(...)]` attribute of the type; problems go to `errors`.
    pub(crate) fn parse(attrs: &[syn::Attribute], errors: &mut Errors) -> Self {
        let mut args = EventArgs::default();
        let what = "event";
        for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
            let parsed = attr.parse_nested_meta(|meta| {
                let key = meta.path.clone();
                let name = key.get_ident().map(ToString::to_string).unwrap_or_default();
                match name.as_str() {
                    "context" | "aggregate" | "name" => {
                        let value: LitStr = meta.value()?.parse()?;
                        let slot = match name.as_str() {
                            "context" => &mut args.context,
                            "aggregate" => &mut args.aggregate,
                            _ => &mut args.name,
                        };
                        slot.set(&key, value, what, errors);
                    }
                    "version" => {
                        let expr: syn::Expr = meta.value()?.parse()?;
                        let value = match expr {
                            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Int(int), .. }) => {
                                IntArg::Int(int)
                            }
                            other => IntArg::Other(other),
                        };
                        args.version.set(&key, value, what, errors);
                    }
                    "upcast_from" => {
                        let value: Path = meta.value()?.parse()?;
                        args.upcast_from.set(&key, value, what, errors);
                    }
                    _ => {
                        errors.push(syn::Error::new_spanned(
                            &key,
                            format!(
                                "unknown event argument `{name}`; expected one of {EVENT_KEYS}"
                            ),
                        ));
                        skip_value(&meta)?;
                    }
                }
                Ok(())
            });
            if let Err(err) = parsed {
                errors.push(err);
            }
        }
        args
    }
}

/// `key(a, b, c)`, with the span of the whole list.
fn list_of<T: syn::parse::Parse>(
    meta: &syn::meta::ParseNestedMeta<'_>,
) -> syn::Result<(Span, Vec<T>)> {
    let content;
    let paren = syn::parenthesized!(content in meta.input);
    let items = content.parse_terminated(T::parse, Token![,])?;
    Ok((paren.span.join(), items.into_iter().collect()))
}

/// Consumes the value of an unknown key (`= value` or `(...)`), to go on with the others.
fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: syn::Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        let _: TokenStream = content.parse()?;
    }
    Ok(())
}
