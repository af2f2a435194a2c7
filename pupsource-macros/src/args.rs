//! Arguments written `key = value` or `key(a, b)`, the same way for every macro.
//!
//! Each macro has one table of its keys ([`Keys`]): it drives the parsing, the "expected one
//! of" list of an unknown key, the message for a value of the wrong kind, and the check that
//! required keys are there. Parsing keeps values as written, with their spans, and checks only
//! the syntax and which keys are given; every problem goes to [`Errors`] and parsing goes on,
//! so that all are reported at once.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream, Parser as _};
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, ExprPath, Lit, LitInt, LitStr, Path, Token, Type, TypePath};

/// Every error of one expansion, so that all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    /// `value`, unless there was an error.
    pub(crate) fn finish<T>(self, value: T) -> syn::Result<T> {
        match self.0 {
            Some(err) => Err(err),
            None => Ok(value),
        }
    }
}

/// The keys of one macro's arguments, read into `A`.
pub(crate) struct Keys<A: 'static> {
    /// Whose arguments these are, for messages ("unknown projection argument"); for a derive's
    /// helper attribute, also the attribute's name.
    pub(crate) what: &'static str,
    pub(crate) keys: &'static [Key<A>],
    /// What an unknown key is told instead of the list of keys, if anything.
    pub(crate) unknown: Option<&'static str>,
}

/// One key: its name, an example, the field its value is read into, and whether it must be
/// given.
pub(crate) struct Key<A> {
    name: &'static str,
    /// The key with a value, for messages.
    example: &'static str,
    slot: Slot<A>,
    required: bool,
}

impl<A> Key<A> {
    pub(crate) const fn new(name: &'static str, example: &'static str, slot: Slot<A>) -> Self {
        Key { name, example, slot, required: false }
    }

    /// A key that must be given.
    pub(crate) const fn required(name: &'static str, example: &'static str, slot: Slot<A>) -> Self {
        Key { name, example, slot, required: true }
    }

    /// `crate = "…"`: the path generated code names the runtime by, for crates that re-export
    /// pupsource (like serde's `#[serde(crate = "…")]`).
    pub(crate) const fn runtime(field: fn(&mut A) -> &mut Option<Path>) -> Self {
        Key::new("crate", "crate = \"my_crate::pupsource\"", Slot::PathInString(field))
    }

    /// What the value must be, for messages.
    fn expects(&self) -> &'static str {
        match self.slot {
            Slot::Int(_) => "an integer literal",
            Slot::Str(_) => "a string literal",
            Slot::Function(_) => "the path of a function",
            Slot::Type(_) => "a type",
            Slot::Types(_) => "a list of types",
            Slot::Strs(_) => "a list of string literals",
            Slot::PathInString(_) => "a path in a string literal",
        }
    }

    /// Reads `value` into its field of `args`.
    fn read(&self, args: &mut A, value: &Value<'_>) -> syn::Result<()> {
        match self.slot {
            Slot::Int(field) => *field(args) = Some(value.int()?),
            Slot::Str(field) => *field(args) = Some(value.string()?),
            Slot::Function(field) => *field(args) = Some(value.function()?),
            Slot::Type(field) => *field(args) = Some(value.type_path()?),
            Slot::Types(field) => *field(args) = Some(value.list()?),
            Slot::Strs(field) => *field(args) = Some(value.list()?),
            Slot::PathInString(field) => *field(args) = Some(value.path_in_string()?),
        }
        Ok(())
    }
}

/// The kind of value a key takes, and the field of `A` it goes to.
pub(crate) enum Slot<A> {
    /// `key = 4`
    Int(fn(&mut A) -> &mut Option<LitInt>),
    /// `key = "text"`
    Str(fn(&mut A) -> &mut Option<LitStr>),
    /// `key = path::to::function`
    Function(fn(&mut A) -> &mut Option<Path>),
    /// `key = path::to::Type`
    Type(fn(&mut A) -> &mut Option<Path>),
    /// `key(TypeA, TypeB)`
    Types(fn(&mut A) -> &mut Option<List<Path>>),
    /// `key("a", "b")`
    Strs(fn(&mut A) -> &mut Option<List<LitStr>>),
    /// `key = "path::to::module"`
    PathInString(fn(&mut A) -> &mut Option<Path>),
}

