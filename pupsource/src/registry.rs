//! The registry of projections declared with `#[projection]`.
//!
//! Each `#[projection]` submits a [`Registration`] (const data: a name and a constructor)
//! through `inventory`. [`registered`] turns them into projections once at startup: sorted by
//! name (inventory's order is unspecified), duplicates and an empty registry rejected.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::projection::Projection;

/// One projection declared with `#[projection]`. Not public API: used by generated code.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    /// The projection's name.
    pub name: &'static str,
    /// Builds the one shared instance.
    pub build: fn() -> Arc<dyn Projection>,
}

inventory::collect!(Registration);

/// Every projection declared with `#[projection]` in this binary, sorted by name.
///
/// # Errors
/// [`Error::DuplicateProjection`] if two share a name; [`Error::NoProjections`] if there is
/// none.
pub fn registered() -> Result<Vec<Arc<dyn Projection>>> {
    let mut registrations: Vec<&Registration> =
        inventory::iter::<Registration>.into_iter().collect();
    registrations.sort_by_key(|r| r.name);
    if let Some(pair) = registrations.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(Error::DuplicateProjection { name: pair[0].name.to_owned() });
    }
    if registrations.is_empty() {
        return Err(Error::NoProjections);
    }
    Ok(registrations.iter().map(|r| (r.build)()).collect())
}
