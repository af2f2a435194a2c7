//! Not public API. Used by code that pupsource's macros generate; may change at any time.

use std::future::Future;

pub use crate::domain::decode_exact;
use crate::domain::{DecodeError, DomainEvent};
use crate::event::Event;
pub use crate::limits::MAX_PARTITIONS;
use crate::projection::{HandleFuture, HandlerResult};
pub use crate::registry::Registration;
pub use inventory;
pub use serde;
pub use serde_json;
pub use std::boxed::Box;
pub use std::sync::Arc;

/// The future of a `#[projection(reset = …)]` function: a trait of its own, so that a function
/// that is not async is one error at the user's path that says what it must be.
#[diagnostic::on_unimplemented(
    message = "`reset = …` must name an `async fn(&self, &mut pupsource::projection::Transaction<'_>) -> pupsource::HandlerResult`",
    label = "this returns `{Self}`, not a future of `pupsource::HandlerResult`"
)]
pub trait ResetFuture<'a>: Future<Output = HandlerResult> + Send + 'a {}

impl<'a, F: Future<Output = HandlerResult> + Send + 'a> ResetFuture<'a> for F {}

/// The boxed future of a `#[projection(reset = …)]` function.
pub fn reset<'a>(future: impl ResetFuture<'a>) -> HandleFuture<'a> {
    Box::pin(future)
}

/// `event` decoded (and upcast) as `E`, if it is of `E`'s type: the dispatch of an
/// `#[aggregate]`, whose stream holds only its context's events.
pub fn decode_listed<E: DomainEvent>(event: &Event) -> Option<Result<E, DecodeError>> {
    (event.event_type == E::NAME).then(|| E::decode_payload(&event.payload, event.event_version))
}

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

/// The message of the compile-time check of `#[projection(partitions = N)]` against
/// [`MAX_PARTITIONS`], "`partitions` must be at most 1024": written from the constant, so that
/// the macro's limit and its message are the runtime's.
pub const TOO_MANY_PARTITIONS: &str = match std::str::from_utf8(&TOO_MANY_PARTITIONS_BYTES) {
    Ok(message) => message,
    Err(_) => panic!("the message is ASCII"),
};

const TOO_MANY_PARTITIONS_PREFIX: &[u8] = b"`partitions` must be at most ";
const TOO_MANY_PARTITIONS_LEN: usize =
    TOO_MANY_PARTITIONS_PREFIX.len() + MAX_PARTITIONS.ilog10() as usize + 1;
const TOO_MANY_PARTITIONS_BYTES: [u8; TOO_MANY_PARTITIONS_LEN] = {
    let mut message = [0; TOO_MANY_PARTITIONS_LEN];
    let (prefix, mut digits) = message.split_at_mut(TOO_MANY_PARTITIONS_PREFIX.len());
    prefix.copy_from_slice(TOO_MANY_PARTITIONS_PREFIX);
    let mut rest = MAX_PARTITIONS;
    while let [more @ .., last] = digits {
        *last = b'0' + (rest % 10) as u8;
        rest /= 10;
        digits = more;
    }
    message
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_partitions_names_the_limit() {
        assert_eq!(TOO_MANY_PARTITIONS, format!("`partitions` must be at most {MAX_PARTITIONS}"));
    }
}