/// What parsing one macro's arguments has found so far.
#[derive(Default)]
struct State<A> {
    args: A,
    seen: Vec<&'static str>,
    /// A value was malformed beyond recovery: the error that ends the parsing is about that
    /// value, not about the syntax of the argument list.
    stopped: bool,
}

impl<A: Default> Keys<A> {
    /// Reads `key = value, key(…), …`: the arguments of an attribute macro or a function-like
    /// macro.
    pub(crate) fn parse_tokens(&self, tokens: TokenStream, errors: &mut Errors) -> A {
        let mut state = State::default();
        let parsed =
            syn::meta::parser(|meta| self.parse_one(meta, &mut state, errors)).parse2(tokens);
        self.syntax_error(parsed, state.stopped, errors);
        // The arguments as a whole are the macro's call site.
        self.finish(state, &TokenStream::new(), errors)
    }

    /// Reads every `#[what(…)]` attribute among `attrs` (a derive's helper attributes), as one
    /// list of arguments; `item` is the derive's item, where a missing key is reported if
    /// there is no such attribute.
    pub(crate) fn parse_attrs(
        &self,
        attrs: &[Attribute],
        item: &dyn ToTokens,
        errors: &mut Errors,
    ) -> A {
        let mut state = State::default();
        let mut attrs = attrs.iter().filter(|attr| attr.path().is_ident(self.what)).peekable();
        // The arguments as a whole are the first attribute, whole.
        let whole: &dyn ToTokens = match attrs.peek() {
            Some(first) => *first,
            None => item,
        };
        for attr in attrs.clone() {
            let parsed = attr.parse_nested_meta(|meta| self.parse_one(meta, &mut state, errors));
            self.syntax_error(parsed, state.stopped, errors);
            state.stopped = false;
        }
        self.finish(state, whole, errors)
    }

    /// The arguments read, once every required key is known to be there; `whole` spans the
    /// arguments as a whole.
    fn finish(&self, state: State<A>, whole: &dyn ToTokens, errors: &mut Errors) -> A {
        let required = self.keys.iter().filter(|key| key.required);
        let example: Vec<&str> = required.clone().map(|key| key.example).collect();
        for key in required.filter(|key| !state.seen.contains(&key.name)) {
            errors.push(syn::Error::new_spanned(
                whole,
                format!(
                    "missing `{}` in `#[{what}(...)]`; e.g. `#[{what}({})]`",
                    key.name,
                    example.join(", "),
                    what = self.what,
                ),
            ));
        }
        state.args
    }

    fn parse_one(
        &self,
        meta: ParseNestedMeta<'_>,
        state: &mut State<A>,
        errors: &mut Errors,
    ) -> syn::Result<()> {
        let Some(key) = self.keys.iter().find(|key| meta.path.is_ident(key.name)) else {
            errors.push(syn::Error::new_spanned(&meta.path, self.unknown_message(&meta.path)));
            return skip_value(&meta);
        };
        if state.seen.contains(&key.name) {
            let message = format!("duplicate {} argument `{}`", self.what, key.name);
            errors.push(syn::Error::new_spanned(&meta.path, message));
            return skip_value(&meta);
        }
        state.seen.push(key.name);
        let message =
            format!("expected {} for `{}`, e.g. `{}`", key.expects(), key.name, key.example);
        let value = Value { key: &meta.path, input: meta.input, message };
        match key.read(&mut state.args, &value) {
            Ok(()) => Ok(()),
            // The whole value was read, so the next argument can be.
            Err(err) if value.at_end() => {
                errors.push(err);
                Ok(())
            }
            Err(err) => {
                state.stopped = true;
                Err(err)
            }
        }
    }

    /// Keeps the error that ended the parsing of an argument list, if any.
    fn syntax_error(&self, parsed: syn::Result<()>, stopped: bool, errors: &mut Errors) {
        if let Err(err) = parsed {
            errors.push(match self.unknown {
                Some(message) if !stopped => syn::Error::new(err.span(), message),
                _ => err,
            });
        }
    }

