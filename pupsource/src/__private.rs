//! Not public API. Used by code that pupsource's macros generate; may change at any time.

pub use crate::domain::decode_exact;
pub use crate::registry::Registration;
pub use inventory;
pub use serde_json;
pub use std::boxed::Box;
pub use std::sync::Arc;

/// Whether two strings are equal, in a `const` context.
pub const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
