//! The `#[projection(…)]` arguments as written, with their spans.

use syn::{LitInt, LitStr, Path};

use crate::args::{Key, Keys, List, Slot};

#[derive(Default)]
pub(super) struct Args {
    pub(super) partitions: Option<LitInt>,
    pub(super) name: Option<LitStr>,
    pub(super) events: Option<List<Path>>,
    pub(super) contexts: Option<List<LitStr>>,
    pub(super) aggregates: Option<List<LitStr>>,
    pub(super) new: Option<Path>,
    pub(super) reset: Option<Path>,
    pub(super) runtime: Option<Path>,
}

/// The keys of `#[projection(…)]`, in the order the "expected one of" list gives them.
pub(super) const KEYS: Keys<Args> = Keys {
    what: "projection",
    keys: &[
        Key::new("partitions", "partitions = 4", Slot::Int(|args| &mut args.partitions)),
        Key::new("name", "name = \"order_totals\"", Slot::Str(|args| &mut args.name)),
        Key::new(
            "events",
            "events(UserCreated, UserDeleted)",
            Slot::Types(|args| &mut args.events),
        ),
        Key::new("contexts", "contexts(\"Sales\")", Slot::Strs(|args| &mut args.contexts)),
        Key::new("aggregates", "aggregates(\"Order\")", Slot::Strs(|args| &mut args.aggregates)),
        Key::new("new", "new = OrderTotals::connect", Slot::Function(|args| &mut args.new)),
        Key::new("reset", "reset = OrderTotals::clear", Slot::Function(|args| &mut args.reset)),
        Key::runtime(|args| &mut args.runtime),
    ],
    unknown: None,
};