    fn unknown_message(&self, path: &Path) -> String {
        if let Some(message) = self.unknown {
            return message.to_owned();
        }
        let expected: Vec<String> = self.keys.iter().map(|key| format!("`{}`", key.name)).collect();
        let path = path.to_token_stream().to_string().replace(' ', "");
        format!("unknown {} argument `{path}`; expected one of {}", self.what, expected.join(", "))
    }
}

/// Consumes the value of an unknown or repeated key (`= value` or `(…)`), to go on with the
/// others.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        let _: TokenStream = content.parse()?;
    }
    Ok(())
}

/// A list written `key(a, b, c)`, with the span of its parentheses.
pub(crate) struct List<T> {
    pub(crate) span: Span,
    pub(crate) items: Vec<T>,
}

/// What follows a key, read as its [`Key`] expects; a value of another kind is an error at
/// the value that says what was expected.
struct Value<'a> {
    key: &'a Path,
    input: ParseStream<'a>,
    /// What the value should have been.
    message: String,
}

impl Value<'_> {
    /// `= 4`
    fn int(&self) -> syn::Result<LitInt> {
        match self.after_eq::<Expr>()? {
            Expr::Lit(ExprLit { lit: Lit::Int(int), attrs }) if attrs.is_empty() => Ok(int),
            other => Err(self.mismatch(other)),
        }
    }

    /// `= "text"`
    fn string(&self) -> syn::Result<LitStr> {
        match self.after_eq::<Expr>()? {
            Expr::Lit(ExprLit { lit: Lit::Str(string), attrs }) if attrs.is_empty() => Ok(string),
            other => Err(self.mismatch(other)),
        }
    }

    /// `= path::to::function`, as a function is named in an expression.
    fn function(&self) -> syn::Result<Path> {
        match self.after_eq::<Expr>()? {
            Expr::Path(ExprPath { qself: None, path, attrs }) if attrs.is_empty() => Ok(path),
            other => Err(self.mismatch(other)),
        }
    }

    /// `= path::to::Type`
    fn type_path(&self) -> syn::Result<Path> {
        match self.after_eq::<Type>()? {
            Type::Path(TypePath { qself: None, path }) => Ok(path),
            other => Err(self.mismatch(other)),
        }
    }

    /// `= "path::to::module"`; the path's tokens carry the literal's span.
    fn path_in_string(&self) -> syn::Result<Path> {
        let string = self.string()?;
        string.parse_with(Path::parse_mod_style).map_err(|_| self.mismatch(&string))
    }

    /// `(a, b, c)`
    fn list<T: Parse>(&self) -> syn::Result<List<T>> {
        if !self.input.peek(syn::token::Paren) {
            return Err(self.mismatch_next());
        }
        let content;
        let paren = syn::parenthesized!(content in self.input);
        // Read the whole list first, so that a problem inside it stays inside it.
        let tokens: TokenStream = content.parse()?;
        let items = Punctuated::<T, Token![,]>::parse_terminated
            .parse2(tokens)
            .map_err(|err| syn::Error::new(err.span(), self.message.clone()))?;
        Ok(List { span: paren.span.join(), items: items.into_iter().collect() })
    }

    /// `= T`
    fn after_eq<T: Parse>(&self) -> syn::Result<T> {
        if !self.input.peek(Token![=]) {
            return Err(self.mismatch_next());
        }
        let _: Token![=] = self.input.parse()?;
        self.input.parse().map_err(|err| syn::Error::new(err.span(), self.message.clone()))
    }

    /// Whether the value has been read whole: the next argument or the end follows.
    fn at_end(&self) -> bool {
        self.input.is_empty() || self.input.peek(Token![,])
    }

    fn mismatch(&self, tokens: impl ToTokens) -> syn::Error {
        syn::Error::new_spanned(tokens, self.message.clone())
    }

    /// At the key if nothing follows it, else at what follows.
    fn mismatch_next(&self) -> syn::Error {
        if self.at_end() {
            self.mismatch(self.key)
        } else {
            syn::Error::new(self.input.span(), self.message.clone())
        }
    }
}
