//! The `#[event(…)]` arguments as written, with their spans.

use syn::{LitInt, LitStr, Path};

use crate::args::{Key, Keys, Slot};

#[derive(Default)]
pub(super) struct Args {
    pub(super) context: Option<LitStr>,
    pub(super) aggregate: Option<LitStr>,
    pub(super) name: Option<LitStr>,
    pub(super) version: Option<LitInt>,
    pub(super) upcast_from: Option<Path>,
    pub(super) runtime: Option<Path>,
}

/// The keys of `#[event(…)]`, in the order the "expected one of" list gives them.
pub(super) const KEYS: Keys<Args> = Keys {
    what: "event",
    keys: &[
        Key::required("context", "context = \"Identity\"", Slot::Str(|args| &mut args.context)),
        Key::required("aggregate", "aggregate = \"User\"", Slot::Str(|args| &mut args.aggregate)),
        Key::new("name", "name = \"UserCreated\"", Slot::Str(|args| &mut args.name)),
        Key::new("version", "version = 2", Slot::Int(|args| &mut args.version)),
        Key::new(
            "upcast_from",
            "upcast_from = UserCreatedV1",
            Slot::Type(|args| &mut args.upcast_from),
        ),
        Key::runtime(|args| &mut args.runtime),
    ],
    unknown: None,
};
