//! The `#[aggregate(…)]` arguments as written, with their spans.

use syn::{LitInt, LitStr, Path};

use crate::args::{Key, Keys, List, Slot};

#[derive(Default)]
pub(super) struct Args {
    pub(super) events: Option<List<Path>>,
    pub(super) ignore: Option<List<LitStr>>,
    pub(super) snapshot_every: Option<LitInt>,
    pub(super) snapshot_version: Option<LitInt>,
    pub(super) runtime: Option<Path>,
}

/// The keys of `#[aggregate(…)]`, in the order the "expected one of" list gives them.
pub(super) const KEYS: Keys<Args> = Keys {
    what: "aggregate",
    keys: &[
        Key::required(
            "events",
            "events(Deposited, Withdrawn)",
            Slot::Types(|args| &mut args.events),
        ),
        Key::new("ignore", "ignore(\"AccountAudited\")", Slot::Strs(|args| &mut args.ignore)),
        Key::new(
            "snapshot_every",
            "snapshot_every = 100",
            Slot::Int(|args| &mut args.snapshot_every),
        ),
        Key::new(
            "snapshot_version",
            "snapshot_version = 2",
            Slot::Int(|args| &mut args.snapshot_version),
        ),
        Key::runtime(|args| &mut args.runtime),
    ],
    unknown: None,
};
